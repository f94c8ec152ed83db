"""Session 14: YOLOv8s's slowest 3x3 convs (+ bias + SiLU, float32) on the CPU, the engine's conv_act under its
path settings (numpy_conv.ConvKernels: the default, per-tap GEMMs, one GEMM a kernel row at any size, and no shifted
path: im2col) beside torch eager, median of 7 after one warm-up. Run from the repository root in a venv with torch:
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/taper_cpu_bench.lock python measurements/cpu/session14_conv_shapes.py
"""
import sys
import time

import numpy as np
import torch

sys.path.insert(0, ".")
import engine  # noqa: E402
from engine import dtype as D  # noqa: E402
from engine.backends import numpy_conv as NC  # noqa: E402

be = engine.backend("cpu")
C = NC.ConvKernels
torch.set_num_threads(2)
shapes = [((1,32,320,320),(64,32,3,3),2), ((1,32,160,160),(32,32,3,3),1), ((1,3,640,640),(32,3,3,3),2),
          ((1,64,160,160),(128,64,3,3),2), ((1,64,80,80),(64,64,3,3),1), ((1,128,80,80),(128,128,3,3),1),
          ((1,128,40,40),(128,128,3,3),1)]
VARS = {"default": {}, "taps": {"SHIFTED_ROWS": False}, "rows": {"SHIFTED_ROWS_MAX": 10**9},
        "noshift": {"SHIFTED": False}}
def t(fn, n=7):
    fn(); ts=[]
    for _ in range(n):
        a=time.perf_counter(); fn(); ts.append(time.perf_counter()-a)
    return np.median(ts)*1e3
for xs, ws, s in shapes:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(np.float32); w = (rng.standard_normal(ws)*0.05).astype(np.float32); b = rng.standard_normal(ws[0]).astype(np.float32)
    row = []
    for name, v in VARS.items():
        old = {k: getattr(C, k) for k in v}
        for k, val in v.items(): setattr(C, k, val)
        row.append(f"{name} {t(lambda: be.conv_act(x, w, b, (s,s), ((1,1),(1,1)), (1,1), 1, 'silu', D.float32)):6.2f}")
        for k, val in old.items(): setattr(C, k, val)
    tx, tw, tb = map(torch.from_numpy, (x, w, b))
    with torch.no_grad():
        row.append(f"torch {t(lambda: torch.nn.functional.silu(torch.nn.functional.conv2d(tx, tw, tb, s, 1))):6.2f}")
    print(xs, ws, s, " | ".join(row), flush=True)
