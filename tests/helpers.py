"""Parity helpers for the engine-core tests, in the style of tinygrad's `helper_test_op`.

    helper_test_op([(45, 65)], torch.exp, engine.exp)
    helper_test_op([(3, 4), (4,)], lambda a, b: a * b)          # one callable for both (torch names)

Inputs are built once in numpy from a seeded generator, rounded to the dtype under test, and handed
to torch (CPU) and to the engine (on the device under test, `DEVICE`). Outputs (a tensor, or a tuple
/ list / namedtuple of tensors) must match in shape, dtype and values, with tolerances from
`migration.tolerances.get(dtype, scale)` through `torch.testing.assert_close`.
"""
from __future__ import annotations

import importlib.util

import ml_dtypes
import numpy as np
import pytest
import torch

import engine
from migration import tolerances

DEVICE = engine.default_device()
ON_CPU = DEVICE.type == "cpu"

# ---- dtypes ------------------------------------------------------------------------------------------
E = {"float32": engine.float32, "float16": engine.float16, "bfloat16": engine.bfloat16,
     "float64": engine.float64, "int64": engine.int64, "int32": engine.int32, "uint8": engine.uint8,
     "bool": engine.bool}
TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
         "float64": torch.float64, "int64": torch.int64, "int32": torch.int32, "uint8": torch.uint8,
         "bool": torch.bool}
NP = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float64": np.float64,
      "int64": np.int64, "int32": np.int32, "uint8": np.uint8, "bool": np.bool_}

FLOATS = ("float32", "float16", "bfloat16", "float64")
INTS = ("int64", "int32", "uint8")
NUMERIC = FLOATS + INTS
ALL = NUMERIC + ("bool",)
# the 16-bit floats are covered by their own rows; shape and view sweeps run in these
MAIN = "float32"


def tname(dt) -> str:
    """'float16' for engine.float16, torch.float16, 'float16' or np.float16."""
    if isinstance(dt, str):
        return dt
    if isinstance(dt, torch.dtype):
        return str(dt).removeprefix("torch.")
    return engine.dtype.get(dt).name


# ---- the device under test ---------------------------------------------------------------------------
def device_skip_reason() -> str | None:
    if DEVICE.type == "cuda" and importlib.util.find_spec("cupy") is None:
        return ("ENGINE_DEVICE=cuda but cupy is not installed: pip install 'taper[cuda13]' (or [cuda12]) "
                "on a machine with an NVIDIA GPU")
    if not engine.is_available(DEVICE):
        try:
            engine.zeros(1, device=DEVICE)
        except engine.DeviceUnavailableError as e:
            return str(e)
    return None


needs_device = pytest.mark.skipif(device_skip_reason() is not None, reason=str(device_skip_reason()))
cpu_only = pytest.mark.skipif(not ON_CPU, reason="only meaningful on the CPU device (numpy views / host memory)")


# ---- inputs -----------------------------------------------------------------------------------------
def rand_np(shape, dtype: str, low=-2.0, high=2.0, rng=None) -> np.ndarray:
    """Seeded random values of `dtype`: uniform floats in [low, high), integers in [low, high)
    (clipped to the dtype's range), random bools."""
    rng = rng if rng is not None else np.random.default_rng(0)
    shape = tuple(shape)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype in INTS:
        info = np.iinfo(NP[dtype])
        lo, hi = max(int(np.floor(low)), info.min), min(int(np.ceil(high)), info.max)
        if hi <= lo:
            hi = lo + 1
        return rng.integers(lo, hi, size=shape).astype(NP[dtype])
    return rng.uniform(low, high, size=shape).astype(NP[dtype])


