"""cuDNN's convolutions (engine/backends/cupy_cudnn.py) on CUDA: against torch in float64 (DESIGN.md's
reduced-precision rule) and against the engine's own im2col + cuBLAS composition, 1-d and 2-d, groups,
strides, dilations, with and without bias; inside a captured CUDA graph. Skipped without a GPU and cuDNN."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import engine
from helpers import DEVICE, NP, TORCH, compare_reduced, needs_device

pytestmark = [needs_device, pytest.mark.cuda]
if DEVICE.type != "cuda":
    pytest.skip("cuDNN convolutions run on CUDA only (ENGINE_DEVICE=cuda)", allow_module_level=True)
from engine.backends import cupy_cudnn  # noqa: E402  (imports cupy)
from engine.backends.cupy_backend import CupyBackend  # noqa: E402

if not cupy_cudnn.available():
    pytest.skip(f"cuDNN is not usable: {cupy_cudnn.why_not()}", allow_module_level=True)


def arr(shape, dtype, scale=1.0, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32).astype(NP[dtype])


def T(a):
    name = "bfloat16" if a.dtype == NP["bfloat16"] else a.dtype.name
    return torch.from_numpy(np.asarray(a, np.float32)).to(TORCH[name])


E = lambda a: engine.tensor(a, device=DEVICE)  # noqa: E731
# x shape, w shape, stride, padding, dilation, groups
CASES = [((2, 16, 12, 10), (24, 16, 3, 3), 1, 1, 1, 1), ((1, 8, 17, 9), (8, 8, 3, 3), 2, 1, 1, 1),
         ((1, 40, 9, 9), (70, 40, 1, 1), 1, 0, 1, 1), ((2, 5, 11, 13), (3, 5, 5, 3), 1, 2, 2, 1),
         ((1, 64, 33, 31), (128, 64, 3, 3), 1, 1, 1, 1), ((1, 3, 20, 20), (16, 3, 3, 3), 2, 1, 1, 1),
         ((2, 32, 14, 14), (32, 1, 3, 3), 1, 1, 1, 32), ((1, 24, 10, 10), (12, 6, 3, 3), 1, 1, 1, 4),
         ((2, 80, 300), (384, 80, 3), 1, 1, 1, 1), ((1, 32, 999), (64, 32, 7), 2, 3, 1, 1),
         ((1, 16, 64), (16, 16, 3), 1, 2, 2, 1)]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("xs,ws,stride,pad,dil,groups", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_cudnn_conv(dtype, xs, ws, stride, pad, dil, groups, bias, monkeypatch):
    x, w = arr(xs, dtype), arr(ws, dtype, 0.1, 1)
    b = arr((ws[0],), dtype, 0.1, 2) if bias else None
    conv = engine.functional.conv1d if len(xs) == 3 else engine.functional.conv2d
    tconv = TF.conv1d if len(xs) == 3 else TF.conv2d
    run = lambda: conv(E(x), E(w), None if b is None else E(b), stride, pad, dil, groups)  # noqa: E731
    got = run()
    monkeypatch.setitem(cupy_cudnn.CONFIG, "enabled", False)
    monkeypatch.setattr(CupyBackend, "CONV_IGEMM", "never")
    plain = run()  # the engine's im2col + cuBLAS composition
    tb = None if b is None else T(b)
    want = tconv(T(x), T(w), tb, stride, pad, dil, groups)
    want64 = tconv(T(x).double(), T(w).double(), None if b is None else tb.double(), stride, pad, dil, groups)
    assert got.shape == plain.shape == tuple(want.shape) and got.dtype is plain.dtype
    compare_reduced(got, want, want64, scale=4)
    compare_reduced(plain, want, want64, scale=4)


def test_cudnn_conv_act_and_asymmetric_padding_fall_back():
    """conv_act runs cuDNN's conv then the activation (the eager op's rounding); a padding cuDNN cannot
    express (top != bottom) goes to the engine's own conv, with the same result as torch's F.pad + conv."""
    x, w, b = arr((1, 8, 12, 12), "float16"), arr((16, 8, 3, 3), "float16", 0.1, 1), arr((16,), "float16", 0.1, 2)
    fused = engine.functional.conv2d(E(x), E(w), E(b), 1, 1, act="silu")
    plain = engine.functional.conv2d(E(x), E(w), E(b), 1, 1).silu()
    np.testing.assert_array_equal(fused.float().numpy(), plain.float().numpy())
    xb = x.astype(np.float32)
    assert not cupy_cudnn.takes(E(xb).array, E(w.astype(np.float32)).array, None, (1, 1), ((0, 1), (1, 1)), 1,
                                engine.float32)
    padded = engine.functional.pad(E(xb), (1, 1, 0, 1))
    got = engine.functional.conv2d(padded, E(w.astype(np.float32)))
    want = TF.conv2d(TF.pad(torch.from_numpy(xb), (1, 1, 0, 1)), torch.from_numpy(w.astype(np.float32)))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)


def test_cudnn_conv_in_a_captured_graph():
    """A group_norm + SiLU + 3x3 conv step captured as a CUDA graph replays equal to its eager run with
    cuDNN (the workspace is a pooled block the graph keeps)."""
    from engine.capture import Captured
    x, w, b = E(arr((2, 32, 16, 16), "float16")), E(arr((64, 32, 3, 3), "float16", 0.1, 1)), E(arr((64,), "float16"))
    gw, gb = E(arr((32,), "float16", 0.5, 2)), E(arr((32,), "float16", 0.5, 3))

    def step(x):
        return engine.functional.conv2d(engine.functional.group_norm(x, 8, gw, gb, 1e-5, act="silu"), w, b, 1, 1)

    eager = step(x)
    graph = Captured(step)
    for _ in range(3):  # eager, recorded, captured
        graph(x)
    x2 = E(arr((2, 32, 16, 16), "float16", seed=5))
    np.testing.assert_array_equal(graph(x2).float().numpy(), step(x2).float().numpy())
    np.testing.assert_array_equal(graph(x).float().numpy(), eager.float().numpy())
