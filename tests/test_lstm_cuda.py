"""The persistent LSTM kernel (engine/backends/cuda/lstm.cu through engine/backends/cupy_lstm.py), which the cupy
backend's lstm_recurrence runs for a whole layer direction in one launch.

Oracles, per case (hidden 32 and 512, 1 / 7 / 750 steps, batch 1 and 2, both directions, zero and random
initial state):
  - the plain composition (FusedOps.lstm_recurrence over the cupy backend's own ops): within the fp32 table's
    tolerance scaled for a recurrence (the dot products sum in another order, so not bit for bit), and the
    kernel's error against a float64 loop at most REDUCED_ERROR_RATIO times the composition's (plus a floor);
  - torch.nn.LSTM on CUDA (cuDNN, TF32 off) with the same weights, through engine.nn.LSTM (the reverse
    direction through a bidirectional LSTM);
  - EnCodec 24 kHz (two LSTM layers in the encoder and in the decoder) on CUDA against the CPU engine on real
    speech: codes identical, decoded audio within fp32 (test_models_encodec's rule).
The kernel's two handovers of h between steps (cupy_lstm.MODES: a grid barrier, or tagged words) both run the
kernel cases, a captured graph and EnCodec. Every case also checks that the kernel took the call (lstm_ok) and
that no block gave up waiting.
Run on a GPU: ENGINE_DEVICE=cuda python -m pytest tests/test_lstm_cuda.py
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import engine
from engine.backends.fused import FusedOps
from helpers import DEVICE
from migration import tolerances

pytestmark = pytest.mark.cuda

if DEVICE.type == "cuda":
    from engine.backends import cupy_lstm


@pytest.fixture(autouse=True)
def _no_tf32():
    """cuDNN's LSTM would use TF32 tensor cores by default: an fp32 oracle must not."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def rnd(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def reference64(xw, h, c, w_hh, b_hh, reverse):
    """The recurrence in float64 on the host (the oracle both fp32 results are judged against)."""
    xw, h, c, w_hh, b_hh = (a.astype(np.float64) for a in (xw, h, c, w_hh, b_hh))
    hid = c.shape[1]
    out = np.zeros((xw.shape[0],) + h.shape)
    for t in (range(xw.shape[0] - 1, -1, -1) if reverse else range(xw.shape[0])):
        g = xw[t] + (h @ w_hh.T + b_hh)
        s = 1 / (1 + np.exp(-g))
        c = s[:, hid:2 * hid] * c + s[:, :hid] * np.tanh(g[:, 2 * hid:3 * hid])
        h = s[:, 3 * hid:] * np.tanh(c)
        out[t] = h
    return out, h, c


def scale_for(steps: int) -> float:
    """The fp32 table's tolerance times this: a 512-wide dot product per gate, and a recurrence that carries
    each step's rounding into the next (c remembers)."""
    return 10.0 if steps <= 7 else 100.0


CASES = list(itertools.product((32, 512), (1, 7, 750), (1, 2), (False, True), ("zero", "random")))
MODES = ("barrier", "flags")  # cupy_lstm.MODES (cupy is not imported without a GPU)


@pytest.fixture
def mode(request, monkeypatch):
    """Runs the test with the kernel's handover set to request.param."""
    monkeypatch.setitem(cupy_lstm.LSTM_KERNEL, "mode", request.param)
    return request.param


# ---- the kernel against the composition and a float64 loop ------------------------------------------------
@pytest.mark.parametrize("mode", MODES, indirect=True)
@pytest.mark.parametrize("H,steps,N,reverse,init", CASES, ids=lambda v: str(v))
def test_kernel_vs_composition(H, steps, N, reverse, init, mode):
    b = engine.zeros(1, device=DEVICE).backend
    bound = 1 / np.sqrt(H)  # torch's LSTM init: U(-1/sqrt(H), 1/sqrt(H)); rnd * bound is of that size
    xw = rnd((steps, N, 4 * H), 1)
    h0, c0 = (rnd((N, H), 2), rnd((N, H), 3)) if init == "random" else (np.zeros((N, H), np.float32),) * 2
    w_hh, b_hh = rnd((4 * H, H), 4, bound), rnd((4 * H,), 5, bound)
    args = [b.from_numpy(a, engine.float32) for a in (xw, h0, c0, w_hh, b_hh)]
    assert cupy_lstm.lstm_ok(*args[:5], None, engine.float32)
    got = [b.to_numpy(a) for a in b.lstm_recurrence(*args, None, reverse, engine.float32)]
    comp = [b.to_numpy(a) for a in FusedOps.lstm_recurrence(b, *args, None, reverse, engine.float32)]
    ref = reference64(xw, h0, c0, w_hh, b_hh, reverse)
    assert cupy_lstm.barrier_timeouts(DEVICE.index or 0) == 0
    rtol, atol = tolerances.get("float32", scale_for(steps))
    for g, cp, r in zip(got, comp, ref):
        assert g.shape == cp.shape and np.isfinite(g).all()
        np.testing.assert_allclose(g, cp, rtol=rtol, atol=atol)
        floor = 1e-6 * max(1.0, np.abs(r).max())  # the cases where both are exact to a few ulps
        assert np.abs(g - r).max() <= tolerances.REDUCED_ERROR_RATIO * np.abs(cp - r).max() + floor


