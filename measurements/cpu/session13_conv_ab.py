"""One 3x3 conv (padding 1) at YOLOv8s' and SD UNet's shapes, in-process A/B (session 13): the engine's F.conv2d with its
defaults, with the rows path off (SHIFTED_ROWS = False: the per-tap sums), with both shifted paths off (SHIFTED =
False: im2col), and torch's conv2d; YOLO's with bias + SiLU, the UNet's (batch 2) without. Variants taken in turn, 4
rounds of 10 calls (5 for the UNet's), medians in ms. Run with `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`
(session11_conv.md says why); `python measurements/cpu/session13_conv_ab.py [yolo|unet]`."""
import sys

import numpy as np
import torch

import engine
import engine.functional as F
from bench.cpu_ab import call_seconds
from engine.backends.numpy_conv import ConvKernels


YOLO = [(1, 64, 80, 64, 1), (1, 32, 160, 32, 1), (1, 128, 40, 128, 1), (1, 256, 20, 256, 1), (1, 128, 80, 128, 1),
        (1, 128, 80, 64, 1), (1, 512, 20, 128, 1), (1, 32, 320, 64, 2), (1, 64, 160, 128, 2), (1, 128, 80, 256, 2)]
UNET = [(2, 1280, 16, 1280, 1), (2, 1280, 8, 1280, 1), (2, 2560, 8, 1280, 1), (2, 2560, 16, 1280, 1)]
VARIANTS = {"default": {}, "taps": {"SHIFTED_ROWS": False}, "im2col": {"SHIFTED": False}}
which = sys.argv[1] if len(sys.argv) > 1 else "yolo"
for n, c, h, o, s in YOLO if which == "yolo" else UNET:
    silu, calls = which == "yolo", 10 if which == "yolo" else 5
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, h), np.float32)
    w = (rng.standard_normal((o, c, 3, 3), np.float32) * 0.05).astype(np.float32)
    b = rng.standard_normal(o, np.float32)
    xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
    xe, we, be = engine.tensor(x), engine.tensor(w), engine.tensor(b)

    def ft():
        y = torch.nn.functional.conv2d(xt, wt, bt, stride=s, padding=1)
        return torch.nn.functional.silu(y, inplace=True) if silu else y

    def fe():
        return F.conv2d(xe, we, be, s, 1, act="silu" if silu else None)

    res = {k: [] for k in list(VARIANTS) + ["torch"]}
    for _ in range(4):
        for name, attrs in VARIANTS.items():
            for a, v in attrs.items():
                setattr(ConvKernels, a, v)
            res[name] += call_seconds(fe, calls, warm=True)
            for a in attrs:
                setattr(ConvKernels, a, True)  # both default to True
        res["torch"] += call_seconds(ft, calls, warm=True)
    print(f"{n}x{c} -> {o} at {h}x{h} stride {s}: " + ", ".join(f"{k} {np.median(v) * 1e3:.2f}" for k, v in res.items()),
          flush=True)
