"""Bad input raises a documented exception whose message names the shapes, dtypes, devices or values.

engine.ShapeError (a ValueError), engine.DTypeError (a TypeError), engine.DeviceMismatchError,
IndexError, engine.DeviceUnavailableError (a device that cannot load, e.g. cuda without cupy).
"""
import importlib.util
import re

import numpy as np
import pytest

import engine
import engine.functional as EF
from engine import DeviceMismatchError, DeviceUnavailableError, DTypeError, ShapeError
from helpers import DEVICE, needs_device

pytestmark = needs_device


def t(*shape, dtype=engine.float32, device=None):
    return engine.zeros(shape, dtype=dtype, device=device or DEVICE)


def raises(exc, text):
    """pytest.raises matching `text` literally (every part of the message we promise)."""
    return pytest.raises(exc, match=re.escape(text))


# ---- shapes ---------------------------------------------------------------------------------------------
SHAPE_CASES = [
    (lambda: t(2, 3) + t(4), "shapes (2, 3) and (4,) do not broadcast"),
    (lambda: t(2, 3) * t(3, 2), "shapes (2, 3) and (3, 2) do not broadcast (dim -2: 2 vs 3)"),
    (lambda: engine.where(t(2, dtype=engine.bool), t(3), t(2)), "do not broadcast"),
    (lambda: t(2, 3) @ t(4, 5), "matmul(): shapes (2, 3) and (4, 5) cannot be multiplied (3 != 4)"),
    (lambda: t(2, 3, 4) @ t(3, 4, 5), "shapes (2,) and (3,) do not broadcast"),
    (lambda: t(3) @ t(), "matmul(): both arguments need at least 1 dim, got shapes (3,) and ()"),
    (lambda: engine.bmm(t(2, 3), t(2, 3, 4)), "bmm(): expected two 3-d tensors with the same batch size, got (2, 3) and (2, 3, 4)"),
    (lambda: t(2, 3).reshape(4, 2), "shape (4, 2) is invalid for input of size 6"),
    (lambda: t(2, 3).view(-1, -1), "only one dim can be -1 in (-1, -1)"),
    (lambda: t(2, 3).T.view(6), "view size (6,) is not compatible with input size (3, 2) and strides (1, 3)"),
    (lambda: engine.cat([t(2, 3), t(2, 4)]), "cat(): tensor 1 has shape (2, 4), expected (2, 3) except at dim 0"),
    (lambda: engine.stack([t(2, 3), t(3, 2)]), "stack(): tensor 1 has shape (3, 2), tensor 0 has (2, 3)"),
    (lambda: t(2, 3).expand(2, 4), "expand: size 3 at dim 1 cannot become 4 (tensor (2, 3), target (2, 4))"),
    (lambda: t(2, 3).expand(3), "expand: target (3,) has fewer dims than the tensor's (2, 3)"),
    (lambda: t(2, 3).split([1, 2]), "split sizes [1, 2] do not sum to dim 0 of size 2 (shape (2, 3))"),
    (lambda: t(2, 3).narrow(1, 2, 2), "narrow(dim=1, start=2, length=2) out of range for size 3 (shape (2, 3))"),
    (lambda: t(2, 3).sum(2), "dim 2 out of range for a tensor of 2 dims (expected [-2, 1])"),
    (lambda: t(2, 3).transpose(0, -3), "dim -3 out of range for a tensor of 2 dims"),
    (lambda: t(2, 3).permute(1, 1), "permute dims (1, 1) are not a permutation of 2 dims (shape (2, 3))"),
    (lambda: EF.softmax(t(2, 3), 5), "dim 5 out of range for a tensor of 2 dims"),
    (lambda: t(2, 3).sum((0, 0)), "dim (0, 0) appears more than once"),
    (lambda: t(0, 3).amax(0), "amax(): cannot reduce over dim 0 of size 0 (input shape (0, 3))"),
    (lambda: t(0, 3).argmax(), "argmax(): cannot reduce over dim 0 of size 0 (input shape (0, 3))"),
    (lambda: t(4, 2).topk(3), "topk(): k=3 out of range for dim 1 of size 2 (shape (4, 2))"),
    (lambda: t(2, 3).masked_fill(t(3, 3, dtype=engine.bool), 0), "masked_fill(): mask of shape (3, 3) does not broadcast to (2, 3)"),
    (lambda: t(2, 3).__setitem__(0, t(4)), "setitem: a value of shape (4,) cannot be broadcast to shape (3,)"),
    (lambda: t(2, 3).copy_(t(3, 2)), "copy_: a value of shape (3, 2) cannot be broadcast to shape (2, 3)"),
    (lambda: t(2, 3).add_(t(4, 2, 3)), "in-place add: result shape (4, 2, 3) differs from the tensor's (2, 3)"),
    (lambda: t(2, 3).gather(1, t(3, 3, dtype=engine.int64)), "gather(): index shape (3, 3) does not fit input shape (2, 3) at dim 1"),
    (lambda: t(2, 3).index_select(0, t(2, 2, dtype=engine.int64)), "index_select(): index must be 1-d, got shape (2, 2)"),
    (lambda: t(2, 3).repeat(2), "repeat(): 1 repeat sizes for a tensor of 2 dims (shape (2, 3))"),
    (lambda: t(3).triu(), "triu(): needs at least 2 dims, got shape (3,)"),
    (lambda: EF.linear(t(2, 3), t(4, 5)), "linear(): input (2, 3) and weight (4, 5) do not fit"),
    (lambda: EF.linear(t(2, 5), t(4, 5), t(3)), "linear(): bias (3,) does not match weight (4, 5)"),
    (lambda: EF.conv2d(t(1, 3, 5, 5), t(4, 2, 3, 3)), "conv2d(): input (1, 3, 5, 5) with 3 channels does not fit weight (4, 2, 3, 3) with groups=1"),
    (lambda: EF.conv2d(t(5, 5), t(4, 3, 3, 3)), "conv2d(): expected 3-d or 4-d input, got (5, 5)"),
    (lambda: EF.conv1d(t(1, 4, 5), t(6, 2, 3), groups=4), "conv1d(): input (1, 4, 5) with 4 channels does not fit weight (6, 2, 3) with groups=4"),
    (lambda: EF.layer_norm(t(2, 3), (4,)), "layer_norm(): normalized_shape (4,) does not match the input's trailing dims (2, 3)"),
    (lambda: EF.rms_norm(t(2, 3), (2, 3, 1)), "rms_norm(): normalized_shape (2, 3, 1) does not match"),
    (lambda: EF.group_norm(t(2, 6, 4), 4), "group_norm(): 4 groups do not divide the 6 channels of input (2, 6, 4)"),
    (lambda: EF.batch_norm(t(2, 3), t(4), t(4)), "batch_norm(): running_mean (4,) does not match channels of (2, 3)"),
    (lambda: EF.scaled_dot_product_attention(t(1, 2, 3, 4), t(1, 2, 3, 5), t(1, 2, 3, 4)), "q (1, 2, 3, 4), k (1, 2, 3, 5), v (1, 2, 3, 4) do not fit"),
    (lambda: EF.scaled_dot_product_attention(t(1, 4, 3, 4), t(1, 2, 3, 4), t(1, 2, 3, 4)), "4 query heads and 2 key heads need enable_gqa=True"),
    (lambda: EF.pad(t(2, 3), (1, 1, 1, 1, 1, 1)), "pad(): 6 pad values do not fit input of 2 dims"),
    (lambda: EF.pad(t(1, 2, 3), (3, 0), mode="reflect"), "pad(): reflect padding (3, 0) must be smaller than dim 2 of size 3"),
    (lambda: EF.max_pool2d(t(5, 5), 2), "max_pool2d(): expected 3-d or 4-d input, got (5, 5)"),
    (lambda: EF.interpolate(t(5, 5), size=3), "interpolate(): expected 3-d, 4-d or 5-d input for mode 'nearest', got (5, 5)"),
    (lambda: engine.zeros(2, -1, device=DEVICE), "negative dimension in size (2, -1)"),
    (lambda: t(2, 3).unflatten(1, (2, 2)), "shape (2, 2, 2) is invalid for input of size 6"),
]


