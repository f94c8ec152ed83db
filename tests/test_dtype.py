"""The dtype table: engine.promote_types / result_type equal torch's for every supported pair, for
tensor-scalar and zero-dim cases, and the ops really produce those dtypes."""
import itertools

import ml_dtypes
import numpy as np
import pytest
import torch

import engine
from engine import dtype as D
from helpers import ALL, DEVICE, E, TORCH, needs_device, tname

pytestmark = needs_device
PAIRS = list(itertools.product(ALL, ALL))
SCALARS = [True, 3, -2, 2.5]


def et(dt, shape=(2,)):
    return engine.zeros(shape, dtype=E[dt], device=DEVICE)


def tt(dt, shape=(2,)):
    return torch.zeros(shape, dtype=TORCH[dt])


@pytest.mark.parametrize("a,b", PAIRS)
def test_promote_types(a, b):
    assert engine.promote_types(E[a], E[b]).name == tname(torch.promote_types(TORCH[a], TORCH[b]))


def test_promotion_table_is_symmetric_and_complete():
    names = [d.name for d in D.ALL]
    assert set(D.PROMOTION) == {(a, b) for a in names for b in names}
    for a, b in D.PROMOTION:
        assert D.PROMOTION[(a, b)] == D.PROMOTION[(b, a)]


@pytest.mark.parametrize("a,b", PAIRS)
def test_result_type_tensors(a, b):
    for sa, sb in [((2,), (2,)), ((2,), ()), ((), (2,)), ((), ())]:
        want = tname(torch.result_type(tt(a, sa), tt(b, sb)))
        assert engine.result_type(et(a, sa), et(b, sb)).name == want, (a, sa, b, sb)


@pytest.mark.parametrize("a", ALL)
@pytest.mark.parametrize("s", SCALARS, ids=repr)
def test_result_type_scalar(a, s):
    for shape in [(2,), ()]:
        assert engine.result_type(et(a, shape), s).name == tname(torch.result_type(tt(a, shape), s)), shape
        assert engine.result_type(s, et(a, shape)).name == tname(torch.result_type(s, tt(a, shape))), shape


@pytest.mark.parametrize("dim,zero,s,want", [("uint8", "int32", 2, "uint8"), ("uint8", "int32", 2.5, "float32"),
                                             ("bool", "uint8", 2, "uint8"), ("int64", "float16", 2.5, "float16"),
                                             ("bfloat16", "float64", 2, "bfloat16"), ("int32", "bool", True, "int32"),
                                             ("bool", "bool", 2.5, "float32")])
def test_result_type_three(dim, zero, s, want):
    """dim tensor, zero-dim tensor and scalar at once; torch.result_type takes two operands, so the
    expected value is also checked against torch's own op on the three."""
    assert engine.result_type(et(dim), et(zero, ()), s).name == want
    assert tname((tt(dim) + tt(zero, ()) + s).dtype) == want


@pytest.mark.parametrize("a,b", [p for p in PAIRS if "bool" not in p or p == ("bool", "bool")])
def test_binary_ops_follow_the_table(a, b):
    """add with a dim tensor, a zero-dim tensor and both orders, as real ops (not only the table)."""
    for sa, sb in [((2,), (2,)), ((2,), ()), ((), (2,))]:
        assert (et(a, sa) + et(b, sb)).dtype.name == tname((tt(a, sa) + tt(b, sb)).dtype), (sa, sb)
        assert engine.maximum(et(a, sa), et(b, sb)).dtype.name == tname(torch.maximum(tt(a, sa), tt(b, sb)).dtype)
        assert (et(a, sa) / et(b, sb)).dtype.name == tname((tt(a, sa) / tt(b, sb)).dtype)
        assert (et(a, sa) == et(b, sb)).dtype is engine.bool


@pytest.mark.parametrize("a", ALL)
@pytest.mark.parametrize("s", SCALARS, ids=repr)
def test_scalar_ops_follow_the_table(a, s):
    x, y = et(a), tt(a)
    assert (x * s).dtype.name == tname((y * s).dtype)
    assert (s * x).dtype.name == tname((s * y).dtype)
    assert (x / s if s else x).dtype.name == tname((y / s if s else y).dtype)


@pytest.mark.parametrize("name,want", [("float16", engine.float16), ("torch.bfloat16", engine.bfloat16), ("half", engine.float16),
                                       ("fp32", engine.float32), ("long", engine.int64), ("bool", engine.bool),
                                       (np.float64, engine.float64), (np.dtype("int32"), engine.int32),
                                       (ml_dtypes.bfloat16, engine.bfloat16), (bool, engine.bool), (int, engine.int64),
                                       (float, engine.float32), (engine.uint8, engine.uint8)])
def test_dtype_get(name, want):
    assert D.get(name) is want


@pytest.mark.parametrize("bad", ["int16", "complex64", np.int16, "torch.float8"])
def test_dtype_get_unknown(bad):
    with pytest.raises(TypeError, match="supported: bool, uint8, int32, int64, float16, bfloat16, float32, float64"):
        D.get(bad)


@pytest.mark.parametrize("dt", ALL)
def test_dtype_metadata(dt):
    e, t = E[dt], TORCH[dt]
    assert e.itemsize == t.itemsize
    assert e.is_floating_point == t.is_floating_point
    assert repr(e) == f"engine.{dt}"
    assert engine.zeros(1, dtype=e, device=DEVICE).element_size() == torch.zeros(1, dtype=t).element_size()


def test_aliases():
    assert engine.half is engine.float16 and engine.double is engine.float64 and engine.long is engine.int64
    assert not hasattr(engine, "int16")
