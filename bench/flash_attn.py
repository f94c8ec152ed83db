"""The cupy backend's flash attention (engine/backends/cupy_flash.py) beside torch's fused sdpa on one GPU,
fp16, at the encoder models' shapes; also the generic composition it replaces (full scores in memory).

    python -m bench.flash_attn --out $OUT/flash_attn.json          # well under a minute on an H200

Per shape (B, H, L, S, E): kernel_ms_pipe / kernel_ms_plain (cupy_flash.sdpa's two variants launched back
to back, CUDA events; kernel_ms the faster), engine_ms
(engine.functional.scaled_dot_product_attention, host dispatch included), composition_ms (the backend's
generic sdpa), torch_ms (torch.nn.functional.scaled_dot_product_attention, CUDA events), each the mean
over --iters calls after warm-up; TFLOP/s of each variant (4 B H L S E flops); parity of the engine's
output against torch's (max abs err, cosine) and of both against a float32 torch math run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

SHAPES = [  # name, B, H, L, S, E
    ("sd15-self-4096", 2, 8, 4096, 4096, 40),
    ("sd15-cross-4096x77", 2, 8, 4096, 77, 40),
    ("sd15-self-1024", 2, 20, 1024, 1024, 64),
    ("sd15-self-256-e160", 2, 8, 256, 256, 160),
    ("whisper-enc-1500", 1, 6, 1500, 1500, 64),
    ("bert-b32-128", 32, 12, 128, 128, 64),
    ("clip-77", 2, 12, 77, 77, 64),
]


def _events_ms(fn, start, stop, elapsed, sync, iters: int, warmup: int = 3) -> float:
    """Mean milliseconds of fn over iters back-to-back calls between two CUDA events."""
    for _ in range(warmup):
        fn()
    sync()
    start.record()
    for _ in range(iters):
        fn()
    stop.record()
    stop.synchronize()
    return elapsed(start, stop) / iters


def _wall_ms(fn, sync, iters: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return 1e3 * (time.perf_counter() - t) / iters


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--no-composition", action="store_true", help="skip timing the generic composition")
    p.add_argument("--out")
    a = p.parse_args(argv)
    import cupy
    import numpy as np
    import torch
    import torch.nn.functional as TF

    import engine
    from engine.backends import cupy_flash
    from engine.backends.numpy_backend import NumpyBackend

    def sync():  # the GPU's queue (a bare engine.synchronize() is the default device's: the cpu's)
        engine.synchronize("cuda")

    rows = []
    rng = np.random.default_rng(0)
    for name, B, H, L, S, E in SHAPES:
        q, k, v = (rng.standard_normal(s).astype(np.float16) for s in ((B, H, L, E), (B, H, S, E), (B, H, S, E)))
        eq, ek, ev = (engine.tensor(x, device="cuda") for x in (q, k, v))
        tq, tk, tv = (torch.from_numpy(x).cuda() for x in (q, k, v))
        row = {"shape": name, "B": B, "H": H, "L": L, "S": S, "E": E}
        try:
            qa, ka, va = eq.array, ek.array, ev.array
            assert cupy_flash.flash_ok(qa, ka, va, None)
            obuf = cupy.empty((B, H, L, E), qa.dtype)
            scale = 1.0 / E ** 0.5
            for pipe in (True, False):  # the two kernel variants (cupy_flash.FLASH["pipe"])
                ms = _events_ms(lambda p=pipe: cupy_flash.sdpa(qa, ka, va, None, False, scale, obuf, pipe=p),
                                cupy.cuda.Event(), cupy.cuda.Event(), cupy.cuda.get_elapsed_time, sync,
                                a.iters)
                tag = "pipe" if pipe else "plain"
                row[f"kernel_ms_{tag}"] = ms
                row[f"kernel_tflops_{tag}"] = 4 * B * H * L * S * E / (ms * 1e-3) / 1e12
            row["kernel_ms"] = min(row["kernel_ms_pipe"], row["kernel_ms_plain"])
            plain = torch.from_numpy(cupy.asnumpy(obuf).astype(np.float32))  # the plain variant ran last
            F = engine.functional.scaled_dot_product_attention
            row["engine_ms"] = _wall_ms(lambda: F(eq, ek, ev), sync, a.iters)
            got = torch.from_numpy(np.array(F(eq, ek, ev).float().numpy()))
        except Exception as e:  # keep measuring the other shapes; say why this one failed
            row["engine_failed"] = f"{type(e).__name__}: {e}"
            got = plain = None
        if not a.no_composition:
            try:
                be = eq.backend
                row["composition_ms"] = _wall_ms(
                    lambda: NumpyBackend.sdpa(be, eq.array, ek.array, ev.array, None, False, E ** -0.5, eq.dtype),
                    sync, max(3, a.iters // 5))
            except Exception as e:
                row["composition_failed"] = f"{type(e).__name__}: {e}"
        with torch.inference_mode():
            row["torch_ms"] = _events_ms(lambda: TF.scaled_dot_product_attention(tq, tk, tv),
                                         torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True),
                                         lambda s, e: s.elapsed_time(e), torch.cuda.synchronize, a.iters)
            want = TF.scaled_dot_product_attention(tq, tk, tv).float().cpu()
            ref = TF.scaled_dot_product_attention(tq.float(), tk.float(), tv.float()).cpu()
        row["torch_vs_fp32_max_abs"] = (want - ref).abs().max().item()
        if got is not None:
            row["engine_vs_torch_max_abs"] = (got - want).abs().max().item()
            row["engine_vs_fp32_max_abs"] = (got - ref).abs().max().item()
            row["plain_vs_torch_max_abs"] = (plain - want).abs().max().item()
            row["engine_vs_torch_cosine"] = TF.cosine_similarity(got.flatten(), want.flatten(), dim=0).item()
            row["speed_vs_torch"] = row["torch_ms"] / row["kernel_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    from bench.probes import emit_rows
    emit_rows(a.out, rows, dtype="float16", iters=a.iters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
