"""Interop: numpy in and out, zero-copy DLPack both ways with torch (strided views included)."""
import ml_dtypes
import numpy as np
import pytest
import torch

import engine
from helpers import DEVICE, NP, TORCH, cpu_only, needs_device

pytestmark = needs_device
DL_DTYPES = ("float32", "float16", "float64", "int64", "int32", "uint8", "bool")  # numpy has no DLPack bfloat16


def ramp(shape, dt="float32"):
    return (np.arange(int(np.prod(shape))) % 7).reshape(shape).astype(NP[dt])


# ---- numpy ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dt", list(NP))
def test_numpy_round_trip(dt):
    a = ramp((3, 4), dt)
    t = engine.tensor(a, device=DEVICE)
    assert t.dtype.name == dt and t.shape == (3, 4) and t.device == DEVICE
    out = t.numpy()
    assert out.dtype == a.dtype and np.array_equal(out, a)
    assert t.tolist() == a.astype(np.float32 if dt == "bfloat16" else a.dtype).tolist()


def test_tensor_copies():
    a = ramp((2, 3))
    t = engine.tensor(a, device=DEVICE)
    a[0, 0] = 100
    assert t.numpy()[0, 0] == 0


@cpu_only
@pytest.mark.parametrize("view", ["contiguous", "T", "step", "offset"])
def test_from_numpy_shares_memory(view):
    base = ramp((4, 6))
    a = {"contiguous": base, "T": base.T, "step": base[:, ::2], "offset": base[1:, 2:]}[view]
    t = engine.from_numpy(a)
    assert t.shape == a.shape and t.stride() == tuple(s // a.itemsize for s in a.strides)
    assert np.shares_memory(t.numpy(), base)
    base[...] = -1
    assert np.all(t.numpy() == -1)
    t.fill_(5.0)
    assert np.all(a == 5.0)
    assert np.array_equal(t.contiguous().numpy(), a) and np.array_equal(t.T.contiguous().numpy(), a.T)


@cpu_only
def test_numpy_is_a_view():
    t = engine.zeros(2, 3)
    v = t.numpy()
    v[1, 2] = 9
    assert t.tolist()[1][2] == 9.0
    assert np.shares_memory(t.T.numpy(), v) and np.shares_memory(t[:, 1].numpy(), v)


def test_from_numpy_bfloat16():
    a = ramp((2, 2), "bfloat16")
    t = engine.from_numpy(a, device=DEVICE)
    assert t.dtype is engine.bfloat16 and t.numpy().dtype == ml_dtypes.bfloat16 and np.array_equal(t.numpy(), a)


def test_from_numpy_rejects_unsupported():
    with pytest.raises(TypeError, match="int16"):
        engine.from_numpy(np.zeros(3, np.int16))
    with pytest.raises(ValueError, match="not whole, non-negative elements"):
        engine.from_numpy(np.arange(4.0)[::-1])


# ---- DLPack with torch (CPU) ----------------------------------------------------------------------------------
VIEWS = {"contiguous": lambda x: x, "T": lambda x: x.T, "step": lambda x: x[:, ::2], "offset": lambda x: x[1:, 2:],
         "offset_T": lambda x: x[1:, 2:].T, "row": lambda x: x[2], "expand": lambda x: x[:1].expand(3, 6), "empty": lambda x: x[:0]}


@cpu_only
@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("dt", DL_DTYPES)
def test_torch_from_dlpack_shares_memory(dt, view):
    base = engine.tensor(ramp((4, 6), dt))
    e = VIEWS[view](base)
    t = torch.from_dlpack(e)
    assert tuple(t.shape) == e.shape and t.dtype == TORCH[dt]
    assert np.array_equal(t.numpy(), e.numpy())
    if e.numel():
        assert t.data_ptr() == e.data_ptr() and t.stride() == e.stride()
        base.fill_(1)
        assert bool((t == 1).all()), "torch's tensor must see writes to the engine's memory"


@cpu_only
@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("dt", DL_DTYPES)
def test_engine_from_dlpack_shares_memory(dt, view):
    base = torch.from_numpy(ramp((4, 6), dt))
    t = VIEWS[view](base)
    e = engine.from_dlpack(t)
    assert e.shape == tuple(t.shape) and e.dtype.name == dt and e.device.type == "cpu"
    assert np.array_equal(e.numpy(), t.numpy())
    if t.numel():
        assert e.data_ptr() == t.data_ptr() and e.stride() == t.stride()
        base.fill_(1)
        assert np.all(e.numpy() == 1), "the engine's tensor must see writes to torch's memory"
        # engine views and ops on the imported tensor work like on any other
        assert np.array_equal(e.T.contiguous().numpy(), t.numpy().T) and np.array_equal((e + e).numpy(), (t + t).numpy())


@cpu_only
def test_dlpack_keeps_producer_alive():
    t = torch.arange(6.0).reshape(2, 3)[:, 1:]
    e = engine.from_dlpack(t)
    del t
    import gc
    gc.collect()
    assert e.tolist() == [[1.0, 2.0], [4.0, 5.0]]
    x = engine.arange(6.0).reshape(2, 3).T
    tt = torch.from_dlpack(x)
    del x
    gc.collect()
    assert tt.tolist() == [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]


@cpu_only
def test_dlpack_round_trip_engine_torch_engine():
    e = engine.arange(12.0).reshape(3, 4)[:, 1::2]
    back = engine.from_dlpack(torch.from_dlpack(e))
    assert back.data_ptr() == e.data_ptr() and back.stride() == e.stride() and back.tolist() == e.tolist()


@cpu_only  # numpy cannot carry bfloat16 through DLPack; cupy can, so on CUDA the export works
def test_bfloat16_dlpack_is_refused_clearly():
    with pytest.raises(TypeError, match=r"cannot export a bfloat16 tensor through DLPack.*convert with \.float\(\) first"):
        torch.from_dlpack(engine.ones(3, dtype=engine.bfloat16))
    with pytest.raises(TypeError, match=r"from_dlpack: cannot import torch.bfloat16 on cpu.*t\.float\(\)"):
        engine.from_dlpack(torch.ones(3, dtype=torch.bfloat16))


@cpu_only
def test_dlpack_device():
    assert engine.zeros(2).__dlpack_device__()[0] == 1  # kDLCPU


# ---- CUDA (GPU machines only) ---------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA build of torch")
@pytest.mark.parametrize("view", ["contiguous", "T", "step"])
def test_cuda_dlpack_both_ways(view):
    base = engine.tensor(ramp((4, 6)), device=DEVICE)
    e = VIEWS[view](base)
    t = torch.from_dlpack(e)
    assert t.is_cuda and t.data_ptr() == e.data_ptr() and t.stride() == e.stride()
    back = engine.from_dlpack(VIEWS[view](torch.arange(24.0, device="cuda").reshape(4, 6)))
    assert back.device.type == "cuda" and back.numpy().tolist() == VIEWS[view](torch.arange(24.0).reshape(4, 6)).tolist()


@pytest.mark.cuda
def test_cuda_host_round_trip():
    a = ramp((3, 5))
    t = engine.tensor(a, device=DEVICE)
    assert t.is_cuda and np.array_equal(t.numpy(), a) and np.array_equal(t.cpu().numpy(), a)
    assert engine.from_numpy(a, device=DEVICE).is_cuda
