"""One LSTM layer direction over a sequence on the GPU at hand: the persistent kernel (engine/backends/cupy_lstm.py)
in both of its handovers (cupy_lstm.MODES: barrier, flags) beside the plain composition (FusedOps.lstm_recurrence over the cupy backend's ops) and torch's cuDNN LSTM (the
recurrence alone: torch.nn.LSTM with a 1-wide input, so its input product is negligible), in milliseconds per
sequence and microseconds per step. EnCodec's shape by default (hidden 512, 750 steps = 10 s at 75 frames/s).

    python -m bench.lstm_profile --hidden 512 --steps 750 --batch 1 --out lstm.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def timed(fn, sync, repeat: int) -> float:
    """Median milliseconds of fn() over `repeat` runs after one warm-up (which compiles)."""
    fn()
    sync()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ts))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--steps", type=int, default=750)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)
    import engine
    from engine.backends import cupy_lstm
    from engine.backends.fused import FusedOps
    H, L, N = a.hidden, a.steps, a.batch
    b = engine.zeros(1, device="cuda").backend
    rng = np.random.default_rng(0)
    host = [rng.standard_normal(s).astype(np.float32) * sc for s, sc in
            (((L, N, 4 * H), 1.0), ((N, H), 1.0), ((N, H), 1.0), ((4 * H, H), H ** -0.5), ((4 * H,), H ** -0.5))]
    args = [b.from_numpy(x, engine.float32) for x in host]
    f32 = engine.float32
    res = {"hidden": H, "steps": L, "batch": N, "kernel_taken": cupy_lstm.lstm_ok(*args, None, f32)}
    ref = b.to_numpy(FusedOps.lstm_recurrence(b, *args, None, False, f32)[0])
    for mode in cupy_lstm.MODES:
        cupy_lstm.LSTM_KERNEL["mode"] = mode
        res[f"kernel_{mode}_ms"] = timed(lambda: b.lstm_recurrence(*args, None, False, f32), b.synchronize, a.repeat)
        got = b.to_numpy(b.lstm_recurrence(*args, None, False, f32)[0])
        res[f"kernel_{mode}_max_abs_err_vs_composition"] = float(np.abs(got - ref).max())
    res["composition_ms"] = timed(lambda: FusedOps.lstm_recurrence(b, *args, None, False, f32), b.synchronize,
                                  max(1, a.repeat // 2))
    res["barrier_timeouts"] = cupy_lstm.barrier_timeouts(0)
    try:
        import torch
        torch.backends.cudnn.allow_tf32 = False
        tm = torch.nn.LSTM(1, H).cuda().eval()
        x = torch.zeros(L, N, 1, device="cuda")
        with torch.no_grad():
            res["torch_cudnn_ms"] = timed(lambda: tm(x), torch.cuda.synchronize, a.repeat)
    except Exception as e:  # noqa: BLE001  (no torch with CUDA here: the engine's figures still stand)
        res["torch_cudnn_ms"] = None
        res["torch_error"] = f"{type(e).__name__}: {e}"
    for k in [f"kernel_{m}_ms" for m in cupy_lstm.MODES] + ["composition_ms", "torch_cudnn_ms"]:
        if res.get(k) is not None:
            res[k.replace("_ms", "_us_per_step")] = res[k] * 1e3 / L
    print(json.dumps(res, indent=1))
    if a.out:
        from engine.io import atomic
        atomic.atomic_write_text(a.out, json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
