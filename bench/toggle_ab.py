"""In-process A/B of engine settings on one asv suite benchmark: the benchmark is set up once (bench.cpu_ab's
setup_bench), then its timed method runs in turn under each variant of class or module attributes, for several
rounds, so both variants see the same model, input, memory and machine drift. Per variant: the median and the
minimum, and the cores other processes used during each call (engine.backends.blas_threads.others_cores; 0 on
an idle box, and only runs under --max-others count for the medians).

    python -m bench.toggle_ab bench_encodec.Codec.time_encode_decode engine cpu float32 encodec:encodec_24khz \\
        --variant engine.backends.numpy_conv.ConvKernels.CONV_SPLIT=False,engine.backends.blas_threads.BLAS_THREADS.SPIN_S=0 \\
        --variant "" --rounds 10

A variant is comma-separated `dotted.path.ATTR=python-literal` assignments ("" = the defaults); every variant
starts from the defaults.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import statistics
import sys
import time


def _resolve(path: str):
    """'pkg.mod.Class.ATTR' -> (the object holding ATTR, 'ATTR'): the longest importable module prefix, then
    attributes."""
    head, attr = path.rsplit(".", 1)
    parts = head.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                raise SystemExit(f"toggle_ab: {'.'.join(parts[:i])} has no {name!r} (in {path!r})")
            obj = getattr(obj, name)
        return obj, attr
    raise SystemExit(f"toggle_ab: no module in {path!r}")


def _parse(variant: str) -> list:
    out = []
    for item in filter(None, variant.split(",")):
        if "=" not in item:
            raise SystemExit(f"toggle_ab: {item!r} is not PATH=VALUE")
        path, value = item.split("=", 1)
        obj, attr = _resolve(path.strip())
        if not hasattr(obj, attr):
            raise SystemExit(f"toggle_ab: {path} does not exist")
        out.append((obj, attr, ast.literal_eval(value.strip())))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bench", help="module.Class.method under suites/")
    p.add_argument("params", nargs="*", help="the benchmark's parameters, the implementation first, as printed")
    p.add_argument("--variant", action="append", required=True, help="PATH=VALUE[,PATH=VALUE...]; '' = defaults")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--max-others", type=float, default=0.25, help="cores of other processes a counted run may see")
    a = p.parse_args(argv)
    from bench.cpu_ab import setup_bench
    from engine.backends.blas_threads import cpu_seconds, others_cores
    variants = [_parse(v) for v in a.variant]
    defaults = [(obj, attr, getattr(obj, attr)) for v in variants for obj, attr, _ in v]
    fn, args = setup_bench(a.bench, a.params[0], a.params[1:])

    def apply(v):
        for obj, attr, value in defaults + v:
            setattr(obj, attr, value)

    for v in variants:  # one untimed call each
        apply(v)
        fn(*args)
    times = [[] for _ in variants]
    others = [[] for _ in variants]
    for _ in range(a.rounds):
        for i, v in enumerate(variants):
            apply(v)
            before = (time.monotonic(),) + cpu_seconds()
            t = time.perf_counter()
            fn(*args)
            times[i].append((time.perf_counter() - t) * 1e3)
            others[i].append(others_cores(before, (time.monotonic(),) + cpu_seconds()))
    apply([])
    for name, ts, os_ in zip(a.variant, times, others):
        kept = [t for t, o in zip(ts, os_) if o <= a.max_others]
        med = f"{statistics.median(kept):.1f} ms" if kept else "n/a"
        print(f"[{name or 'defaults'}] median {med} over {len(kept)}/{len(ts)} quiet runs; all runs "
              f"{', '.join(f'{t:.0f}' for t in ts)} ms; others' cores {', '.join(f'{o:.2f}' for o in os_)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
