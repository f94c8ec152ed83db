"""A/B of implementations on a shared machine: one asv suite benchmark, each implementation in a process of
its own, taken in turn (engine, torch, engine, torch, ...) for several rounds; per round each child's median
of N timed calls, then the median over rounds and the engine/other ratio of every round (the two ran side
by side, so machine drift cancels), with the 1-minute load average and the cores other processes used during
each child's timed calls (engine.backends.blas_threads.others_cores: 0 on an idle box).

    python -m bench.cpu_ab bench_encoders.BertBatch.time_forward cpu float32 bert:all-minilm-l6-v2 32
    python -m bench.cpu_ab bench_detect.YoloDetect.time_detect cpu float32 640 --calls 3

The parameters after the name are the benchmark's own, without the implementation (its first); --impl
picks them (default engine and torch). In-process timing of the timed method alone: model loading, imports
and the untimed first call stay out. Threads: each child keeps the machine's defaults (OpenBLAS's and
torch's two threads here), as `taper bench` runs them.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def setup_bench(name: str, impl: str, params: list[str]):
    """An asv suite benchmark `module.Class.method` set up in this process for (impl, *params), the
    parameters as printed: (its method, the arguments to call it with)."""
    import importlib
    mod, cls, meth = name.split(".")
    suite = importlib.import_module(f"suites.{mod}")
    bench = getattr(suite, cls)()
    names = bench.param_names
    values = [impl] + [_typed(p, names[i + 1], getattr(bench, "params")[i + 1]) for i, p in enumerate(params)]
    args = ([_setup_cache(bench)] if hasattr(bench, "setup_cache") else []) + values
    bench.setup(*args)
    return getattr(bench, meth), args


def _setup_cache(bench):
    """asv's setup_cache as the fallback runner runs it: in a directory of its own (removed when the process
    exits), so what it writes (a converted model directory) stays out of the working directory."""
    d = tempfile.mkdtemp(prefix="taper-setup-cache-")
    atexit.register(shutil.rmtree, d, True)
    cwd = os.getcwd()
    os.chdir(d)
    try:
        return bench.setup_cache()
    finally:
        os.chdir(cwd)


def call_seconds(fn, n: int, warm: bool = False) -> list:
    """Seconds of each of n calls of fn() (after one untimed call with warm)."""
    if warm:
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return ts


def child(name: str, impl: str, params: list[str], calls: int) -> dict:
    """In this process: set the benchmark up for (impl, *params) and time `calls` calls of its method."""
    fn, args = setup_bench(name, impl, params)
    from engine.backends.blas_threads import cpu_seconds, others_cores
    fn(*args)  # one more untimed call
    before = (time.monotonic(),) + cpu_seconds()
    ts = call_seconds(lambda: fn(*args), calls)
    others = others_cores(before, (time.monotonic(),) + cpu_seconds())  # other processes' cores meanwhile
    return {"impl": impl, "median_ms": statistics.median(ts) * 1e3, "min_ms": min(ts) * 1e3,
            "load": os.getloadavg()[0], "others_cores": others}


def _typed(text: str, name: str, values: list):
    """The parameter value of the benchmark's list that prints as `text` (ints stay ints)."""
    for v in values:
        if str(v) == text:
            return v
    raise SystemExit(f"cpu_ab: {name}={text!r} is not one of the benchmark's values {values}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bench", help="module.Class.method under suites/, e.g. bench_encoders.BertBatch.time_forward")
    p.add_argument("params", nargs="*", help="the benchmark's parameters after impl, as printed")
    p.add_argument("--impl", action="append", help="implementations in turn (default: engine, torch)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=5, help="timed calls per child")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.bench, a.child, a.params, a.calls)))
        return 0
    impls = a.impl or ["engine", "torch"]
    rows = {i: [] for i in impls}
    for r in range(a.rounds):
        for impl in impls:
            out = subprocess.run([sys.executable, "-m", "bench.cpu_ab", a.bench, *a.params, "--calls", str(a.calls),
                                  "--child", impl], capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-2000:], file=sys.stderr)
                return 1
            res = json.loads(out.stdout.strip().splitlines()[-1])
            rows[impl].append(res)
            print(f"round {r + 1} {impl:12s} median {res['median_ms']:9.1f} ms  min {res['min_ms']:9.1f} ms  "
                  f"load {res['load']:.2f}  other processes {res['others_cores']:.2f} cores", flush=True)
    base = impls[0]
    for impl in impls[1:]:
        ratios = [x["median_ms"] / y["median_ms"] for x, y in zip(rows[base], rows[impl])]
        print(f"{a.bench} {' '.join(a.params)}: {base} {statistics.median(x['median_ms'] for x in rows[base]):.1f} ms, "
              f"{impl} {statistics.median(y['median_ms'] for y in rows[impl]):.1f} ms; {base}/{impl} per round "
              f"{', '.join(f'{v:.2f}' for v in ratios)} (median {statistics.median(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