@pytest.mark.parametrize("fn,text", SHAPE_CASES, ids=[c[1][:40] for c in SHAPE_CASES])
def test_shape_errors(fn, text):
    with raises(ShapeError, text):
        fn()


def test_shape_error_is_a_value_error():
    assert issubclass(ShapeError, ValueError) and engine.ShapeError is ShapeError


# ---- dtypes -----------------------------------------------------------------------------------------------
I64, F16, BOOL = engine.int64, engine.float16, engine.bool
DTYPE_CASES = [
    (lambda: t(2, 3) @ t(3, 2, dtype=F16), "matmul(): expected both operands to have the same dtype, got float32 and float16"),
    (lambda: engine.where(t(2), t(2), t(2)), "where(): condition must be a bool tensor, got engine.float32"),
    (lambda: t(2).masked_fill(t(2, dtype=I64), 1), "masked_fill(): mask must be bool, got int64"),
    (lambda: t(2) & t(2), "bitwise_and() is not defined for floating tensors (float32, float32)"),
    (lambda: t(2, dtype=I64) | 1.5, "bitwise_or() is not defined for floating tensors (int64, float)"),
    (lambda: t(2, dtype=I64).mean(), "mean(): input dtype must be floating point, got int64"),
    (lambda: t(2, dtype=I64).var(), "var(): input dtype must be floating point, got int64"),
    (lambda: -t(2, dtype=BOOL), "neg() is not defined for bool tensors"),
    (lambda: t(2, dtype=BOOL).abs(), "abs() is not defined for bool tensors"),
    (lambda: t(3).index_select(0, t(2)), "index_select(): index must be an integer tensor, got engine.float32"),
    (lambda: t(3, 2).gather(0, t(1, 2, dtype=BOOL)), "gather(): index must be an integer tensor, got engine.bool"),
    (lambda: EF.embedding(t(2), t(4, 3)), "embedding(): ids must be integers, got float32"),
    (lambda: EF.softmax(t(2, dtype=I64), 0), "softmax(): expected a floating input, got int64"),
    (lambda: EF.layer_norm(t(2, 3, dtype=I64), (3,)), "layer_norm(): expected a floating input, got int64"),
    (lambda: EF.conv2d(t(1, 1, 3, 3), t(1, 1, 2, 2, dtype=F16)), "conv2d(): input float32 and weight float16 must have the same dtype"),
    (lambda: EF.linear(t(2, 3), t(4, 3, dtype=F16), t(4)), "linear(): input, weight and bias dtypes differ (float32, float16, float32)"),
    (lambda: EF.scaled_dot_product_attention(t(1, 2, 4), t(1, 2, 4, dtype=F16), t(1, 2, 4)), "q, k, v dtypes differ (float32, float16, float32)"),
    (lambda: t(4).view(F16), "view(float16) needs the same element size as float32"),
    (lambda: t(3, dtype=I64).div_(2), "in-place div: result type float32 can't be cast to the tensor's int64"),
    (lambda: t(3, dtype=BOOL).add_(1), "in-place add: result type int64 can't be cast to the tensor's bool"),
    (lambda: t(3, dtype=I64).__iadd__(t(3)), "in-place add: result type float32 can't be cast to the tensor's int64"),
]


