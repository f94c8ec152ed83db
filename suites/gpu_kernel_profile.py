"""Per-kernel timings of one decode step at a LLaMA shape (CUDA events, median of 50), against the
bytes each kernel must move, so the gap to the roofline is visible kernel by kernel.

    python suites/gpu_kernel_profile.py --shape llama-2-7b --pos 256
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def timeit(cupy, fn, reps=7, inner=20):
    """Microseconds per launch: `inner` back-to-back launches between two events (so launch latency
    overlaps with the previous kernel, as in a graph), median over `reps`."""
    fn()
    cupy.cuda.Device().synchronize()
    ts = []
    for _ in range(reps):
        s, e = cupy.cuda.Event(), cupy.cuda.Event()
        s.record()
        for _ in range(inner):
            fn()
        e.record()
        e.synchronize()
        ts.append(cupy.cuda.get_elapsed_time(s, e) * 1e3 / inner)
    return float(np.median(ts))


def main(argv=None):
    import cupy

    from engine.backends import cupy_kernels as K
    from suites.gpu_decode import SHAPES

    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-2-7b")
    ap.add_argument("--pos", type=int, default=256)
    ap.add_argument("--max-seq", type=int, default=4096)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    cfg = SHAPES[a.shape]
    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hq, hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = H // hq
    dt = cupy.float16
    rng = cupy.random.default_rng(0)

    def rand(*s):
        return (rng.standard_normal(s, dtype=cupy.float32) * 0.02).astype(dt)
    rows = []
    gemvs = {"qkv": ((hq + 2 * hkv) * d, H, 1), "o": (H, hq * d, 0), "gate_up": (2 * I, H, 1),
             "down": (H, I, 0), "lm_head": (V, H, 1)}
    for name, (N, Kd, mode) in gemvs.items():
        W = rand(N, Kd)
        x = rand(Kd)
        nw = rand(Kd)
        glu = name == "gate_up"
        out = cupy.empty(N // 2 if glu else N, cupy.float32 if name == "lm_head" else dt)
        for r, sk in K.GEMV_VARIANTS:
            if glu and r % 2:
                continue
            us = timeit(cupy, lambda: K.gemv(W, x, out, mode=mode, norm_weight=nw if mode == 1 else None,
                                             rows=r, k_split=sk, glu=glu))
            gbs = W.nbytes / (us * 1e-6) / 1e9
            rows.append({"kernel": f"gemv {name} [{N}x{Kd}]", "rows": r, "k_split": sk, "us": us, "gb_per_s": gbs,
                         "chosen": (r, sk) == K.gemv_config(N, Kd)})
        del W
    pos = cupy.asarray([a.pos], cupy.int32)
    kc, vc = rand(hkv, a.max_seq, d), rand(hkv, a.max_seq, d)
    q, o = rand(hq * d), cupy.empty(hq * d, dt)
    part = cupy.empty((hq, -(-a.max_seq // K.ATTN_CHUNK), d + 2), cupy.float32)
    for p_ in sorted({a.pos, 1024, a.max_seq - 1}):
        pos_ = cupy.asarray([p_], cupy.int32)
        us = timeit(cupy, lambda: K.attention(q, kc, vc, pos_, part, o, hq, hkv, d))
        kv_bytes = 2 * hkv * (p_ + 1) * d * 2
        rows.append({"kernel": f"attention pos={p_}", "us": us, "gb_per_s": kv_bytes / (us * 1e-6) / 1e9})
    qkv = rand((hq + 2 * hkv) * d)
    cos = cupy.ones((a.max_seq, d // 2), cupy.float32)
    rows.append({"kernel": "rope_kv", "us": timeit(cupy, lambda: K.rope_kv(qkv, pos, cos, cos, q, kc, vc, hq, hkv, d))})
    E = rand(V, H)
    tok = cupy.zeros(1, cupy.int32)
    x = cupy.empty(H, dt)
    rows.append({"kernel": "embed", "us": timeit(cupy, lambda: K.embed(E, tok, x))})
    logits = cupy.random.random(V, dtype=cupy.float32)
    ot, st, ps = cupy.zeros(a.max_seq + 100, cupy.int32), cupy.zeros(1, cupy.int32), cupy.zeros(1, cupy.int32)

    def am():
        st[0] = 0
        K.argmax_advance(logits, tok, ot, st, ps)
    rows.append({"kernel": "argmax (+1 fill)", "us": timeit(cupy, am)})
    for r in rows:
        print(json.dumps(r))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"shape": a.shape, "pos": a.pos, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
