"""The fused LSTM recurrence (engine/backends/fused.py's lstm_recurrence, which nn.LSTM steps through)
against its plain composition, bit for bit, on the device under test (numpy: one loop over raw arrays;
cupy: the composition of its own kernels)."""
import numpy as np
import pytest

import engine
from engine.backends.fused import FusedOps
from helpers import DEVICE, NP, needs_device

pytestmark = needs_device


def arr(shape, dtype, scale=1.0, seed=0):
    a = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
    return a.astype(NP[dtype])


def E(a):
    return engine.tensor(a, device=DEVICE)


# ---- LSTM recurrence: the backend's loop against the plain composition -------------------------------------
@pytest.mark.parametrize("dtype,reverse,proj,bias", [("float32", False, 0, True), ("float32", True, 0, True),
                                                     ("float32", False, 3, False), ("float64", True, 3, True),
                                                     ("float16", False, 0, True)])
def test_lstm_recurrence_equals_composition(monkeypatch, dtype, reverse, proj, bias):
    """xw (L, N, 4H), h (N, P), c (N, H): the backend's lstm_recurrence (one loop over raw arrays for
    float32/float64) equals FusedOps' op-by-op composition bit for bit, outputs and final state. On CUDA with
    the persistent LSTM kernel off: the kernel sums in another order, and tests/test_lstm_cuda.py checks it
    against this composition within tolerance."""
    if DEVICE.type == "cuda":
        from engine.backends import cupy_lstm
        monkeypatch.setitem(cupy_lstm.LSTM_KERNEL, "enabled", False)
    L, N, H = 7, 2, 5
    P = proj or H
    xs = [arr((L, N, 4 * H), dtype, seed=1), arr((N, P), dtype, seed=2), arr((N, H), dtype, seed=3),
          arr((4 * H, P), dtype, 0.5, seed=4), arr((4 * H,), dtype, seed=5) if bias else None,
          arr((P, H), dtype, 0.5, seed=6) if proj else None]
    es = [E(a).array if a is not None else None for a in xs]
    b = E(xs[0]).backend
    dt = engine.dtype.get(dtype)
    got = b.lstm_recurrence(*es, reverse, dt)
    ref = FusedOps.lstm_recurrence(b, *es, reverse, dt)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        np.testing.assert_array_equal(b.to_numpy(g), b.to_numpy(r))
