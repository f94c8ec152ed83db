"""Per-kernel GPU time of one asv benchmark call (any suite, any implementation): the benchmark's own
setup, warm-up calls, then CUPTI through torch.profiler over a few timed calls (it records every CUDA
kernel of the process, cupy's and cuDNN's included), grouped by kernel name, microseconds per call.

    python -m bench.suite_profile bench_diffusion.VAEDecode.time_vae_decode engine,cuda,float16,sd-1.5 \\
        torch,cuda,float16,sd-1.5 --out vae_profile.json

Each parameter set is a comma-separated list of the benchmark's parameters as printed, the implementation first
(bench.cpu_ab.setup_bench sets it up as asv would, setup_cache included).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from bench.cpu_ab import setup_bench
from bench.step_profile import _kernels


def profile(bench: str, params: tuple, calls: int, top: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    import engine
    fn, args = setup_bench(bench, params[0], list(params[1:]))
    for _ in range(3):
        fn(*args)
    engine.synchronize("cuda")
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn(*args)
    engine.synchronize("cuda")
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t) / calls
    with tprofile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn(*args)
        engine.synchronize("cuda")
        torch.cuda.synchronize()
    ks = _kernels(prof, calls)
    total = sum(k[1] for k in ks)
    print(f"\n{bench}{params}: wall {1e3 * wall:.2f} ms a call, kernels {total / 1e3:.2f} ms, "
          f"{sum(k[2] for k in ks):.0f} launches", flush=True)
    for name, us, n in ks[:top]:
        print(f"  {us:9.1f} us {n:6.1f}x  {name}", flush=True)
    return {"bench": bench, "params": list(params), "wall_ms": 1e3 * wall, "kernel_ms": total / 1e3,
            "kernels": [{"name": k, "us_per_call": us, "launches_per_call": n} for k, us, n in ks]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bench", help="suite.Class.method, e.g. bench_diffusion.VAEDecode.time_vae_decode")
    p.add_argument("params", nargs="+", help="one parameter set each: impl,device,dtype,... in the class's order")
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--out", help="write the per-kernel rows as JSON here")
    a = p.parse_args(argv)
    rows = []
    for ps in a.params:
        params = tuple(ps.split(","))
        try:
            rows.append(profile(a.bench, params, a.calls, a.top))
        except Exception as e:  # noqa: BLE001  (a set that does not run: say why, profile the rest)
            print(f"{a.bench}{params}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            rows.append({"bench": a.bench, "params": list(params), "failed": f"{type(e).__name__}: {e}"})
    if a.out:
        from engine.io.atomic import atomic_write_text
        atomic_write_text(a.out, json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
