"""Convolutional models on one GPU, fp16: YOLOv8s at 640 (forward) and one SD-1.5 UNet step (latents
(2, 4, 64, 64), text (2, 77, 768)), engine beside torch eager and torch.compile in the same run.

    python -m bench.conv_gpu --out $OUT/conv_gpu.json          # about 2 minutes on an H200

Engine rows: eager with the convs through cuDNN (cupy_cudnn, where installed), as im2col + cuBLAS
(CONV_IGEMM "never"), with the tensor-core implicit-GEMM kernel (CONV_IGEMM "always"), and the captured
CUDA graph (engine.capture.Captured) with cuDNN's convs and with the implicit-GEMM kernel (its 16-bit
linears cuBLASLt where nvmath-python is installed, since cupy's cuBLAS cannot be captured; the UNet's
timestep enters as a device tensor). Torch rows: diffusers'
UNet2DConditionModel and ultralytics' DetectionModel (skipped when not installed), eager and
torch.compile (compile time reported apart). Random weights; median of the timed calls, each call
synchronised; warm-up calls first.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time


def _time(fn, sync, iters: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        fn()
    sync()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return {"ms_median": 1e3 * statistics.median(ts), "ms_min": 1e3 * min(ts), "iters": iters}


def _engine_rows(name, model, inputs, iters, rows):
    import engine
    from engine.backends import cupy_cudnn
    from engine.backends.cupy_backend import CupyBackend
    from engine.capture import CapturedForward
    sync = lambda: engine.synchronize("cuda")  # noqa: E731  (the default device is the cpu's)
    have = cupy_cudnn.available()
    modes = (("cuDNN", True, "capture"), ("im2col+cuBLAS", False, "never"), ("igemm", False, "always"))
    for label, cudnn, mode in modes:
        if cudnn and not have:
            rows.append({"model": name, "impl": "engine eager (conv cuDNN)", "failed": cupy_cudnn.why_not()})
            continue
        cupy_cudnn.CONFIG["enabled"], CupyBackend.CONV_IGEMM = cudnn and have, mode
        rows.append({"model": name, "impl": f"engine eager (conv {label})",
                     **_time(lambda: model(*inputs), sync, iters)})
        print(rows[-1], flush=True)
    for label, cudnn in (("cuDNN", True), ("igemm", False)):
        if cudnn and not have:
            continue
        cupy_cudnn.CONFIG["enabled"], CupyBackend.CONV_IGEMM = cudnn, "capture"
        step = CapturedForward(model, prime=True)  # as the suites' engine rows: every output kept
        t = time.perf_counter()
        try:
            step(*inputs)  # eager, recorded, captured
            sync()
            rows.append({"model": name, "impl": f"engine captured graph (conv {label})",
                         "capture_s": time.perf_counter() - t, **_time(lambda: step(*inputs), sync, iters, warmup=1)})
        except Exception as e:  # a step that cannot be captured: say why, keep measuring the rest
            rows.append({"model": name, "impl": f"engine captured graph (conv {label})",
                         "failed": f"{type(e).__name__}: {e}"})
        print(rows[-1], flush=True)
        step = None  # its graph and buffers go back to the pool before the next
    cupy_cudnn.CONFIG["enabled"] = have


def _torch_rows(name, module, inputs, iters, rows, compile_: bool):
    import torch
    sync = torch.cuda.synchronize
    with torch.inference_mode():
        rows.append({"model": name, "impl": "torch eager", **_time(lambda: module(*inputs), sync, iters)})
        print(rows[-1], flush=True)
        if compile_:
            c = torch.compile(module)
            t = time.perf_counter()
            c(*inputs)
            sync()
            rows.append({"model": name, "impl": "torch.compile", "compile_s": time.perf_counter() - t,
                         **_time(lambda: c(*inputs), sync, iters)})
            print(rows[-1], flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (its compile takes ~1 min)")
    p.add_argument("--only", choices=["yolo", "unet"], default=None)
    p.add_argument("--out")
    a = p.parse_args(argv)
    import numpy as np
    import torch

    import engine
    rows: list = []
    rng = np.random.default_rng(0)
    dev = "cuda"
    if a.only in (None, "yolo"):
        from engine.models.yolov8 import YOLOv8
        m = YOLOv8.from_preset("yolov8s", dtype=engine.float16, device=dev)
        x = rng.uniform(0, 1, (1, 3, 640, 640)).astype(np.float32)
        _engine_rows("yolov8s-640", m, (engine.tensor(x, device=dev).to(engine.float16),), a.iters, rows)
        try:
            from ultralytics.nn.tasks import DetectionModel
            tm = DetectionModel("yolov8s.yaml", verbose=False).eval().fuse(verbose=False).half().to(dev)
            _torch_rows("yolov8s-640", tm, (torch.from_numpy(x).half().to(dev),), a.iters, rows, not a.no_compile)
        except ImportError as e:
            rows.append({"model": "yolov8s-640", "impl": "torch", "skipped": f"ultralytics not importable: {e}"})
    if a.only in (None, "unet"):
        from engine.models.stable_diffusion.unet_2d_condition import UNet2DConditionModel
        u = UNet2DConditionModel.from_preset("sd-1.5", dtype=engine.float16, device=dev)
        lat = rng.standard_normal((2, 4, 64, 64)).astype(np.float32)
        ctx = rng.standard_normal((2, 77, 768)).astype(np.float32)
        el, ec = (engine.tensor(v, device=dev).to(engine.float16) for v in (lat, ctx))
        # the timestep as a device tensor: a number would be uploaded inside the step (engine.capture refuses that)
        et = engine.tensor(np.array([981.0], np.float32), device=dev)
        _engine_rows("sd15-unet-step", u, (el, et, ec), a.iters, rows)
        try:
            import diffusers
            tu = diffusers.UNet2DConditionModel(**UNet2DConditionModel.PRESETS["sd-1.5"]).eval().half().to(dev)
            tl, tc = (torch.from_numpy(v).half().to(dev) for v in (lat, ctx))
            t981 = torch.tensor(981.0, device=dev)
            _torch_rows("sd15-unet-step", lambda x, c: tu(x, t981, c).sample, (tl, tc), a.iters, rows,
                        not a.no_compile)
        except ImportError as e:
            rows.append({"model": "sd15-unet-step", "impl": "torch", "skipped": f"diffusers not importable: {e}"})
    from bench.probes import emit_rows
    emit_rows(a.out, rows, dtype="float16")
    return 0


if __name__ == "__main__":
    sys.exit(main())