def to_torch(a: np.ndarray) -> torch.Tensor:
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(np.array(a, np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.array(a))


def to_engine(a: np.ndarray) -> engine.Tensor:
    return engine.tensor(np.array(a), device=DEVICE)


def engine_to_torch(t: engine.Tensor) -> torch.Tensor:
    return to_torch(np.array(t.numpy()))


# non-contiguous views: each builds a base of another shape and views it to `shape`
def _base_shape(shape, kind):
    shape = tuple(shape)
    if kind == "T" and len(shape) >= 2:
        return shape[:-2] + (shape[-1], shape[-2])
    if kind == "step" and len(shape) >= 1:
        return shape[:-1] + (2 * shape[-1],)
    if kind == "expand" and len(shape) >= 1:
        return (1,) + shape[1:]
    return shape


def _apply_view(t, shape, kind):
    shape = tuple(shape)
    if kind == "T" and len(shape) >= 2:
        return t.transpose(-1, -2)
    if kind == "step" and len(shape) >= 1:
        return t[..., ::2]
    if kind == "expand" and len(shape) >= 1:
        return t.expand(*shape)
    return t


VIEWS = ("T", "step", "expand")


def make_inputs(shapes, dtypes, low, high, noncontig, seed=0, vals=None):
    """(numpy bases, torch inputs, engine inputs) with the same values."""
    n = len(shapes)
    dtypes = [dtypes] * n if isinstance(dtypes, str) or not isinstance(dtypes, (list, tuple)) else list(dtypes)
    dtypes = [tname(d) for d in dtypes]
    views = [noncontig] * n if not isinstance(noncontig, (list, tuple)) else list(noncontig)
    lows = low if isinstance(low, (list, tuple)) else [low] * n
    highs = high if isinstance(high, (list, tuple)) else [high] * n
    rng = np.random.default_rng(seed)
    ts, es = [], []
    for i, (shape, dt, view) in enumerate(zip(shapes, dtypes, views)):
        if vals is not None and vals[i] is not None:
            base = np.asarray(vals[i]).astype(NP[dt])
        else:
            base = rand_np(_base_shape(shape, view), dt, lows[i], highs[i], rng)
        t, e = _apply_view(to_torch(base), shape, view), _apply_view(to_engine(base), shape, view)
        assert tuple(t.shape) == tuple(e.shape) == tuple(shape), (t.shape, e.shape, shape)
        if view in ("T", "step", "expand") and e.numel() > 1 and not t.is_contiguous():
            assert not e.is_contiguous(), f"view {view} of {shape} should be non-contiguous in the engine too"
        ts.append(t)
        es.append(e)
    return ts, es


# ---- comparison ---------------------------------------------------------------------------------------
def compare(out_e, out_t, scale=1.0, atol=None, rtol=None, what="output", check_dtype=True):
    if isinstance(out_t, (tuple, list)):
        assert isinstance(out_e, (tuple, list)), f"{what}: torch gave a sequence, engine {type(out_e).__name__}"
        assert len(out_e) == len(out_t), f"{what}: {len(out_e)} outputs vs torch's {len(out_t)}"
        for i, (a, b) in enumerate(zip(out_e, out_t)):
            compare(a, b, scale, atol, rtol, f"{what}[{i}]", check_dtype)
        return
    if not isinstance(out_t, torch.Tensor):
        assert out_e == out_t, f"{what}: {out_e!r} != torch's {out_t!r}"
        return
    assert isinstance(out_e, engine.Tensor), f"{what}: expected an engine Tensor, got {type(out_e).__name__}"
    assert tuple(out_e.shape) == tuple(out_t.shape), f"{what}: shape {tuple(out_e.shape)} != torch {tuple(out_t.shape)}"
    name = tname(out_t.dtype)
    if check_dtype:
        assert out_e.dtype.name == name, f"{what}: dtype {out_e.dtype.name} != torch {name}"
    r, a = tolerances.get(name, scale)
    if rtol is not None:
        r = rtol
    if atol is not None:
        a = atol
    got = engine_to_torch(out_e)
    if not check_dtype:
        got = got.to(out_t.dtype)
    torch.testing.assert_close(got, out_t, rtol=r, atol=a, equal_nan=True, msg=lambda m: f"{what}: {m}")


def _flat(out):
    return [o for x in out for o in _flat(x)] if isinstance(out, (tuple, list)) else [out]


def compare_reduced(out_e, out_t, ref, scale=1.0):
    """DESIGN.md's rule for reduced precision: the engine passes when it is within the table's
    tolerance of an fp64 run of torch on the same (rounded) inputs, or when its error against that
    run is at most REDUCED_ERROR_RATIO times torch's own error. Shapes and dtypes must still match."""
    flat_e, flat_t, flat_r = _flat(out_e), _flat(out_t), _flat(ref)
    assert len(flat_e) == len(flat_t), f"{len(flat_e)} outputs vs torch's {len(flat_t)}"
    for i, (e, t, r) in enumerate(zip(flat_e, flat_t, flat_r)):
        if not isinstance(t, torch.Tensor):  # a Python number (item(), allclose()): exact, as torch's own
            compare(e, t, what=f"output[{i}]")
            continue
        assert isinstance(e, engine.Tensor), f"output[{i}]: expected an engine Tensor, got {type(e).__name__}"
        assert tuple(e.shape) == tuple(t.shape), f"output[{i}]: shape {tuple(e.shape)} != torch {tuple(t.shape)}"
        assert e.dtype.name == tname(t.dtype), f"output[{i}]: dtype {e.dtype.name} != torch {tname(t.dtype)}"
        if not t.is_floating_point():
            compare(e, t, what=f"output[{i}]")
            continue
        rtol, atol = tolerances.get(tname(t.dtype), scale)
        got, r = engine_to_torch(e).double(), r.double()
        err_e, err_t = (got - r).abs(), (t.double() - r).abs()
        ok = torch.isclose(got, r, rtol=rtol, atol=atol, equal_nan=True).all()
        if not ok:
            worst_e = err_e.nan_to_num(0).max().item() if err_e.numel() else 0.0
            worst_t = err_t.nan_to_num(0).max().item() if err_t.numel() else 0.0
            assert worst_e <= tolerances.REDUCED_ERROR_RATIO * worst_t, (
                f"output[{i}]: engine error vs fp64 {worst_e:.3g} > {tolerances.REDUCED_ERROR_RATIO} x torch's "
                f"{worst_t:.3g}")


# ---- parametrisations shared by the parity rows (tests/test_ops*.py) --------------------------------------
SHAPES = [(), (7,), (2, 3, 4), (0, 4), (1, 5)]


def _id(shape):
    return "x".join(map(str, shape)) or "scalar"


def cases(dtypes=ALL, shape=(3, 5), shapes=SHAPES, views=VIEWS):
    """Each dtype at `shape`; then, in float32 (or the op's first dtype), every shape and view."""
    main = MAIN if MAIN in dtypes else dtypes[0]
    out = [pytest.param(dt, shape, None, id=dt) for dt in dtypes]
    out += [pytest.param(main, s, None, id=f"{main}-{_id(s)}") for s in shapes]
    out += [pytest.param(main, (4, 6), v, id=f"{main}-{v}") for v in views]
    return out


U = "dt,shape,view"
MIXED = [("float32", "float16"), ("float16", "bfloat16"), ("int64", "float16"), ("uint8", "int32"),
         ("bool", "int64"), ("int32", "bfloat16"), ("uint8", "bool"), ("float64", "float32"), ("int64", "uint8"),
         ("bool", "float32")]
BSHAPES = [((3, 5), (3, 5)), ((3, 1), (1, 5)), ((5,), (2, 3, 5)), ((), (3, 4)), ((3, 4), ()), ((0, 4), (1, 4)),
           ((2, 1, 4), (3, 1)), ((1,), (0,))]


def bcases(dtypes=ALL, mixed=True):
    """Binary rows: each dtype (both operands), mixed-dtype pairs, broadcast shapes, views."""
    main = MAIN if MAIN in dtypes else dtypes[0]
    out = [pytest.param((dt, dt), ((3, 5), (3, 5)), None, id=dt) for dt in dtypes]
    if mixed:
        out += [pytest.param(p, ((3, 5), (5,)), None, id="-".join(p)) for p in MIXED
                if p[0] in dtypes and p[1] in dtypes]
    out += [pytest.param((main, main), s, None, id=f"{_id(s[0])}-{_id(s[1])}") for s in BSHAPES]
    out += [pytest.param((main, main), ((4, 6), (4, 6)), v, id=v) for v in VIEWS]
    return out


B = "dts,shapes,view"
SCALARS = [2, -3, 2.5, True]


def scases(dtypes=ALL, scalars=SCALARS):
    return [pytest.param(dt, s, id=f"{dt}-{s!r}") for dt in dtypes for s in scalars]


def helper_test_op(shapes, torch_fn, engine_fn=None, dtypes=MAIN, low=-2.0, high=2.0, grad=False,
                   noncontig=None, scale=1.0, atol=None, rtol=None, vals=None, seed=0, check_dtype=True,
                   ref64=False):
    """Run torch_fn on torch CPU tensors and engine_fn (default: torch_fn itself, for torch-named
    lambdas) on engine tensors built from the same numpy values; compare shape, dtype and values.

    dtypes: one dtype or one per input. noncontig: None, "T", "step" or "expand" (or one per input).
    scale multiplies the table's tolerances (documented per row for accumulating ops).
    ref64: for float16/bfloat16 inputs, judge against an fp64 torch run (`compare_reduced`) instead of
    torch's own reduced-precision output; for ops whose torch CPU kernel rounds intermediates.
    Returns (engine output, torch output)."""
    if grad:
        raise NotImplementedError("the engine is inference-only: no gradients to compare")
    engine_fn = engine_fn or torch_fn
    ts, es = make_inputs(shapes, dtypes, low, high, noncontig, seed, vals)
    out_t = torch_fn(*ts)
    out_e = engine_fn(*es)
    if ref64 and any(t.dtype in (torch.float16, torch.bfloat16) for t in ts):
        ref = torch_fn(*[t.double() if t.dtype in (torch.float16, torch.bfloat16) else t for t in ts])
        compare_reduced(out_e, out_t, ref, scale)
    else:
        compare(out_e, out_t, scale, atol, rtol, check_dtype=check_dtype)
    return out_e, out_t


def compare_meta(out_e, out_t):
    """Shape, dtype and device only (for engine.empty and friends)."""
    assert tuple(out_e.shape) == tuple(out_t.shape), f"shape {tuple(out_e.shape)} != torch {tuple(out_t.shape)}"
    assert out_e.dtype.name == tname(out_t.dtype), f"dtype {out_e.dtype.name} != torch {tname(out_t.dtype)}"
    assert out_e.device == DEVICE


def asv_tiny_harness():
    """The tiny asv suite's harness (tests/data/asv_tiny/harness.py), loaded once per session."""
    import sys
    from pathlib import Path
    name = "taper_asv_tiny_harness"
    if name not in sys.modules:
        path = Path(__file__).parent / "data" / "asv_tiny" / "harness.py"
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]