# ---- engine.nn.LSTM (through the kernel) against torch.nn.LSTM on CUDA ------------------------------------------
@pytest.mark.parametrize("H,steps,N,reverse,init", CASES, ids=lambda v: str(v))
def test_lstm_vs_torch_cuda(H, steps, N, reverse, init):
    from engine.nn.rnn import LSTM
    torch.manual_seed(0)
    n_in, nd = 16, 2 if reverse else 1
    tm = torch.nn.LSTM(n_in, H, bidirectional=reverse).cuda().eval()
    em = LSTM(n_in, H, bidirectional=reverse)
    em.load_state_dict({k: engine.tensor(v.detach().cpu().numpy(), device=DEVICE) for k, v in tm.state_dict().items()})
    x = rnd((steps, N, n_in), 1)
    h0, c0 = (rnd((nd, N, H), 2), rnd((nd, N, H), 3)) if init == "random" else (np.zeros((nd, N, H), np.float32),) * 2
    with torch.no_grad():
        ref = tm(torch.from_numpy(x).cuda(), (torch.from_numpy(h0).cuda(), torch.from_numpy(c0).cuda()))
    dev = lambda a: engine.tensor(a, device=DEVICE)  # noqa: E731
    out, (h, c) = em(dev(x), (dev(h0), dev(c0)))
    assert cupy_lstm.barrier_timeouts(DEVICE.index or 0) == 0
    rtol, atol = tolerances.get("float32", scale_for(steps))
    for g, r in zip((out, h, c), (ref[0], ref[1][0], ref[1][1])):
        np.testing.assert_allclose(g.numpy(), r.cpu().numpy(), rtol=rtol, atol=atol)


# ---- fallbacks: what the kernel does not take goes to the composition --------------------------------------------
def test_projection_and_other_dtypes_fall_back():
    b = engine.zeros(1, device=DEVICE).backend
    f32 = lambda *s: b.from_numpy(rnd(s, 0), engine.float32)  # noqa: E731
    xw, h, c, w_hh, b_hh = f32(3, 1, 32), f32(1, 8), f32(1, 8), f32(32, 8), f32(32)
    assert cupy_lstm.lstm_ok(xw, h, c, w_hh, b_hh, None, engine.float32)
    assert cupy_lstm.lstm_ok(xw, h, c, w_hh, None, None, engine.float32)  # bias=False
    assert not cupy_lstm.lstm_ok(xw, f32(1, 4), c, f32(32, 4), b_hh, f32(4, 8), engine.float32)  # proj_size
    assert not cupy_lstm.lstm_ok(xw, h, c, w_hh, b_hh, None, engine.float64)
    assert not cupy_lstm.lstm_ok(xw[:0], h, c, w_hh, b_hh, None, engine.float32)  # no steps


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16bit_vs_composition(dtype):
    """16-bit rounds after every op as the composition does; 7 steps of hidden 32 agree within the dtype's
    tolerance (the dot products sum in another order, so a value may round to its neighbour)."""
    b = engine.zeros(1, device=DEVICE).backend
    dt = engine.dtype.get(dtype)
    args = [b.from_numpy(a, dt) for a in (rnd((7, 2, 128), 1), rnd((2, 32), 2), rnd((2, 32), 3),
                                          rnd((128, 32), 4, 0.17), rnd((128,), 5, 0.17))]
    assert cupy_lstm.lstm_ok(*args, None, dt)
    got = b.lstm_recurrence(*args, None, False, dt)
    comp = FusedOps.lstm_recurrence(b, *args, None, False, dt)
    rtol, atol = tolerances.get(dtype, 10.0)
    for g, cp in zip(got, comp):
        np.testing.assert_allclose(b.to_numpy(g).astype(np.float32), b.to_numpy(cp).astype(np.float32),
                                   rtol=rtol, atol=max(atol, rtol))


# ---- inside a captured CUDA graph: replays start from a zeroed barrier ----------------------------------------
@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_captured_replays(mode):
    from engine.capture import Captured
    from engine.nn.rnn import LSTM
    torch.manual_seed(0)
    tm = torch.nn.LSTM(16, 32, num_layers=2)
    em = LSTM(16, 32, num_layers=2)
    em.load_state_dict({k: engine.tensor(v.detach().numpy(), device=DEVICE) for k, v in tm.state_dict().items()})
    step = Captured(lambda x: em(x)[0])
    for seed in range(5):  # eager, record, capture, then two replays
        x = rnd((20, 1, 16), seed)
        with torch.no_grad():
            ref = tm(torch.from_numpy(x))[0].numpy()
        np.testing.assert_allclose(step(engine.tensor(x, device=DEVICE)).numpy(), ref, rtol=1e-4, atol=1e-5)
    assert step.graph is not None  # the last two calls replayed a CUDA graph
    assert cupy_lstm.barrier_timeouts(DEVICE.index or 0) == 0


# ---- EnCodec 24 kHz on CUDA against the CPU engine ---------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_encodec_24khz_cuda_equals_cpu(monkeypatch, mode):
    from migration.port import port_hf
    from test_models_encodec import FP32_REL, hf_encodec, mono
    calls = []
    real = cupy_lstm.lstm
    monkeypatch.setattr(cupy_lstm, "lstm", lambda *a: calls.append(a[1].shape) or real(*a))
    hf = hf_encodec("encodec_24khz")
    x = mono(1.0)
    cpu, gpu = port_hf(hf, device="cpu").model, port_hf(hf, device=DEVICE).model
    codes_c, scale_c = cpu.encode(x, 6.0)
    codes_g, scale_g = gpu.encode(x, 6.0)
    np.testing.assert_array_equal(codes_g.numpy(), codes_c.numpy())
    dec_c, dec_g = cpu.decode(codes_c, scale_c).numpy(), gpu.decode(codes_g, scale_g).numpy()
    assert dec_g.shape == dec_c.shape
    np.testing.assert_allclose(dec_g, dec_c, rtol=0, atol=FP32_REL * np.abs(dec_c).max())
    assert len(calls) == 4 and all(s == (75, 1, 2048) for s in calls)  # 2 layers in the encoder, 2 in the decoder
    assert cupy_lstm.barrier_timeouts(DEVICE.index or 0) == 0
