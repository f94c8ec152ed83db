"""The eager dispatch fast paths (issue 10: an eager op costs little more than the raw array call) give
what the general paths give: dtypes as singletons, shared contiguous layouts, op outputs whose flat
storage is made on demand, one-array pooled outputs, the same-shape binary path, numpy's error state
set without np.errstate, and the reusable wrappers of the uncaptured planned step. Speed itself is
measured by suites/bench_ops.py's Dispatch (python -m bench.dispatch), never asserted here."""
from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import pytest

import engine
from engine import dtype as D
from engine import layout as L
from engine.capture import Captured
from engine.capture_plan import _is_array
from engine.storage import _Lease
from helpers import DEVICE

FLOATS = [engine.float16, engine.bfloat16, engine.float32, engine.float64]


def _np(t):
    return t.float().numpy() if t.dtype.is_reduced else t.numpy()


# ---- dtypes ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dt", D.ALL, ids=lambda d: d.name)
def test_dtype_is_a_singleton_through_copy_and_pickle(dt):
    assert copy.copy(dt) is dt and copy.deepcopy(dt) is dt and pickle.loads(pickle.dumps(dt)) is dt
    assert {dt: 1}[D.get(dt.name)] == 1
    assert dt.itemsize == dt.np_dtype.itemsize and dt.is_floating_point == (dt.category == 2)
    assert dt.is_reduced == (dt.name in ("float16", "bfloat16"))
    assert D.compute_dtype(dt) == (np.dtype(np.float32) if dt.is_reduced else dt.np_dtype)


def test_promote_types_by_object_equals_the_table():
    for a in D.ALL:
        for b in D.ALL:
            want = D._BY_NAME[D.PROMOTION[(a.name, b.name)]]
            assert D.promote_types(a, b) is want and D.promote_types(a.name, b.np_dtype) is want, (a, b)


@pytest.mark.parametrize("dt", [D.bool_, engine.uint8, engine.int32, engine.int64] + FLOATS, ids=lambda d: d.name)
def test_result_type_fast_cases_equal_the_general_rule(dt):
    t, zero = engine.zeros(3, dtype=dt), engine.zeros((), dtype=dt)
    assert D.result_type(t, t) is dt
    assert D.result_type(t, 1.5) is (dt if dt.is_floating_point else engine.float32)
    assert D.result_type(t, 2) is (dt if dt.category >= 1 else engine.int64)
    assert D.result_type(zero, 1.5) is (dt if dt.is_floating_point else engine.float32)
    assert D.result_type(zero, t) is dt and D.result_type(engine.zeros(3, dtype=engine.int64), zero) is (
        dt if dt.category == 2 else engine.int64)


# ---- layouts ----------------------------------------------------------------------------------------------------
def test_contiguous_layouts_are_shared_per_shape():
    a = L.Layout.contiguous((2, 3, 4))
    assert L.Layout.contiguous((2, 3, 4)) is a and L.Layout.contiguous([2, 3, 4]) == a
    assert L.Layout.contiguous((np.int64(2), 3, 4)) == a and all(type(s) is int for s in a.shape)
    assert a.is_contiguous() and a.numel == 24 and a.strides == (12, 4, 1)
    off = L.Layout.contiguous((2, 3, 4), 5)
    assert off.offset == 5 and off is not a and L.Layout.contiguous((2, 3, 4)).offset == 0
    with pytest.raises(L.ShapeError, match="negative size"):
        L.Layout.contiguous((2, -1))
    assert not L.Layout((2, 3), (1, 2)).is_contiguous() and L.Layout((1, 3), (7, 1)).is_contiguous()


def test_contiguous_layout_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(L, "_CONTIGUOUS", {})
    monkeypatch.setattr(L, "_CONTIGUOUS_MAX", 8)
    for n in range(1, 30):
        assert L.Layout.contiguous((n, 2)).shape == (n, 2)
        assert len(L._CONTIGUOUS) <= 8


def test_reshape_of_a_known_shape_still_checks_the_element_count():
    x = engine.arange(24.0)
    x.reshape(2, 3, 4)  # the shape is now known to the cache
    assert all(type(s) is int for s in L.infer_shape((np.int64(2), 3, 4), 24))
    with pytest.raises(L.ShapeError, match=r"shape \(2, 3, 4\) is invalid for input of size 12"):
        engine.arange(12.0).reshape(2, 3, 4)
    assert L.broadcast_shapes((2, 3), (2, 3)) == (2, 3) and L.broadcast_shapes((2, 1), (2, 3)) == (2, 3)
    with pytest.raises(L.ShapeError, match="do not broadcast"):
        L.broadcast_shapes((2, 3), (3, 2))


