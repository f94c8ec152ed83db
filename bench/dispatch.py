"""Eager dispatch cost per op: suites/bench_ops.py's Dispatch cases for the engine, the raw arrays under
it (numpy on the cpu, cupy on cuda) and torch, in one process, as a table with the engine's ratio to the
raw call (the issue's target on CUDA: at most 1.2x raw cupy).

    python -m bench.dispatch --device cuda --dtype float16 [--out $OUT/dispatch.json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys


def measure(device: str, dtype: str, impls=("engine", "numpy", "cupy", "torch"), n: int = 50) -> list[dict]:
    """One row per (case, impl): host seconds per call of back-to-back launches and seconds of one
    synchronised call (both the best of several short batches), or the reason it was skipped."""
    import time

    from suites.bench_ops import DISPATCH, _dispatch
    rows = []
    for name in DISPATCH:
        for impl in impls:
            try:
                c = _dispatch(impl, device, dtype, name)
            except NotImplementedError as e:
                rows.append({"case": name, "impl": impl, "skipped": str(e)})
                continue
            host = c.host_seconds(n=n)
            runs = []
            for _ in range(20):
                t0 = time.perf_counter()
                for _ in range(10):
                    c.run()
                runs.append((time.perf_counter() - t0) / 10)
            rows.append({"case": name, "impl": impl, "host_seconds": host, "synced_seconds": min(runs)})
    return rows


def table(rows: list[dict]) -> str:
    raw = {r["case"]: r["host_seconds"] for r in rows if r["impl"] in ("numpy", "cupy") and "host_seconds" in r}
    out = [f"{'case':24s} {'impl':8s} {'host us/op':>11s} {'synced us':>10s} {'x raw':>6s}"]
    skipped = sorted({f"{r['impl']}: {r['skipped']}" for r in rows if "skipped" in r})
    for r in rows:
        if "skipped" in r:
            continue
        ratio = r["host_seconds"] / raw[r["case"]] if raw.get(r["case"]) else math.nan
        out.append(f"{r['case']:24s} {r['impl']:8s} {r['host_seconds'] * 1e6:11.2f} {r['synced_seconds'] * 1e6:10.2f} "
                   f"{ratio:6.2f}")
    return "\n".join(out + [f"skipped {s}" for s in skipped])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--impls", default="engine,numpy,cupy,torch")
    p.add_argument("-n", type=int, default=50, help="launches per timed batch")
    p.add_argument("--out", help="write the rows as JSON here")
    a = p.parse_args(argv)
    rows = measure(a.device, a.dtype, tuple(a.impls.split(",")), a.n)
    print(table(rows))
    if a.out:
        from engine.io.atomic import atomic_write_text
        atomic_write_text(a.out, json.dumps({"device": a.device, "dtype": a.dtype, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
