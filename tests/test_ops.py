"""Parity rows against torch (CPU): creation, elementwise, reductions, linear algebra.

One row per op; the parametrisation sweeps dtypes (at one shape), shapes (scalar, 1-d, 3-d, size-0
and size-1 dims) and non-contiguous views (transposed, stepped, expanded) through `cases()`.
Shape/indexing ops live in test_ops_shape.py, torch.nn.functional ops in test_ops_nn.py.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import engine
from helpers import (ALL, DEVICE, FLOATS, INTS, MAIN, NUMERIC, VIEWS, B, E, TORCH, U, _id, bcases, cases, compare, compare_meta,
                     helper_test_op, needs_device, scases)

pytestmark = needs_device


# ---- creation ---------------------------------------------------------------------------------------------
def create(name, *args, **kw):
    """Call torch.<name> and engine.<name> with the same arguments (dtype given by name)."""
    dt = kw.pop("dtype", None)
    t = getattr(torch, name)(*args, **kw, **({"dtype": TORCH[dt]} if dt else {}))
    e = getattr(engine, name)(*args, **kw, **({"dtype": E[dt]} if dt else {}), device=DEVICE)
    compare(e, t)


DATA = [1.5, [1, 2, 3], [[True, False]], [[1.0, 2.0], [3.0, 4.5]], [], 7, [[1, 2], [3, 4]], True, [1, 2.5],
        np.int32(3), np.float64(2.5), np.array([1, 2], np.uint8), np.array([[0.5]], np.float16), np.bool_(True)]


@pytest.mark.parametrize("data", DATA, ids=repr)
def test_tensor(data): create("tensor", data)
@pytest.mark.parametrize("dt", ALL)
def test_tensor_dtype(dt): create("tensor", [[0, 1, 2], [3, 1, 0]], dtype=dt)
@pytest.mark.parametrize("dt", [None] + list(ALL))
@pytest.mark.parametrize("size", [(2, 3), (0,), (), (1, 4, 1)], ids=_id)
def test_zeros(size, dt): create("zeros", size, dtype=dt)
@pytest.mark.parametrize("dt", [None] + list(ALL))
@pytest.mark.parametrize("size", [(2, 3), (0,), ()], ids=_id)
def test_ones(size, dt): create("ones", size, dtype=dt)
@pytest.mark.parametrize("fill,dt", [(1.5, None), (7, None), (True, None), (-2, "float16"), (3.25, "bfloat16"),
                                     (200, "uint8"), (1, "bool"), (2.5, "float64"), (-5, "int32")])
def test_full(fill, dt): create("full", (2, 3), fill, dtype=dt)
@pytest.mark.parametrize("dt", ALL)
def test_empty(dt): compare_meta(engine.empty(2, 0, 3, dtype=E[dt], device=DEVICE), torch.empty(2, 0, 3, dtype=TORCH[dt])); compare_meta(engine.empty((2, 3), dtype=E[dt], device=DEVICE), torch.empty((2, 3), dtype=TORCH[dt]))  # noqa: E702
@pytest.mark.parametrize("args,dt", [((5,), None), ((1, 10, 2), None), ((0.0, 1.0, 0.1), None), ((-3, 3), None),
                                     ((10, 0, -2), None), ((0, 5), "float32"), ((0.5, 4), None), ((0, 6, 1.5), "float16"),
                                     ((0, 7), "int32"), ((2, 9, 3), "uint8"), ((0, 3, 0.25), "bfloat16"), ((0,), None)])
def test_arange(args, dt): create("arange", *args, dtype=dt)
@pytest.mark.parametrize("args,dt", [((0, 1, 5), None), ((-1, 1, 1), None), ((0, 10, 0), None), ((3, -2, 7), "float64"),
                                     ((0, 10, 4), "int64"), ((0, 1, 9), "float16"), ((0, 1, 9), "bfloat16")])
def test_linspace(args, dt): create("linspace", *args, dtype=dt)
@pytest.mark.parametrize("args,dt", [((3,), None), ((3, 4), None), ((0,), None), ((4, 2), "int64"), ((2,), "bool"),
                                     ((3,), "float16")])
def test_eye(args, dt): create("eye", *args, dtype=dt)


LIKE = [("zeros_like", ()), ("ones_like", ()), ("full_like", (2.5,)), ("full_like", (3,))]


@pytest.mark.parametrize("name,args", LIKE, ids=lambda v: str(v))
@pytest.mark.parametrize("dt", ALL)
def test_like(name, args, dt): helper_test_op([(2, 3)], lambda x: getattr(torch, name)(x, *args), lambda x: getattr(engine, name)(x, *args), dt)
@pytest.mark.parametrize("name", ["zeros_like", "ones_like"])
@pytest.mark.parametrize("dt", ["float16", "int32", "bool"])
def test_like_dtype(name, dt): helper_test_op([(2, 3)], lambda x: getattr(torch, name)(x, dtype=TORCH[dt]), lambda x: getattr(engine, name)(x, dtype=E[dt]))
@pytest.mark.parametrize("dt", ALL)
def test_empty_like(dt): helper_test_op([(2, 3)], lambda x: torch.empty_like(x).zero_(), lambda x: engine.empty_like(x).zero_(), dt)


# random numbers: engine and torch use different generators, so these are properties, not parity rows
@pytest.mark.nonparity
@pytest.mark.parametrize("fn", ["rand", "randn"])
@pytest.mark.parametrize("dt", FLOATS)
def test_random_seeded(fn, dt):
    make = lambda seed: getattr(engine, fn)(3, 4, generator=engine.Generator(seed), dtype=E[dt], device=DEVICE)  # noqa: E731
    a, b, c = make(5), make(5), make(6)
    assert a.shape == (3, 4) and a.dtype is E[dt] and a.device == DEVICE
    assert np.array_equal(np.asarray(a.float().numpy()), np.asarray(b.float().numpy()))
    assert not np.array_equal(np.asarray(a.float().numpy()), np.asarray(c.float().numpy()))
    engine.manual_seed(11)
    x = getattr(engine, fn)((2, 2), device=DEVICE)
    engine.manual_seed(11)
    assert np.array_equal(x.numpy(), getattr(engine, fn)((2, 2), device=DEVICE).numpy())
    like = getattr(engine, fn + "_like")(a)
    assert like.shape == a.shape and like.dtype is a.dtype


@pytest.mark.nonparity
def test_random_moments():
    g = engine.Generator(0)
    n = engine.randn(200, 100, generator=g, device=DEVICE).numpy()
    assert abs(n.mean()) < 0.03 and abs(n.std() - 1) < 0.03
    u = engine.rand(200, 100, generator=g, device=DEVICE).numpy()
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
    r = engine.randint(0, 5, (1000,), generator=g, device=DEVICE)
    assert r.dtype is engine.int64 and set(np.unique(r.numpy())) == {0, 1, 2, 3, 4}
    with pytest.raises(TypeError, match="floating"):
        engine.randn(2, dtype=engine.int64, device=DEVICE)


# ---- elementwise: unary ------------------------------------------------------------------------------------
@pytest.mark.parametrize(U, cases(NUMERIC))
def test_neg(dt, shape, view): helper_test_op([shape], torch.neg, engine.neg, dt, noncontig=view)
@pytest.mark.parametrize(U, cases(NUMERIC))
def test_abs(dt, shape, view): helper_test_op([shape], torch.abs, engine.abs, dt, noncontig=view)
@pytest.mark.parametrize(U, cases(NUMERIC + ("bool",)))
def test_exp(dt, shape, view): helper_test_op([shape], torch.exp, engine.exp, dt, noncontig=view)
@pytest.mark.parametrize(U, cases(NUMERIC))
def test_log(dt, shape, view): helper_test_op([shape], torch.log, engine.log, dt, low=0.01, high=5, noncontig=view)
@pytest.mark.parametrize(U, cases(FLOATS, views=()))
def test_log_negative(dt, shape, view): helper_test_op([shape], torch.log, engine.log, dt, low=-2, high=2)
@pytest.mark.parametrize(U, cases(NUMERIC))
def test_sqrt(dt, shape, view): helper_test_op([shape], torch.sqrt, engine.sqrt, dt, low=0, high=5, noncontig=view)
@pytest.mark.parametrize(U, cases(NUMERIC))
def test_rsqrt(dt, shape, view): helper_test_op([shape], torch.rsqrt, engine.rsqrt, dt, low=0.05, high=5, noncontig=view)
@pytest.mark.parametrize(U, cases(NUMERIC))
def test_sin(dt, shape, view): helper_test_op([shape], torch.sin, engine.sin, dt, low=-4, high=4, noncontig=view)
@pytest.mark.parametrize(U, cases(NUMERIC))
def test_cos(dt, shape, view): helper_test_op([shape], torch.cos, engine.cos, dt, low=-4, high=4, noncontig=view)
@pytest.mark.parametrize(U, cases(NUMERIC))
def test_tanh(dt, shape, view): helper_test_op([shape], torch.tanh, engine.tanh, dt, low=-4, high=4, noncontig=view)
@pytest.mark.parametrize(U, cases(NUMERIC))
def test_sigmoid(dt, shape, view): helper_test_op([shape], torch.sigmoid, engine.sigmoid, dt, low=-6, high=6, noncontig=view)
@pytest.mark.parametrize(U, cases(NUMERIC[:-1]))  # torch: relu of uint8 is fine, of bool an error
def test_relu(dt, shape, view): helper_test_op([shape], torch.relu, engine.relu, dt, noncontig=view)
@pytest.mark.parametrize(U, cases(FLOATS))
def test_gelu(dt, shape, view): helper_test_op([shape], F.gelu, engine.functional.gelu, dt, low=-4, high=4, noncontig=view)
@pytest.mark.parametrize(U, cases(FLOATS))
def test_gelu_tanh(dt, shape, view): helper_test_op([shape], lambda x: F.gelu(x, approximate="tanh"), lambda x: engine.functional.gelu(x, approximate="tanh"), dt, low=-4, high=4, noncontig=view)
@pytest.mark.parametrize(U, cases(FLOATS))
def test_silu(dt, shape, view): helper_test_op([shape], F.silu, engine.functional.silu, dt, low=-6, high=6, noncontig=view)
@pytest.mark.parametrize(U, cases(NUMERIC))
def test_erf(dt, shape, view): helper_test_op([shape], torch.erf, engine.erf, dt, low=-4, high=4, noncontig=view)
def test_numpy_erf_f64_against_math_erf():  # the numpy backend's fitted erf over the line (cupy uses its own)
    import math
    from engine.backends.numpy_special import _erf_f64
    xs = np.concatenate([np.linspace(-8, 8, 160001), [0.0, -0.0, 1e-300, 5e-324, 1.0, 2.0, 3.5, 6.0, 40.0, np.inf, -np.inf]])
    ref = np.array([math.erf(v) for v in xs])
    got = _erf_f64(xs)
    assert (np.abs(got - ref) <= 4e-15 * np.abs(ref)).all() and np.signbit(_erf_f64(np.array([-0.0])))[0]
    assert np.isnan(_erf_f64(np.array([np.nan]))).all()
def test_numpy_erf_f32_within_one_ulp():  # float32's rational erf (and the GELU built on it) against math.erf
    import math
    from engine.backends.numpy_special import _erf_f32
    xs = np.concatenate([np.linspace(-6, 6, 240001), np.linspace(-1e-3, 1e-3, 20001), [0.0, -0.0, 1e-30, 1e-45, 4.0,
                         3.9999, 4.0001, 1e30, np.inf, -np.inf, -5e-38]]).astype(np.float32)
    ref = np.array([math.erf(float(v)) for v in xs]).astype(np.float32)  # correctly rounded
    got = _erf_f32(xs)
    assert got.dtype == np.float32 and (np.abs(got.astype(np.float64) - ref) <= np.spacing(np.abs(ref))).all()
    assert np.signbit(_erf_f32(np.array([-0.0], np.float32)))[0] and np.isnan(_erf_f32(np.array([1, np.nan], np.float32))[1])
def test_numpy_gelu_f32_against_math_erf():  # float32's GELU fit against the exact GELU in float64, and its edges
    import math
    from engine.backends.numpy_special import _gelu_f32
    xs = np.concatenate([np.linspace(-12, 12, 480001), np.linspace(-1e-3, 1e-3, 20001), np.arange(1, 2001, dtype=np.int32).view(np.float32), [0.0, -0.0, 1e-30, -1e-45, 5.5, -5.5, 5.5001, -5.5001, 1e4, -1e4]]).astype(np.float32)
    g, x64 = _gelu_f32(xs), xs.astype(np.float64)
    want = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x64])
    assert g.dtype == np.float32 and np.allclose(g, want, rtol=1e-6, atol=1e-6)
    big = _gelu_f32(np.array([1e30, -1e30, np.inf, -np.inf, np.nan, -0.0], np.float32))
    assert big[0] == 1e30 and big[1] == 0 and big[2] == np.inf and np.isnan(big[3:5]).all() and np.signbit(big[5])
@pytest.mark.parametrize(U, cases(NUMERIC + ("bool",)))
def test_square(dt, shape, view): helper_test_op([shape], torch.square, engine.square, dt, noncontig=view)
@pytest.mark.parametrize(U, cases(NUMERIC, views=()))
def test_floor_ceil_round(dt, shape, view): helper_test_op([shape], lambda x: (x.floor(), x.ceil(), x.round()), dtypes=dt, low=-4, high=4)
@pytest.mark.parametrize(U, cases(NUMERIC, views=()))
def test_sign(dt, shape, view): helper_test_op([shape], torch.sign, engine.sign, dt)
@pytest.mark.parametrize(U, cases(FLOATS, views=()))
def test_reciprocal_log2_log1p_expm1(dt, shape, view): helper_test_op([shape], lambda x: (x.reciprocal(), x.log2(), x.log1p(), x.expm1()), dtypes=dt, low=0.1, high=3)
@pytest.mark.parametrize(U, cases(FLOATS, views=()))
def test_isnan_isinf_isfinite(dt, shape, view): helper_test_op([shape], lambda x: ((x / 0).isnan(), (x / 0).isinf(), (x / 0).isfinite(), x.isfinite()), dtypes=dt, low=-1, high=1)


# ---- elementwise: binary ---------------------------------------------------------------------------------
@pytest.mark.parametrize(B, bcases())
def test_add(dts, shapes, view): helper_test_op(shapes, torch.add, engine.add, dts, noncontig=view)
@pytest.mark.parametrize(B, bcases(NUMERIC))  # torch refuses bool - bool
def test_sub(dts, shapes, view): helper_test_op(shapes, torch.sub, engine.sub, dts, noncontig=view)
@pytest.mark.parametrize(B, bcases())
def test_mul(dts, shapes, view): helper_test_op(shapes, torch.mul, engine.mul, dts, noncontig=view)
@pytest.mark.parametrize(B, bcases())
def test_div(dts, shapes, view): helper_test_op(shapes, torch.div, engine.div, dts, low=[-4, 0.5], high=[4, 3], noncontig=view)
@pytest.mark.parametrize(B, bcases(NUMERIC))
def test_pow(dts, shapes, view): helper_test_op(shapes, torch.pow, engine.pow, dts, low=[0.5, 0], high=[3, 3], noncontig=view)
@pytest.mark.parametrize(B, bcases())
def test_maximum(dts, shapes, view): helper_test_op(shapes, torch.maximum, engine.maximum, dts, noncontig=view)
@pytest.mark.parametrize(B, bcases())
def test_minimum(dts, shapes, view): helper_test_op(shapes, torch.minimum, engine.minimum, dts, noncontig=view)
@pytest.mark.parametrize(B, bcases(NUMERIC))
def test_floor_divide_remainder(dts, shapes, view): helper_test_op(shapes, lambda a, b: (a // b, a % b), dtypes=dts, low=[-6, 1], high=[6, 4], noncontig=view)
@pytest.mark.parametrize("op", ["eq", "ne", "lt", "le", "gt", "ge"])
@pytest.mark.parametrize(B, bcases())
def test_compare(op, dts, shapes, view): helper_test_op(shapes, getattr(torch, op), getattr(engine, op), dts, low=-2, high=2, noncontig=view)
@pytest.mark.parametrize("op", ["logical_and", "logical_or", "logical_xor"])
@pytest.mark.parametrize(B, bcases())
def test_logical(op, dts, shapes, view): helper_test_op(shapes, getattr(torch, op), getattr(engine, op), dts, low=-1, high=2, noncontig=view)
@pytest.mark.parametrize(U, cases())
def test_logical_not(dt, shape, view): helper_test_op([shape], torch.logical_not, engine.logical_not, dt, low=-1, high=2, noncontig=view)
@pytest.mark.parametrize("op", ["__and__", "__or__", "__xor__"])
@pytest.mark.parametrize(B, bcases(INTS + ("bool",), mixed=False))
def test_bitwise(op, dts, shapes, view): helper_test_op(shapes, lambda a, b: getattr(a, op)(b), dtypes=dts, low=-5, high=9, noncontig=view)
@pytest.mark.parametrize(U, cases(INTS + ("bool",), views=()))
def test_invert(dt, shape, view): helper_test_op([shape], lambda x: ~x, dtypes=dt, low=-5, high=9)


# tensor-scalar and scalar-tensor forms (the scalar's category decides promotion)
@pytest.mark.parametrize("dt,s", scases())
def test_add_scalar(dt, s): helper_test_op([(3, 4)], lambda x: (x + s, s + x), dtypes=dt)
@pytest.mark.parametrize("dt,s", scases(NUMERIC, [2, -3, 2.5]))
def test_sub_scalar(dt, s): helper_test_op([(3, 4)], lambda x: (x - s, s - x), dtypes=dt)
@pytest.mark.parametrize("dt,s", scases())
def test_mul_scalar(dt, s): helper_test_op([(3, 4)], lambda x: (x * s, s * x), dtypes=dt)
@pytest.mark.parametrize("dt,s", scases(NUMERIC, [2, -3, 2.5]))
def test_div_scalar(dt, s): helper_test_op([(3, 4)], lambda x: (x / s, s / x), dtypes=dt, low=0.5, high=3)
@pytest.mark.parametrize("dt,s", scases(NUMERIC, [2, 3, 0.5, 2.5]))
def test_pow_scalar(dt, s): helper_test_op([(3, 4)], lambda x: (x ** s, s ** x), dtypes=dt, low=0.5, high=3)
@pytest.mark.parametrize("dt,s", scases(NUMERIC, [2, 2.5]))
def test_maximum_scalar_0dim(dt, s): helper_test_op([(3, 4), ()], lambda x, z: (x.maximum(z), x + z, z * x), dtypes=[dt, "float64"])
@pytest.mark.parametrize("dt,s", scases(ALL, [1, 0.5, True]))
def test_compare_scalar(dt, s): helper_test_op([(3, 4)], lambda x: (x == s, x != s, x < s, x <= s, x > s, x >= s), dtypes=dt, low=-1, high=2)


@pytest.mark.parametrize("dt,lo,hi", [(dt, lo, hi) for dt in NUMERIC for lo, hi in [(-1 if dt != "uint8" else 1, 1), (None, 0.5), (0, None)]]
                         + [("float32", -1.5, -2.0)])
def test_clamp(dt, lo, hi): helper_test_op([(4, 5)], lambda x: x.clamp(lo, hi), dtypes=dt)
@pytest.mark.parametrize(B, bcases(NUMERIC, mixed=False))
def test_clamp_tensor(dts, shapes, view): helper_test_op([(4, 5), (5,), (4, 1)], lambda x, a, b: x.clamp(a - 1, b + 1), dtypes=dts[0], noncontig=view)
@pytest.mark.parametrize(B, bcases())
def test_where(dts, shapes, view): helper_test_op([shapes[0], shapes[1], shapes[0]], lambda x, y, c: torch.where(c, x, y), lambda x, y, c: engine.where(c, x, y), list(dts) + ["bool"], noncontig=view)
@pytest.mark.parametrize("dt,s", scases(ALL, [0, -1.5, True]))
def test_where_scalar(dt, s): helper_test_op([(3, 4), (3, 4)], lambda x, c: (torch.where(c, x, s), torch.where(c, s, x)), lambda x, c: (engine.where(c, x, s), engine.where(c, s, x)), [dt, "bool"])
@pytest.mark.parametrize("dt,s", scases(ALL, [0, 2.5, True]) + scases(("float32", "int64", "bfloat16", "bool"), [-1.5]))
def test_masked_fill(dt, s): helper_test_op([(3, 4), (4,)], lambda x, m: x.masked_fill(m, s), dtypes=[dt, "bool"])
@pytest.mark.parametrize(U, cases(views=()))
def test_masked_fill_shapes(dt, shape, view): helper_test_op([shape, shape[-1:]], lambda x, m: x.masked_fill(m, 1), dtypes=[dt, "bool"])


@pytest.mark.parametrize("src", ALL)
@pytest.mark.parametrize("dst", ALL)
def test_to_dtype(src, dst): helper_test_op([(4, 5)], lambda x: x.to(TORCH[dst]), lambda x: x.to(E[dst]), src, low=0 if dst == "uint8" else -3, high=3 if src in FLOATS else 4)
@pytest.mark.parametrize("view", VIEWS)
def test_to_dtype_view(view): helper_test_op([(4, 6)], lambda x: x.half(), dtypes="float32", noncontig=view)


# ---- reductions ---------------------------------------------------------------------------------------------
RED = [((3, 4, 5), None, False), ((3, 4, 5), 0, False), ((3, 4, 5), -1, True), ((3, 4, 5), (0, 2), False),
       ((3, 4, 5), (0, 2), True), ((3, 4, 5), None, True), ((), None, False), ((), 0, True), ((0, 4), 1, False),
       ((0, 4), 0, True), ((1, 5), 0, False), ((), -1, False)]


def rcases(dtypes=ALL, shapes=RED, views=True):
    """Reduction rows: each dtype over dim 1 of (3, 4, 5); then shapes x dims x keepdim; views."""
    main = MAIN if MAIN in dtypes else dtypes[0]
    out = [pytest.param(dt, (3, 4, 5), 1, False, None, id=dt) for dt in dtypes]
    out += [pytest.param(main, s, d, k, None, id=f"{_id(s)}-dim{d}-{'keep' if k else 'drop'}") for s, d, k in shapes]
    if views:
        out += [pytest.param(main, (4, 6), d, False, v, id=f"{v}-dim{d}") for v in VIEWS for d in (0, 1)]
    return out


R = "dt,shape,dim,keepdim,view"
NONEMPTY = [r for r in RED if 0 not in r[0]] + [((0, 4), 1, False), ((0, 4), 1, True)]  # only dim 1 is non-empty


@pytest.mark.parametrize(R, rcases())
def test_sum(dt, shape, dim, keepdim, view): helper_test_op([shape], lambda x: x.sum(dim=dim, keepdim=keepdim), dtypes=dt, noncontig=view, scale=4)
@pytest.mark.parametrize("dt", ["int32", "bool", "float16"])
def test_sum_dtype(dt): helper_test_op([(3, 4)], lambda x: (x.sum(dtype=x.dtype), x.sum(dim=0, dtype=torch.float32 if isinstance(x, torch.Tensor) else engine.float32)), dtypes=dt)
@pytest.mark.parametrize(R, rcases(FLOATS))
def test_mean(dt, shape, dim, keepdim, view): helper_test_op([shape], lambda x: x.mean(dim=dim, keepdim=keepdim), dtypes=dt, noncontig=view, scale=4)
@pytest.mark.filterwarnings("ignore:.*degrees of freedom is <= 0:UserWarning")  # torch's, for n <= correction
@pytest.mark.parametrize(R, rcases(FLOATS, NONEMPTY))
def test_var(dt, shape, dim, keepdim, view): helper_test_op([shape], lambda x: (x.var(dim=dim, keepdim=keepdim), x.var(dim=dim, keepdim=keepdim, correction=0), x.std(dim=dim, keepdim=keepdim)), dtypes=dt, noncontig=view, scale=4)
@pytest.mark.parametrize(R, rcases(ALL, NONEMPTY))
def test_max(dt, shape, dim, keepdim, view): helper_test_op([shape], lambda x: (x.max() if dim is None else x.max(dim=dim if isinstance(dim, int) else dim[0], keepdim=keepdim)), dtypes=dt, noncontig=view)
@pytest.mark.parametrize(R, rcases(ALL, NONEMPTY))
def test_min(dt, shape, dim, keepdim, view): helper_test_op([shape], lambda x: (x.min() if dim is None else x.min(dim=dim if isinstance(dim, int) else dim[0], keepdim=keepdim)), dtypes=dt, noncontig=view)
@pytest.mark.parametrize(R, rcases(ALL, NONEMPTY))
def test_amax_amin(dt, shape, dim, keepdim, view): helper_test_op([shape], lambda x: (x.amax(dim=() if dim is None else dim, keepdim=keepdim), x.amin(dim=() if dim is None else dim, keepdim=keepdim)), dtypes=dt, noncontig=view)
@pytest.mark.parametrize(R, rcases(NUMERIC, [r for r in NONEMPTY if not isinstance(r[1], tuple)]))
def test_argmax(dt, shape, dim, keepdim, view): helper_test_op([shape], lambda x: x.argmax(dim=dim, keepdim=keepdim), dtypes=dt, noncontig=view)
@pytest.mark.parametrize(R, rcases(NUMERIC, [r for r in NONEMPTY if not isinstance(r[1], tuple)]))
def test_argmin(dt, shape, dim, keepdim, view): helper_test_op([shape], lambda x: x.argmin(dim=dim, keepdim=keepdim), dtypes=dt, noncontig=view)
@pytest.mark.parametrize(R, rcases(ALL, [r for r in RED if not isinstance(r[1], tuple)]))
def test_prod(dt, shape, dim, keepdim, view): helper_test_op([shape], lambda x: x.prod() if dim is None else x.prod(dim=dim, keepdim=keepdim), dtypes=dt, low=0.5 if dt in FLOATS else -2, high=1.5 if dt in FLOATS else 3, noncontig=view, scale=4)
@pytest.mark.parametrize(R, rcases(NUMERIC, [r for r in RED if r[1] is not None]))
def test_logsumexp(dt, shape, dim, keepdim, view): helper_test_op([shape], lambda x: torch.logsumexp(x, dim=dim, keepdim=keepdim), lambda x: engine.logsumexp(x, dim=dim, keepdim=keepdim), dt, low=-5, high=5, noncontig=view, scale=4)
@pytest.mark.parametrize(R, rcases(ALL, [r for r in RED if isinstance(r[1], int) and not r[2]]))
def test_cumsum(dt, shape, dim, keepdim, view): helper_test_op([shape], lambda x: x.cumsum(dim), dtypes=dt, noncontig=view, scale=4)
@pytest.mark.parametrize(R, rcases(NUMERIC, [r for r in RED if isinstance(r[1], int) and not r[2]], views=False))
def test_cumprod(dt, shape, dim, keepdim, view): helper_test_op([shape], lambda x: x.cumprod(dim), dtypes=dt, low=0.5 if dt in FLOATS else -2, high=1.5 if dt in FLOATS else 3, scale=4)
@pytest.mark.parametrize(R, rcases())
def test_all(dt, shape, dim, keepdim, view): helper_test_op([shape], lambda x: x.all() if dim is None and not keepdim else x.all(dim=dim, keepdim=keepdim), dtypes=dt, low=0, high=3, noncontig=view)
@pytest.mark.parametrize(R, rcases())
def test_any(dt, shape, dim, keepdim, view): helper_test_op([shape], lambda x: x.any() if dim is None and not keepdim else x.any(dim=dim, keepdim=keepdim), dtypes=dt, low=-1, high=1.2, noncontig=view)


# ---- linear algebra ------------------------------------------------------------------------------------------
MM = [((3, 4), (4, 5)), ((4,), (4,)), ((4,), (4, 5)), ((3, 4), (4,)), ((2, 3, 4), (4, 5)), ((4,), (2, 4, 5)),
      ((2, 3, 4), (4,)), ((2, 1, 3, 4), (3, 4, 2)), ((0, 4), (4, 3)), ((3, 0), (0, 4)), ((1, 1), (1, 1)),
      ((2, 3, 4), (2, 4, 5))]
MM_DT = FLOATS + ("int64", "int32", "uint8")


@pytest.mark.parametrize("dt", MM_DT)
@pytest.mark.parametrize("shapes", MM, ids=lambda s: f"{_id(s[0])}@{_id(s[1])}")
def test_matmul(shapes, dt): helper_test_op(shapes, torch.matmul, engine.matmul, dt, low=-3, high=3, scale=4)
@pytest.mark.parametrize("view", VIEWS)
def test_matmul_views(view): helper_test_op([(4, 6), (6, 4)], lambda a, b: a @ b, noncontig=view, scale=4)
@pytest.mark.parametrize("dt", FLOATS)
def test_bmm(dt): helper_test_op([(3, 2, 4), (3, 4, 5)], torch.bmm, engine.bmm, dt, scale=4)
@pytest.mark.parametrize("dt", FLOATS)
@pytest.mark.parametrize("xs", [(5,), (3, 5), (2, 3, 5), (0, 5)], ids=_id)
def test_linear(xs, dt): helper_test_op([xs, (4, 5), (4,)], F.linear, engine.functional.linear, dt, scale=4)
@pytest.mark.parametrize("view", VIEWS)
def test_linear_nobias(view): helper_test_op([(3, 5), (4, 5)], F.linear, engine.functional.linear, noncontig=view, scale=4)


# ---- special values and in-place forms ------------------------------------------------------------------------
NAN_VALS = [[0.5, np.nan, -1.0, 2.0], [np.inf, -np.inf, 0.0, np.nan], [1.0, 3.0, -2.0, 0.0]]


@pytest.mark.parametrize("dt", ("float32", "float16", "bfloat16", "float64"))
def test_nan_reductions(dt): helper_test_op([(3, 4)], lambda x: (x.max(), x.min(), x.amax(1), x.max(dim=1), x.argmax(1), x.argmin(0), x.sum(1), x.mean(0)), dtypes=dt, vals=[NAN_VALS])
@pytest.mark.parametrize("dt", ("float32", "float16", "float64"))
def test_nan_elementwise(dt): helper_test_op([(3, 4), (3, 4)], lambda x, y: (torch.maximum(x, y), torch.minimum(x, y), x.clamp(-1, 1), x.relu(), x.sign(), x == x, x != y, x < y), lambda x, y: (engine.maximum(x, y), engine.minimum(x, y), x.clamp(-1, 1), x.relu(), x.sign(), x == x, x != y, x < y), dt, vals=[NAN_VALS, None])
@pytest.mark.parametrize("desc", [False, True])
def test_nan_sort_topk(desc): helper_test_op([(3, 4)], lambda x: (x.sort(dim=1, descending=desc, stable=True), x.topk(2, largest=not desc), x.argsort(dim=0, descending=desc, stable=True)), vals=[NAN_VALS])
def test_round_half_even(): helper_test_op([(8,)], lambda x: (x.round(), x.floor(), x.ceil(), x.sign()), vals=[[-2.5, -1.5, -0.5, -0.0, 0.5, 1.5, 2.5, 3.5]])
@pytest.mark.parametrize("dt", NUMERIC)
def test_rfloordiv_rmod(dt): helper_test_op([(3, 4)], lambda x: (7 // x, 7 % x, x // -2, x % -3), dtypes=dt, low=1, high=5)
def test_where_two_scalars(): helper_test_op([(3, 4)], lambda c: torch.where(c, 1.0, 0), lambda c: engine.where(c, 1.0, 0), "bool")
@pytest.mark.parametrize("dts", [("float64", "float32"), ("int64", "float16"), ("float32", "bool")], ids="-".join)
def test_cat_promotes_over_empty(dts): helper_test_op([(0, 3), (2, 3)], lambda *xs: torch.cat(xs), lambda *xs: engine.cat(xs), list(dts))


def _inplace(op, y):
    return lambda x, o: getattr(x.clone(), op)(o if y == "t" else y)


@pytest.mark.parametrize("op", ["add_", "sub_", "mul_", "div_"])
@pytest.mark.parametrize("dt,other", [("float32", "t"), ("float16", "t"), ("float32", 2.5), ("float32", 2), ("bfloat16", "t")])
def test_inplace(op, dt, other): helper_test_op([(3, 4), (4,)], _inplace(op, other), dtypes=dt)
@pytest.mark.parametrize("op", ["add_", "sub_", "mul_"])
@pytest.mark.parametrize("dts", [("int64", "int64"), ("uint8", "int64"), ("float16", "float64"), ("int32", "uint8")], ids="-".join)
def test_inplace_narrowing(op, dts): helper_test_op([(3, 4), (4,)], lambda x, y: getattr(x.clone(), op)(y), dtypes=list(dts), low=0, high=5)
@pytest.mark.parametrize("view", VIEWS[:2])
def test_inplace_through_view(view): helper_test_op([(4, 6), (6,)], lambda x, y: (lambda b: (b[1:3].add_(y), b.T[0].mul_(2), b)[-1])(x.clone()), noncontig=[view, None])
def test_inplace_fill_zero_clamp_masked(): helper_test_op([(3, 4), (4,)], lambda x, m: (x.clone().fill_(2.5), x.clone().zero_(), x.clone().clamp_(-0.5, 0.5), x.clone().masked_fill_(m, 9)), dtypes=["float32", "bool"])
