"""One conv + bias + SiLU at YOLOv8s' 3x3 shapes (batch 1), in-process A/B (session 12): the engine's F.conv2d with
its defaults, with the per-tap sums through np.matmul + add (numpy_blas._SGEMM = False), with stride 2 left to
im2col (SHIFTED_S2_MAX_C = 0), and torch's conv2d + silu; variants taken in turn, 4 rounds of 10 calls, medians in
ms. Run with `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE` (session11_conv.md says why)."""
import numpy as np
import torch

import engine
import engine.functional as F
from bench.cpu_ab import call_seconds
from engine.backends import numpy_blas
from engine.backends.numpy_conv import ConvKernels


numpy_blas._find()
SGEMM = numpy_blas._SGEMM
VARIANTS = {"default": (SGEMM, 128), "matmul+add": (False, 128), "s2 im2col": (SGEMM, 0)}
for c, h, o, s in ((64, 80, 64, 1), (32, 160, 32, 1), (128, 40, 128, 1), (128, 80, 128, 1), (256, 20, 256, 1),
                   (32, 320, 64, 2), (64, 160, 128, 2), (128, 80, 256, 2), (256, 40, 512, 2), (3, 640, 32, 2)):
    x = np.random.randn(1, c, h, h).astype(np.float32)
    w = (np.random.randn(o, c, 3, 3) * 0.05).astype(np.float32)
    b = np.random.randn(o).astype(np.float32)
    xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
    xe, we, be = engine.tensor(x), engine.tensor(w), engine.tensor(b)
    res = {k: [] for k in list(VARIANTS) + ["torch"]}
    ft = lambda: torch.nn.functional.silu(torch.nn.functional.conv2d(xt, wt, bt, stride=s, padding=1), inplace=True)  # noqa: E731
    fe = lambda: F.conv2d(xe, we, be, s, 1, act="silu")  # noqa: E731
    for _ in range(4):
        for name, (sg, s2) in VARIANTS.items():
            numpy_blas._SGEMM, ConvKernels.SHIFTED_S2_MAX_C = sg, s2
            fe()
            res[name] += call_seconds(fe, 10)
        ft()
        res["torch"] += call_seconds(ft, 10)
    numpy_blas._SGEMM, ConvKernels.SHIFTED_S2_MAX_C = SGEMM, 128
    print(f"{c} -> {o} at {h}x{h} stride {s}: " + ", ".join(f"{k} {np.median(v) * 1e3:.2f}" for k, v in res.items()),
          flush=True)
