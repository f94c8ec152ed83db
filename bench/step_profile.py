"""Per-kernel time of one engine decode step on the GPU at hand: every kernel the step launches, from
CUPTI (through torch.profiler, which records any CUDA kernel of the process, cupy's included), grouped
by kernel name, as microseconds per step; beside the step's wall time from CUDA events.

    python -m bench.step_profile --model llama:llama-2-7b --batch 1,8 --out step_profile.json

Two runs per batch size: the captured step (graph replays: the kernels' own time, the gaps between
them are the difference to the step's time) and the same planned step launched from the host
(capture=False: each kernel's time is the same work, the host's launch time shows in the wall time).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict

import numpy as np


def _short(name: str) -> str:
    """A readable kernel name: templates kept, argument lists and cupy's prefixes dropped."""
    name = re.sub(r"\(.*$", "", name)
    name = re.sub(r"^void ", "", name)
    return name[:90]


def profile(model, batch: int, steps: int, prompt: int, capture: bool) -> dict:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    import engine
    from engine.generation import Decoder
    dec = Decoder(model, batch, prompt + steps * 3 + 8, capture=capture)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (batch, prompt))
    dec.prefill(engine.tensor(ids, device=model.device))
    import cupy
    for _ in range(3):  # warm-up: record, plan, capture
        dec.step()
    cupy.cuda.runtime.deviceSynchronize()
    s, e = cupy.cuda.Event(), cupy.cuda.Event()
    s.record()
    for _ in range(steps):
        dec.step()
    e.record()
    e.synchronize()
    step_us = cupy.cuda.get_elapsed_time(s, e) * 1e3 / steps
    with tprofile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            dec.step()
        cupy.cuda.runtime.deviceSynchronize()
        torch.cuda.synchronize()
    rows = _kernels(prof, steps)
    kernel_us = sum(r[1] for r in rows)
    return {"batch": batch, "captured": capture, "step_us": step_us, "kernel_us": kernel_us,
            "launches": sum(r[2] for r in rows),
            "kernels": [{"name": k, "us_per_step": round(us, 2), "launches_per_step": round(n, 2)} for k, us, n in rows]}


def profile_prefill(model, length: int, rounds: int = 3) -> dict:
    """Per-kernel time of one prefill of `length` tokens at batch 1 (eager launches: a prefill is not
    captured), beside its wall time from CUDA events."""
    import cupy
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    import engine
    from engine.generation import Decoder
    dec = Decoder(model, 1, length + 8, capture=True)
    ids = engine.tensor(np.random.default_rng(0).integers(0, model.config.vocab_size, (1, length)), device=model.device)
    dec.prefill(ids)  # warm-up: kernels compiled, cuBLAS planned
    cupy.cuda.runtime.deviceSynchronize()
    s, e = cupy.cuda.Event(), cupy.cuda.Event()
    s.record()
    for _ in range(rounds):
        dec.prefill(ids)
    e.record()
    e.synchronize()
    wall_us = cupy.cuda.get_elapsed_time(s, e) * 1e3 / rounds
    with tprofile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(rounds):
            dec.prefill(ids)
        cupy.cuda.runtime.deviceSynchronize()
        torch.cuda.synchronize()
    rows = _kernels(prof, rounds)
    return {"prefill": length, "step_us": wall_us, "kernel_us": sum(r[1] for r in rows),
            "launches": sum(r[2] for r in rows),
            "kernels": [{"name": k, "us_per_step": round(us, 2), "launches_per_step": round(n, 2)} for k, us, n in rows]}


def _kernels(prof, steps: int) -> list:
    """(kernel name, microseconds per step, launches per step), largest first."""
    import torch
    per = defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA and ev.device_time > 0:
            k = _short(ev.name)
            if k.startswith("Memcpy") or k.startswith("Memset"):
                k = k.split(" ")[0]
            per[k][0] += ev.device_time  # microseconds
            per[k][1] += 1
    return sorted(((k, v[0] / steps, v[1] / steps) for k, v in per.items()), key=lambda r: -r[1])


def _show(title: str, r: dict) -> None:
    print(f"\n{title}: wall {r['step_us']:.0f} us, kernels {r['kernel_us']:.0f} us, {r['launches']:.0f} launches")
    for k in r["kernels"][:25]:
        print(f"  {k['us_per_step']:9.1f} us {k['launches_per_step']:6.1f}x  {k['name']}")
    sys.stdout.flush()


def step_args(description: str) -> argparse.ArgumentParser:
    """The arguments of the decode-step scripts (this one, bench/decode_fuse.py): model, dtype, batch sizes,
    timed steps, prompt length."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="llama:llama-2-7b")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--batch", default="1", help="batch sizes, comma-separated")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--prompt", type=int, default=128)
    return p


def main(argv=None) -> int:
    p = step_args(__doc__.splitlines()[0])
    p.add_argument("--eager", action="store_true", help="also the uncaptured planned step")
    p.add_argument("--prefill", type=int, default=0, help="also a prefill of this many tokens (batch 1)")
    p.add_argument("--compare-lt", action="store_true",
                   help="batches > 1 also with cuBLASLt off (the GEMV kernels for every row count)")
    p.add_argument("--quantize", help="GGUF block format the model's linears are quantised into first (q8_0, q4_k, "
                                      "...: engine.quant.quantize_module), through the quantized kernels")
    p.add_argument("--quant-dot", default="float", help="their route (bench.gguf_decode.set_route: float, int8, ...)")
    p.add_argument("--out")
    a = p.parse_args(argv)
    from engine import dtype as D
    from engine.backends import cupy_lt
    from impls.sources import parse
    model = parse(a.model).engine_model(D.get(a.dtype), "cuda")
    if a.quantize:
        from bench.gguf_decode import set_route
        from engine.backends import cupy_kernels as K
        from engine.quant import quantize_module
        K.QUANT_KERNELS["enabled"] = True
        set_route(a.quant_dot)
        quantize_module(model, a.quantize)
        a.model += f"@{a.quantize}/{a.quant_dot}"
    results = []
    for b in [int(x) for x in a.batch.split(",")]:
        variants = [(cap, True) for cap in ((True, False) if a.eager else (True,))]
        if a.compare_lt and b > 1:
            variants.append((True, False))
        for cap, lt in variants:
            cupy_lt.LT_CONFIG["enabled"] = lt
            r = profile(model, b, a.steps, a.prompt, cap)
            r.update(model=a.model, cublaslt=cupy_lt.available() and b >= cupy_lt.LT_CONFIG["min_rows"])
            results.append(r)
            _show(f"{a.model} batch {b} {'captured' if cap else 'uncaptured'} decode step (cuBLASLt {r['cublaslt']})", r)
    if a.prefill:
        r = profile_prefill(model, a.prefill)
        r["model"] = a.model
        results.append(r)
        _show(f"{a.model} prefill {a.prefill} tokens", r)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