@pytest.mark.parametrize("fn,text", DTYPE_CASES, ids=[c[1][:40] for c in DTYPE_CASES])
def test_dtype_errors(fn, text):
    with raises(DTypeError, text):
        fn()


@pytest.mark.parametrize("bad", ["int16", "complex64", np.int16])
def test_unknown_dtype(bad):
    with pytest.raises(TypeError, match=f"{re.escape(repr(bad))}; supported: bool, uint8, int32, int64, float16"):
        engine.zeros(2, dtype=bad, device=DEVICE)


def test_bad_scalar_and_data():
    with raises(TypeError, "expected a Tensor or a Python number, got str"):
        t(2) + "a"
    with raises(TypeError, "cannot build a tensor from ragged or non-numeric data"):
        engine.tensor([[1, 2], [3]], device=DEVICE)
    with raises(ValueError, "masked_fill(): value -1 cannot be converted to uint8 without overflow"):
        t(2, dtype=engine.uint8).masked_fill(t(2, dtype=BOOL), -1)
    with raises(ValueError, "item() needs a tensor with one element, got shape (2,)"):
        t(2).item()
    with raises(ValueError, "the truth value of a tensor with 2 elements is ambiguous"):
        bool(t(2))


# ---- devices ------------------------------------------------------------------------------------------------
@pytest.fixture
def other():
    """A second device: cpu <-> cuda when both work, else a second numpy device 'fake:0' registered
    the documented way (a line in engine.device.BACKENDS)."""
    if DEVICE.type == "cuda":
        yield engine.device.parse("cpu")
        return
    if engine.is_available("cuda"):
        yield engine.device.parse("cuda")
        return
    engine.device.BACKENDS["fake"] = "engine.backends.numpy_backend:NumpyBackend"
    yield engine.device.parse("fake")
    del engine.device.BACKENDS["fake"]
    engine.device._instances.pop(engine.device.parse("cpu").__class__("fake", 0), None)


