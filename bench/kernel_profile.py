"""Every GEMV variant of engine/backends/cupy_kernels.py timed at the decode shapes of the LLM
presets, on the GPU at hand: (rows per warp, warps splitting K, unroll) -> microseconds and achieved
GB/s of weights, beside cuBLAS (cupy's matmul) for the same product and the device copy rate.

    python -m bench.kernel_profile --model llama:llama-2-7b --dtype float16 --out profile.json

Weights rotate over enough copies to exceed the L2 cache, so each call reads from HBM as in decode.
The best variant per shape class goes into cupy_kernels.GEMV_CONFIG.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys

import numpy as np


def shapes(model: str) -> dict:
    """name -> (N, K, glu) of one decoder layer and the LM head, from the engine preset."""
    from impls.sources import parse
    c = parse(model).config
    H, I, V = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hq = c["num_attention_heads"]
    hkv = c.get("num_key_value_heads") or hq
    d = c.get("head_dim") or H // hq
    return {"q_proj": (hq * d, H, False), "k_proj": (hkv * d, H, False), "o_proj": (H, hq * d, False),
            "gate_up (GLU)": (I, H, True), "down_proj": (H, I, False), "lm_head": (V, H, False)}


def graph_timed(fn, n: int) -> float:
    """Microseconds per launch: fn(0) once eagerly, then fn(0..n-1) captured in one CUDA graph and the
    graph replayed 3 times, so the host's launch overhead (tens of microseconds from Python) stays out,
    as in a captured decode step."""
    import cupy
    cupy.cuda.Device().synchronize()  # the timing stream does not wait for the legacy stream's queued work
    fn(0)  # (weights just quantised or copied there would run beside the graph and slow it)
    cupy.cuda.Device().synchronize()
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        for i in range(n):
            fn(i)
        graph = stream.end_capture()
    graph.launch(stream)
    stream.synchronize()
    s, e = cupy.cuda.Event(), cupy.cuda.Event()
    s.record(stream)
    for _ in range(3):
        graph.launch(stream)
    e.record(stream)
    e.synchronize()
    return cupy.cuda.get_elapsed_time(s, e) * 1e3 / (3 * n)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama:llama-2-7b")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--out")
    p.add_argument("--rows", help="comma-separated row counts: time the default GEMV against cuBLASLt "
                                  "(nvmath-python) at each instead of the variant sweep")
    a = p.parse_args(argv)
    import cupy

    import engine  # noqa: F401  (the engine's allocator owns cupy's memory: its pool stats stay exact)
    from engine.backends import cupy_kernels as K
    dt = cupy.float16 if a.dtype == "float16" else __import__("ml_dtypes").bfloat16
    rng = cupy.random.default_rng(0)
    l2 = cupy.cuda.runtime.getDeviceProperties(0)["l2CacheSize"]
    rows = []

    timed = graph_timed

    if a.rows:
        return rows_table(a, timed, dt, rng, l2)
    for name, (N, Kd, glu) in shapes(a.model).items():
        nbytes = N * Kd * 2 * (2 if glu else 1)
        copies = max(2, int(np.ceil(3 * l2 / nbytes)))
        Ws = [(rng.standard_normal((N, Kd), dtype=cupy.float32) * 0.02).astype(dt) for _ in range(copies)]
        W2s = [(rng.standard_normal((N, Kd), dtype=cupy.float32) * 0.02).astype(dt) for _ in range(copies)] if glu \
            else [None] * copies
        x = rng.standard_normal((1, Kd), dtype=cupy.float32).astype(dt)
        nw = cupy.ones(Kd, dt)
        out = cupy.empty((1, N), dt)
        best = None
        for (R, S), U in itertools.product(K.GEMV_VARIANTS + ((4, 8),), (2, 4, 8)):
            if glu and R % 2:
                continue
            norm = (nw, 1e-5, "llama") if name in ("q_proj", "k_proj", "gate_up (GLU)", "lm_head") else None
            try:
                us = timed(lambda i: K.gemv(x, Ws[i % copies], out, W2=W2s[i % copies], act="silu" if glu else None,
                                            norm=norm, rows_k=(R, S), unroll=U), a.iters)
            except Exception as e:  # a variant that does not compile or launch here
                rows.append({"shape": name, "N": N, "K": Kd, "rows": R, "k_split": S, "unroll": U, "error": str(e)[:200]})
                continue
            gbs = nbytes / (us * 1e-6) / 1e9
            rows.append({"shape": name, "N": N, "K": Kd, "glu": glu, "rows": R, "k_split": S, "unroll": U,
                         "us": round(us, 2), "gb_per_s": round(gbs, 1)})
            if best is None or us < best["us"]:
                best = rows[-1]
        if not glu:  # cuBLAS for the same product (eager launches: cupy refuses cuBLAS in a capture)
            xs = x.astype(dt)
            ev0, ev1 = cupy.cuda.Event(), cupy.cuda.Event()
            xs @ Ws[0].T
            ev0.record()
            for i in range(a.iters):
                xs @ Ws[i % copies].T
            ev1.record()
            ev1.synchronize()
            us = cupy.cuda.get_elapsed_time(ev0, ev1) * 1e3 / a.iters
            rows.append({"shape": name, "N": N, "K": Kd, "cublas": True, "us": round(us, 2),
                         "gb_per_s": round(nbytes / (us * 1e-6) / 1e9, 1)})
        print(f"{name:16s} N={N:6d} K={Kd:6d} best R={best['rows']} S={best['k_split']} U={best['unroll']} "
              f"{best['us']:8.2f} us {best['gb_per_s']:7.1f} GB/s", flush=True)
        del Ws, W2s
    from bench.probes import copy_gb_per_s
    copy = copy_gb_per_s("cuda")
    print(f"device copy {copy:.0f} GB/s (read + write)")
    card = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    res = {"card": card, "model": a.model, "dtype": a.dtype, "copy_gb_per_s": round(copy, 1), "rows": rows}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


def rows_table(a, timed, dt, rng, l2) -> int:
    """Microseconds per product at each row count: the engine's GEMV kernel (FMA, or tensor cores from
    GEMV_CONFIG['mma_rows'] rows) against cuBLASLt through nvmath-python, both inside captured graphs."""
    import cupy

    from engine.backends import cupy_kernels as K
    from engine.backends import cupy_lt
    res = []
    print(f"{'shape':14s} {'N':>6s} {'K':>6s} {'rows':>4s} {'gemv us':>9s} {'cuBLASLt us':>11s}  GB/s (best)")
    for name, (N, Kd, _glu) in shapes(a.model).items():
        nbytes = N * Kd * 2
        copies = max(2, int(np.ceil(3 * l2 / nbytes)))
        Ws = [(rng.standard_normal((N, Kd), dtype=cupy.float32) * 0.02).astype(dt) for _ in range(copies)]
        for m in [int(r) for r in a.rows.split(",")]:
            x = rng.standard_normal((m, Kd), dtype=cupy.float32).astype(dt)
            outs = [cupy.empty((m, N), dt) for _ in range(2)]
            row = {"shape": name, "N": N, "K": Kd, "rows": m}
            ref = (x.astype(cupy.float32) @ Ws[0].T.astype(cupy.float32))
            if K.gemv_ok(x, Ws[0]):
                row["gemv_us"] = round(timed(lambda i: K.gemv(x, Ws[i % copies], outs[0]), a.iters), 2)
                K.gemv(x, Ws[0], outs[0])
                row["gemv_rel_err"] = float(cupy.linalg.norm(outs[0].astype(cupy.float32) - ref) / cupy.linalg.norm(ref))
            if cupy_lt.available():
                try:
                    cupy_lt.LT_CONFIG.update(min_rows=1)
                    row["lt_us"] = round(timed(lambda i: cupy_lt.linear(x, Ws[i % copies], outs[1]), a.iters), 2)
                    cupy_lt.linear(x, Ws[0], outs[1])
                    row["lt_rel_err"] = float(cupy.linalg.norm(outs[1].astype(cupy.float32) - ref) / cupy.linalg.norm(ref))
                except Exception as e:  # noqa: BLE001  (reported, the table goes on)
                    row["lt_error"] = f"{type(e).__name__}: {e}"[:300]
            else:
                row["lt_error"] = cupy_lt.why_not()
            best = min(v for k, v in row.items() if k.endswith("_us"))
            print(f"{name:14s} {N:6d} {Kd:6d} {m:4d} {row.get('gemv_us', float('nan')):9.2f} "
                  f"{row.get('lt_us', float('nan')):11.2f}  {nbytes / best / 1e3:7.0f}  {row.get('lt_error', '')}",
                  flush=True)
            res.append(row)
        del Ws
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"card": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "model": a.model,
                       "dtype": a.dtype, "rows": res}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
