"""Session 13: the decode's quantized GEMV launches one by one, for Nsight Compute (ncu) to read their counters:
Llama-2-7B's o_proj (4096 x 4096), down_proj (4096 x 11008), gate/up (GLU, 2 x 11008 x 4096) and the fused
q/k/v (3 x 4096 x 4096 as segments), in Q4_K and Q8_0 (int8 route, the decode's defaults), and the fp16 gemv of
o_proj and down_proj; each launched twice (ncu profiles the second: --launch-skip-before-match 0 with the kernel
filter picks every launch; the log names the shape before each pair). Random weights quantised by our converter.
"""
import sys

import cupy
import numpy as np

import engine  # noqa: F401  (the engine's pool owns cupy's memory)
from engine.backends import cupy_kernels as K
from engine.backends import cupy_quant as Q
from engine.io.gguf import quantize_matrix

Q.QUANT_DOT["route"] = "int8"
rng = cupy.random.default_rng(0)
x = (rng.standard_normal((1, 11008), dtype=cupy.float32)).astype(cupy.float16)
only = sys.argv[1:]


def w(N, Kd, fmt):
    a = rng.standard_normal((N, Kd), dtype=cupy.float32) * 0.02
    return a.astype(cupy.float16) if fmt == "fp16" else quantize_matrix(a, fmt)


for fmt in ("q4_k", "q8_0", "fp16"):
    for name, (N, Kd, kind) in {"o_proj": (4096, 4096, "one"), "down_proj": (4096, 11008, "one"),
                                "gate_up": (11008, 4096, "glu"), "qkv": (4096, 4096, "seg")}.items():
        if only and f"{fmt}:{name}" not in only:
            continue
        if fmt == "fp16" and kind != "one":
            continue
        W = w(N, Kd, fmt)
        W2 = w(N, Kd, fmt) if kind == "glu" else None
        segs = [(w(N, Kd, fmt), None), (w(N, Kd, fmt), None)] if kind == "seg" else None
        n_out = N * 3 if kind == "seg" else N
        out = cupy.empty((1, n_out), cupy.float16)
        xs = x[:, :Kd]
        cupy.cuda.Device().synchronize()
        print(f"== {fmt} {name} {N} x {Kd} {kind}", flush=True)
        for _ in range(2):
            if fmt == "fp16":
                K.gemv(xs, W, out)
            else:
                Q.qgemv_fused(xs, W, fmt, out, W2=W2, act="silu" if W2 is not None else None, segments=segs)
        cupy.cuda.Device().synchronize()