DEVICE_CASES = [
    ("add", lambda a, b: a + b),
    ("mul reversed", lambda a, b: b * a),
    ("maximum", lambda a, b: engine.maximum(a, b)),
    ("matmul", lambda a, b: a @ b),
    ("cat", lambda a, b: engine.cat([a, b])),
    ("stack", lambda a, b: engine.stack([a, b])),
    ("where", lambda a, b: engine.where(a > 0, a, b)),
    ("where cond", lambda a, b: engine.where(b > 0, a, a)),
    ("clamp", lambda a, b: a.clamp(b, None)),
    ("masked_fill", lambda a, b: a.masked_fill(b > 0, 1.0)),
    ("index", lambda a, b: a[(b > 0)]),
    ("index_select", lambda a, b: a.index_select(0, b.long())),
    ("gather", lambda a, b: a.gather(0, b.long())),
    ("scatter index", lambda a, b: a.scatter(0, b.long(), a)),
    ("scatter src", lambda a, b: a.scatter(0, a.long(), b)),
    ("setitem", lambda a, b: a.__setitem__(0, b[0:1])),
    ("copy_", lambda a, b: a.copy_(b)),
    ("linear", lambda a, b: EF.linear(a.reshape(1, 3), b.reshape(1, 3))),
    ("linear bias", lambda a, b: EF.linear(a.reshape(1, 3), a.reshape(1, 3), b[:1])),
    ("layer_norm", lambda a, b: EF.layer_norm(a, (3,), b)),
    ("conv1d", lambda a, b: EF.conv1d(a.reshape(1, 1, 3), b.reshape(1, 1, 3))),
    ("sdpa", lambda a, b: EF.scaled_dot_product_attention(a.reshape(1, 3), b.reshape(1, 3), a.reshape(1, 3))),
    ("embedding", lambda a, b: EF.embedding(a.long(), b.reshape(3, 1))),
]


@pytest.mark.parametrize("name,fn", DEVICE_CASES, ids=[c[0] for c in DEVICE_CASES])
def test_device_mismatch(name, fn, other):
    a, b = t(3), engine.zeros(3, device=other)
    with pytest.raises(DeviceMismatchError) as ei:
        fn(a, b)
    msg = str(ei.value)
    assert str(DEVICE) in msg and str(other) in msg, msg


def test_zero_dim_cpu_tensor_mixes_with_any_device(other):
    """torch's rule: a 0-dim CPU tensor acts like a scalar with tensors on any device."""
    x = engine.ones(3, device=other) * engine.tensor(2.0, device="cpu")
    assert x.device == other and x.tolist() == [2.0, 2.0, 2.0]