# ---- op outputs: storage made on demand, one pooled array --------------------------------------------------------
def test_views_of_an_op_output_share_its_memory():
    t = engine.arange(12.0, device=DEVICE) * 1.0  # an op output: its flat storage is not made yet
    v = t.reshape(3, 4)
    s = t.view(2, 6).transpose(0, 1)  # a strided view: the flat storage is made here
    v[1, 2] = 100.0
    assert t[6].item() == 100.0 and s[0, 1].item() == 100.0
    t[0] = -1.0
    assert v[0, 0].item() == -1.0 and s[0, 0].item() == -1.0
    assert t.storage.data.shape == (12,)
    assert v.data_ptr() == t.data_ptr() and t[5:].data_ptr() == t.data_ptr() + 5 * 4


def test_pooled_output_is_one_array_over_its_lease():
    b = engine.backend("cpu")
    for dt in D.ALL:
        a = b.empty((2, 3), dt)
        assert a.shape == (2, 3) and a.dtype == dt.np_dtype and a.flags.c_contiguous
        base = a.base
        while not isinstance(base, _Lease):  # bfloat16: the bits' array, then the lease
            base = base.base
        assert base.nbytes == 512 and base.requested == 6 * dt.itemsize


def test_pool_stats_stay_exact_through_the_fast_paths():
    pool = engine.backend("cpu").pool
    x, y = engine.randn(1000), engine.randn(1000)
    before = pool.stats()
    outs = [x + y, x * y, x - 1.5, x.reshape(10, 100) * 2.0]
    mid = pool.stats()
    assert mid["allocated_bytes"] - before["allocated_bytes"] == 4 * 4096
    assert mid["requested_bytes"] - before["requested_bytes"] == 4 * 4000
    del outs
    after = pool.stats()
    assert after["allocated_bytes"] == before["allocated_bytes"]
    assert after["requested_bytes"] == before["requested_bytes"]


# ---- the same-shape binary path --------------------------------------------------------------------------------
@pytest.mark.parametrize("dt", [D.bool_, engine.uint8, engine.int32, engine.int64] + FLOATS, ids=lambda d: d.name)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "maximum", "floor_divide", "remainder", "pow", "eq",
                                "bitwise_and"])
def test_same_shape_binary_equals_the_broadcasting_path(op, dt):
    rng = np.random.default_rng(0)
    a = engine.tensor(rng.integers(1, 5, (4, 5)), dtype=dt, device=DEVICE)
    b = engine.tensor(rng.integers(1, 5, (4, 5)), dtype=dt, device=DEVICE)

    def run(x, y):
        try:
            return getattr(x, op)(y)
        except Exception as e:  # the same refusal on both paths (bool subtraction, bitwise floats)
            return type(e)
    fast = run(a, b)
    general = run(a.unsqueeze(0), b)  # (1, 4, 5) with (4, 5): broadcast, the general path
    if isinstance(fast, type):
        assert fast is general
        return
    assert fast.dtype is general.dtype and fast.shape == (4, 5) and general.shape == (1, 4, 5)
    np.testing.assert_array_equal(_np(fast), _np(general)[0])


@pytest.mark.parametrize("dt", FLOATS, ids=lambda d: d.name)
def test_float_scalar_binary_keeps_dtype_and_values(dt):
    x = engine.tensor([[0.5, -2.0, 3.0]], dtype=dt, device=DEVICE)
    for y, want in ((x * 2.0, [1.0, -4.0, 6.0]), (x + 0.25, [0.75, -1.75, 3.25]), (x - 1.5, [-1.0, -3.5, 1.5])):
        assert y.dtype is dt
        np.testing.assert_array_equal(_np(y)[0], np.array(want, np.float32))


def test_float_errors_stay_quiet_in_ops_and_loud_outside():
    big = engine.full((3,), 3e38)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isinf((big * big).numpy()).all() and np.isinf((big + big).numpy()).all()
        assert np.isnan(engine.tensor([-1.0]).sqrt().numpy()).all()
        with pytest.raises(RuntimeWarning, match="overflow"):
            np.float32(3e38) * np.float32(3e38)  # numpy's own state is as it was


# ---- the uncaptured planned step --------------------------------------------------------------------------------
def test_planned_step_reuses_its_wrappers_and_leaves_the_backend_clean():
    w = engine.randn(8, 8, device=DEVICE)

    def fn(x):
        return engine.functional.linear(engine.functional.rms_norm(x, (8,), eps=1e-6), w) + x

    step = Captured(fn, graphs=False)
    xs = [engine.randn(2, 8, device=DEVICE, generator=engine.Generator().manual_seed(i)) for i in range(6)]
    outs = [_np(step(x)).copy() for x in xs]
    for x, o in zip(xs, outs):
        np.testing.assert_allclose(o, _np(fn(x)), rtol=1e-6, atol=1e-6)
    assert step._patched is not None and step._patched.on_call.live == {}
    assert not any(n in vars(step.backend) for n in step._patched.wrappers)  # the backend's own methods again


def test_is_array_answers_by_type():
    assert _is_array(np.zeros(2)) and _is_array(np.float32(1.0))  # numpy scalars count, as before
    assert not any(_is_array(v) for v in (1, 1.0, True, None, "x", (1,), engine.float16))