def test_to_moves_between_devices(other):
    x = engine.arange(4, device=DEVICE).to(other)
    assert x.device == other and x.tolist() == [0, 1, 2, 3]
    assert x.to(DEVICE).device == DEVICE


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="cupy is installed: cuda may be available")
def test_cuda_without_cupy():
    assert not engine.is_available("cuda")
    assert [str(d) for d in engine.available_devices()] == ["cpu"]
    for fn in (lambda: engine.zeros(2, device="cuda"), lambda: engine.ones(2).to("cuda"), lambda: engine.randn(2, device="cuda:1"),
               lambda: engine.memory_stats("cuda")):
        with pytest.raises(DeviceUnavailableError) as ei:
            fn()
        msg = str(ei.value)
        assert re.search(r"device cuda:\d is not available", msg), msg
        assert "cupy" in msg and "pip install 'taper[cuda13]'" in msg, msg


def test_unknown_device():
    with raises(ValueError, "unknown device 'tpu'; known: cpu, cuda"):
        engine.zeros(2, device="tpu")
    with raises(ValueError, "bad device index in 'cuda:x'"):
        engine.zeros(2, device="cuda:x")


# ---- indices ------------------------------------------------------------------------------------------------
INDEX_CASES = [
    (lambda: t(4, 5)[4], "index 4 is out of bounds for dimension 0 with size 4 (shape (4, 5))"),
    (lambda: t(4, 5)[0, -6], "index -6 is out of bounds for dimension 1 with size 5 (shape (4, 5))"),
    (lambda: t(4, 5)[0, 0, 0], "too many indices for tensor of dimension 2 (got 3, shape (4, 5))"),
    (lambda: t(4, 5)[..., 0, ...], "an index can only have a single ellipsis"),
    (lambda: t(4, 5)[1.0], "only integers, slices, None, ..., and integer or bool tensors are valid indices (got 1.0)"),
    (lambda: t(4, 5)[[0, 1], 5], "index 5 is out of bounds for dimension 1 with size 5"),
    (lambda: t(4, 5)[[0, 7]], "index 7 is out of bounds for dimension 0 with size 4 (shape (4, 5))"),
    (lambda: t(4, 5)[:, [1, -9]], "index -9 is out of bounds for dimension 1 with size 5 (shape (4, 5))"),
    (lambda: t(4, 5)[engine.tensor([2, 4], device=DEVICE)], "index 4 is out of bounds for dimension 0 with size 4"),
    (lambda: t(4, 5)[engine.ones(5, dtype=BOOL, device=DEVICE)], "boolean mask of shape (5,) does not match shape (4,) at dim 0 of a tensor of shape (4, 5)"),
    (lambda: t(4, 5).__setitem__([9], 1.0), "index 9 is out of bounds for dimension 0 with size 4"),
    (lambda: t(4, 5).select(1, 5), "index 5 is out of bounds for dimension 1 with size 5 (shape (4, 5))"),
    (lambda: t(3).index_select(0, engine.tensor([3], device=DEVICE)), "index 3 is out of bounds for dimension 0 with size 3"),
    (lambda: t(3).index_select(0, engine.tensor([-1], device=DEVICE)), "index -1 is out of bounds for dimension 0 with size 3"),
    (lambda: t(2, 3).gather(1, engine.tensor([[0, 3]], device=DEVICE)), "index 3 is out of bounds for dimension 1 with size 3"),
    (lambda: t(2, 3).scatter(0, engine.tensor([[2]], device=DEVICE), 1.0), "index 2 is out of bounds for dimension 0 with size 2"),
    (lambda: EF.embedding(engine.tensor([0, 6], device=DEVICE), t(6, 2)), "index 6 is out of bounds for dimension 0 with size 6"),
]


@pytest.mark.parametrize("fn,text", INDEX_CASES, ids=[c[1][:40] for c in INDEX_CASES])
def test_index_errors(fn, text):
    with raises(IndexError, text):
        fn()


def test_scalar_index_of_0d():
    with raises(IndexError, "too many indices for tensor of dimension 0"):
        t()[0]
    with raises(TypeError, "len() of a 0-d tensor"):
        len(t())
