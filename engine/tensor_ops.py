"""The math methods of Tensor: elementwise, reductions, matmul, indexing ops, sorting.

Each function validates its operands (shapes, dtypes, devices; errors name them), works out the
result dtype with torch's promotion rules, and calls one backend kernel. They are attached to Tensor
as methods at the bottom of this file and exported as engine.<name> functions by engine/ops.py.
"""
from __future__ import annotations

import builtins

import numpy as np

from engine import dtype as D
from engine.layout import ShapeError, broadcast_shapes, norm_dim
from engine.tensor import DeviceMismatchError, DTypeError, MinMax, Sorted, Tensor

# ---- elementwise --------------------------------------------------------------------------------
FLOAT_UNARY = ("exp", "log", "log2", "log1p", "expm1", "sqrt", "rsqrt", "sin", "cos", "tan", "tanh",
               "sigmoid", "erf", "gelu", "gelu_tanh", "silu", "reciprocal")
KEEP_UNARY = ("neg", "abs", "relu", "floor", "ceil", "round", "sign", "square")
BOOL_UNARY = ("isnan", "isinf", "isfinite", "logical_not")


def _unary(x: Tensor, op: str) -> Tensor:
    if op in FLOAT_UNARY:
        out = D.to_float(x.dtype)
    elif op in BOOL_UNARY:
        out = D.bool_
    else:
        if x.dtype is D.bool_ and op in ("neg", "sign", "abs", "relu"):
            raise DTypeError(f"{op}() is not defined for bool tensors")
        out = D.int64 if (x.dtype is D.bool_ and op == "square") else x.dtype  # torch: square(bool) -> int64
    if op in ("floor", "ceil", "round") and x.dtype.category < 2:
        return x.clone()
    return Tensor._wrap(x.backend.unary(op, x.array, out), x.backend, out)


def _operand(x: Tensor, other):
    """The backend value of `other` for a binary op with x: its array, or a Python scalar."""
    if isinstance(other, Tensor):
        if other.device != x.device:
            if other.ndim == 0 and other.device.type == "cpu":
                return other.item()  # torch allows a 0-dim CPU tensor with any device
            raise DeviceMismatchError(f"expected all tensors on one device, got {x.device} and {other.device}")
        return other.array
    D.scalar_category(other)
    return other


def _binary(x: Tensor, other, op: str, kind: str = "arith") -> Tensor:
    if not isinstance(x, Tensor):  # reflected call with a scalar on the left: engine.add(2, t)
        x, other = other, x
        return _binary_swapped(x, other, op, kind)
    res = D.result_type(x, other)
    if isinstance(other, Tensor):
        shape = broadcast_shapes(x.shape, other.shape)
    else:
        shape = x.shape
    del shape  # validated above: ShapeError names both shapes
    compute, out = res, res
    if kind == "cmp":
        out = D.bool_
    elif kind == "logical":
        out, compute = D.bool_, D.bool_
    elif kind == "bitwise":
        if res.category == 2:
            other_name = other.dtype.name if isinstance(other, Tensor) else type(other).__name__
            raise DTypeError(f"{op}() is not defined for floating tensors ({x.dtype.name}, {other_name})")
    elif op == "div":
        compute = out = D.to_float(res)
    b = x.backend
    return Tensor._wrap(b.binary(op, x.array, _operand(x, other), compute, out), b, out)


def _binary_swapped(t: Tensor, scalar, op: str, kind: str) -> Tensor:
    res = D.result_type(t, scalar)
    compute = out = D.to_float(res) if op == "div" else res
    if kind == "cmp":
        out = D.bool_
    return Tensor._wrap(t.backend.binary(op, scalar, t.array, compute, out), t.backend, out)


def add(x, other, alpha=1):
    return _binary(x, other if alpha == 1 else other * alpha, "add")


def sub(x, other, alpha=1):
    return _binary(x, other if alpha == 1 else other * alpha, "sub")


def pow(x, exponent):
    if isinstance(exponent, (int, float)) and isinstance(x, Tensor) and exponent == 2:
        return _unary(x, "square") if x.dtype.category else _binary(x, exponent, "pow")
    return _binary(x, exponent, "pow")


def where(cond: Tensor, x, y) -> Tensor:
    if not isinstance(cond, Tensor) or cond.dtype is not D.bool_:
        raise DTypeError(f"where(): condition must be a bool tensor, got {getattr(cond, 'dtype', type(cond))}")
    out = D.result_type(x, y)
    shapes = [cond.shape] + [v.shape for v in (x, y) if isinstance(v, Tensor)]
    broadcast_shapes(*shapes)
    b = cond.backend
    return Tensor._wrap(b.where(cond.array, _operand(cond, x), _operand(cond, y), out), b, out)


def masked_fill(x: Tensor, mask: Tensor, value) -> Tensor:
    if mask.dtype is not D.bool_:
        raise DTypeError(f"masked_fill(): mask must be bool, got {mask.dtype.name}")
    if mask.device != x.device:
        raise DeviceMismatchError(f"masked_fill(): mask on {mask.device}, tensor on {x.device}")
    try:
        fits = broadcast_shapes(x.shape, mask.shape) == x.shape
    except ShapeError:
        fits = False
    if not fits:
        raise ShapeError(f"masked_fill(): mask of shape {mask.shape} does not broadcast to {x.shape}")
    if isinstance(value, Tensor):
        value = value.item()
    D.scalar_category(value)
    if x.dtype.category == 1 and not _fits(value, x.dtype):
        raise ValueError(f"masked_fill(): value {value!r} cannot be converted to {x.dtype.name} without overflow")
    out = Tensor._wrap(x.backend.where(mask.array, value, x.array, x.dtype), x.backend, x.dtype)
    return out


def _fits(value, dt: D.DType) -> bool:
    """Whether a Python number converts to integer dtype dt without overflow (torch's check)."""
    info = np.iinfo(dt.np_dtype)
    return bool(info.min <= value <= info.max)  # False for nan and inf too


def clamp(x: Tensor, min=None, max=None) -> Tensor:
    if min is None and max is None:
        raise ValueError("clamp(): at least one of min and max must be given")
    out = D.result_type(x, *[v for v in (min, max) if v is not None])
    b = x.backend
    lo = None if min is None else _operand(x, min)
    hi = None if max is None else _operand(x, max)
    return Tensor._wrap(b.clamp(x.array, lo, hi, out), b, out)


# ---- reductions ---------------------------------------------------------------------------------------
def _dims(x: Tensor, dim, empty_means_all: bool = False) -> tuple:
    """Normalised dims. A 0-d tensor accepts dim 0 and -1 (as torch does) and has nothing to reduce.
    `empty_means_all`: torch's sum/mean/amax/amin/var reduce every dim for dim=() (all/any reduce none)."""
    if dim is None or (empty_means_all and isinstance(dim, (tuple, list)) and not dim):
        return tuple(range(x.ndim))
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    dims = tuple(norm_dim(d, x.ndim) for d in dims)
    if len(set(dims)) != len(dims):
        raise ShapeError(f"dim {tuple(dim)} appears more than once")
    return dims if x.ndim else ()


def _reduce(x: Tensor, op: str, dim=None, keepdim=False, dtype=None, **kw) -> Tensor:
    if dtype is not None:
        out = D.get(dtype)
    elif op in ("sum", "prod"):
        out = D.int64 if x.dtype.category < 2 else x.dtype
    elif op in ("mean", "var"):
        if x.dtype.category < 2:
            raise DTypeError(f"{op}(): input dtype must be floating point, got {x.dtype.name}")
        out = x.dtype
    elif op == "logsumexp":  # torch promotes integer inputs to the default float
        out = D.to_float(x.dtype)
    elif op in ("all", "any"):
        out = D.uint8 if x.dtype is D.uint8 else D.bool_  # torch keeps uint8 here (a legacy rule)
    else:
        out = x.dtype
    b = x.backend
    dims = _dims(x, dim, empty_means_all=op not in ("all", "any"))
    if op in ("amax", "amin"):
        _check_nonempty(x, op, dims)
    return Tensor._wrap(b.reduce(op, x.array, dims, keepdim, out, **kw), b, out)


def sum(x, dim=None, keepdim=False, dtype=None):
    return _reduce(x, "sum", dim, keepdim, dtype)


def mean(x, dim=None, keepdim=False, dtype=None):
    return _reduce(x, "mean", dim, keepdim, dtype)


def prod(x, dim=None, keepdim=False, dtype=None):
    return _reduce(x, "prod", dim, keepdim, dtype)


def amax(x, dim=None, keepdim=False):
    return _reduce(x, "amax", dim, keepdim)


def amin(x, dim=None, keepdim=False):
    return _reduce(x, "amin", dim, keepdim)


def all(x, dim=None, keepdim=False):
    return _reduce(x, "all", dim, keepdim)


def any(x, dim=None, keepdim=False):
    return _reduce(x, "any", dim, keepdim)


def var(x, dim=None, keepdim=False, correction=1, unbiased=None):
    if unbiased is not None:
        correction = int(unbiased)
    return _reduce(x, "var", dim, keepdim, correction=correction)


def std(x, dim=None, keepdim=False, correction=1, unbiased=None):
    return var(x, dim, keepdim, correction, unbiased).sqrt()


def logsumexp(x, dim, keepdim=False):
    return _reduce(x, "logsumexp", dim, keepdim)


def _check_nonempty(x: Tensor, op: str, dims) -> None:
    """max/min/argmax/argmin have no identity: an empty reduced dim is an error (as in torch)."""
    if x.numel() == 0:
        empty = [d for d in (range(x.ndim) if dims is None else dims) if x.shape[d] == 0]
        if empty or not x.ndim:
            raise ShapeError(f"{op}(): cannot reduce over dim {empty[0] if empty else 0} of size 0 "
                             f"(input shape {x.shape}); give a dim whose size is not 0")


def _arg(x: Tensor, op: str, dim=None, keepdim=False) -> Tensor:
    d = None if dim is None else norm_dim(dim, x.ndim)
    d = None if (d is not None and x.ndim == 0) else d
    _check_nonempty(x, op, None if d is None else (d,))
    return Tensor._wrap(x.backend.arg_reduce(op, x.array, d, keepdim), x.backend, D.int64)


def argmax(x, dim=None, keepdim=False):
    return _arg(x, "argmax", dim, keepdim)


def argmin(x, dim=None, keepdim=False):
    return _arg(x, "argmin", dim, keepdim)


def max(x, dim=None, keepdim=False):
    """max() -> 0-dim tensor; max(dim) -> (values, indices); max(other_tensor) -> maximum."""
    if isinstance(dim, Tensor):
        return _binary(x, dim, "maximum")
    if dim is None:
        return amax(x)
    return MinMax(amax(x, dim, keepdim), argmax(x, dim, keepdim))


def min(x, dim=None, keepdim=False):
    if isinstance(dim, Tensor):
        return _binary(x, dim, "minimum")
    if dim is None:
        return amin(x)
    return MinMax(amin(x, dim, keepdim), argmin(x, dim, keepdim))


def _cumulative(x: Tensor, op: str, dim: int, dtype=None) -> Tensor:
    out = D.get(dtype) if dtype is not None else (D.int64 if x.dtype.category < 2 else x.dtype)
    if x.ndim == 0:  # torch: dim 0 or -1 of a 0-d tensor, result 0-d
        return _cumulative(x.reshape(1), op, norm_dim(dim, 0), dtype=out).reshape(())
    return Tensor._wrap(x.backend.cumulative(op, x.array, norm_dim(dim, x.ndim), out), x.backend, out)


def cumsum(x, dim, dtype=None):
    return _cumulative(x, "cumsum", dim, dtype)


def cumprod(x, dim, dtype=None):
    return _cumulative(x, "cumprod", dim, dtype)


def norm(x, p=2, dim=None, keepdim=False):
    if p == 2:
        return (x * x).sum(dim, keepdim).sqrt()
    if p == 1:
        return x.abs().sum(dim, keepdim)
    if p == float("inf"):
        return x.abs().amax(dim, keepdim)
    return (x.abs() ** p).sum(dim, keepdim) ** (1.0 / p)


# ---- linear algebra ----------------------------------------------------------------------------
def matmul(a: Tensor, b: Tensor) -> Tensor:
    if not isinstance(b, Tensor):
        raise TypeError(f"matmul(): expected a Tensor, got {type(b).__name__}")
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError(f"matmul(): both arguments need at least 1 dim, got shapes {a.shape} and {b.shape}")
    if a.dtype is not b.dtype:
        raise DTypeError(f"matmul(): expected both operands to have the same dtype, got {a.dtype.name} and {b.dtype.name}")
    k_a = a.shape[-1]
    k_b = b.shape[-2] if b.ndim > 1 else b.shape[0]
    if k_a != k_b:
        raise ShapeError(f"matmul(): shapes {a.shape} and {b.shape} cannot be multiplied ({k_a} != {k_b})")
    if a.ndim > 2 or b.ndim > 2:
        broadcast_shapes(a.shape[:-2] if a.ndim > 1 else (), b.shape[:-2] if b.ndim > 1 else ())
    if a.device != b.device:
        raise DeviceMismatchError(f"matmul(): operands on {a.device} and {b.device}")
    bk = a.backend
    return Tensor._wrap(bk.matmul(a.array, b.array, a.dtype), bk, a.dtype)


def bmm(a, b):
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0]:
        raise ShapeError(f"bmm(): expected two 3-d tensors with the same batch size, got {a.shape} and {b.shape}")
    return matmul(a, b)


def mm(a, b):
    if a.ndim != 2 or b.ndim != 2:
        raise ShapeError(f"mm(): expected 2-d tensors, got {a.shape} and {b.shape}")
    return matmul(a, b)


# ---- indexing ops ---------------------------------------------------------------------------------
def _index_tensor(x: Tensor, index, what: str) -> Tensor:
    if not isinstance(index, Tensor) or index.dtype.category != 1 or index.dtype is D.bool_:
        raise DTypeError(f"{what}: index must be an integer tensor, got {getattr(index, 'dtype', type(index).__name__)}")
    if index.device != x.device:
        raise DeviceMismatchError(f"{what}: index on {index.device}, tensor on {x.device}")
    return index


def index_select(x: Tensor, dim: int, index: Tensor) -> Tensor:
    _index_tensor(x, index, "index_select()")
    d = norm_dim(dim, x.ndim)
    if index.ndim > 1:
        raise ShapeError(f"index_select(): index must be 1-d, got shape {index.shape}")
    x._check_bounds(index.array, d, negative=False)
    return Tensor._wrap(x.backend.take(x.array, index.array, d), x.backend, x.dtype)


def gather(x: Tensor, dim: int, index: Tensor) -> Tensor:
    _index_tensor(x, index, "gather()")
    d = norm_dim(dim, x.ndim)
    if index.ndim != x.ndim or builtins.any(i > n for k, (i, n) in enumerate(zip(index.shape, x.shape)) if k != d):
        raise ShapeError(f"gather(): index shape {index.shape} does not fit input shape {x.shape} at dim {d}")
    x._check_bounds(index.array, d, negative=False)
    return Tensor._wrap(x.backend.gather(x.array, d, index.array), x.backend, x.dtype)


def scatter(x: Tensor, dim: int, index: Tensor, src, reduce=None) -> Tensor:
    _index_tensor(x, index, "scatter()")
    d = norm_dim(dim, x.ndim)
    if index.ndim != x.ndim:
        raise ShapeError(f"scatter(): index has {index.ndim} dims, input has {x.ndim} ({index.shape} vs {x.shape})")
    if isinstance(src, Tensor) and builtins.any(i > s for i, s in zip(index.shape, src.shape)):
        raise ShapeError(f"scatter(): index shape {index.shape} is larger than src shape {src.shape}")
    x._check_bounds(index.array, d, negative=False)
    if isinstance(src, Tensor) and src.device != x.device:
        raise DeviceMismatchError(f"scatter(): src on {src.device}, tensor on {x.device}")
    src_v = src.to(x.dtype).array if isinstance(src, Tensor) else src
    return Tensor._wrap(x.backend.scatter(x.array, d, index.array, src_v, reduce), x.backend, x.dtype)


def scatter_add(x, dim, index, src):
    return scatter(x, dim, index, src, reduce="add")


def sort(x: Tensor, dim=-1, descending=False, stable=False):
    v, i = x.backend.sort(x.array, norm_dim(dim, x.ndim), descending, stable)
    return Sorted(Tensor._wrap(v, x.backend, x.dtype), Tensor._wrap(i, x.backend, D.int64))


def argsort(x, dim=-1, descending=False, stable=False):
    return sort(x, dim, descending, stable).indices


def topk(x: Tensor, k: int, dim=-1, largest=True, sorted=True):
    d = norm_dim(dim, x.ndim)
    if not 0 <= k <= x.shape[d]:
        raise ShapeError(f"topk(): k={k} out of range for dim {d} of size {x.shape[d]} (shape {x.shape})")
    v, i = x.backend.topk(x.array, k, d, largest)
    return Sorted(Tensor._wrap(v, x.backend, x.dtype), Tensor._wrap(i, x.backend, D.int64))


def flip(x: Tensor, dims) -> Tensor:
    dims = _dims(x, dims)
    return Tensor._wrap(x.backend.flip(x.array, dims), x.backend, x.dtype)


def roll(x: Tensor, shifts, dims=None) -> Tensor:
    if dims is None:
        return roll(x.flatten(), shifts, 0).reshape(x.shape)
    dims = _dims(x, dims)
    return Tensor._wrap(x.backend.roll(x.array, shifts, dims), x.backend, x.dtype)


def repeat(x: Tensor, *sizes) -> Tensor:
    sizes = sizes[0] if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else sizes
    if len(sizes) < x.ndim:
        raise ShapeError(f"repeat(): {len(sizes)} repeat sizes for a tensor of {x.ndim} dims (shape {x.shape})")
    return Tensor._wrap(x.backend.tile(x.array, tuple(sizes)), x.backend, x.dtype)


def repeat_interleave(x: Tensor, repeats, dim=None) -> Tensor:
    if dim is None:
        x, dim = x.flatten(), 0
    r = repeats.array if isinstance(repeats, Tensor) else repeats
    return Tensor._wrap(x.backend.repeat_interleave(x.array, r, norm_dim(dim, x.ndim)), x.backend, x.dtype)


def _tri(x: Tensor, diagonal: int, upper: bool) -> Tensor:
    if x.ndim < 2:
        raise ShapeError(f"{'triu' if upper else 'tril'}(): needs at least 2 dims, got shape {x.shape}")
    return Tensor._wrap(x.backend.tri(x.array, diagonal, upper), x.backend, x.dtype)


def triu(x, diagonal=0):
    return _tri(x, diagonal, True)


def tril(x, diagonal=0):
    return _tri(x, diagonal, False)


def nonzero(x: Tensor) -> Tensor:
    return Tensor._wrap(x.backend.nonzero(x.array), x.backend, D.int64)


# ---- attach as methods ------------------------------------------------------------------------------
def _attach():
    for op in FLOAT_UNARY + KEEP_UNARY + BOOL_UNARY:
        setattr(Tensor, op, (lambda o: lambda self: _unary(self, o))(op))
    arith = {"mul": "mul", "div": "div", "floor_divide": "floor_divide", "remainder": "remainder",
             "maximum": "maximum", "minimum": "minimum", "atan2": "atan2"}
    for name, op in arith.items():
        setattr(Tensor, name, (lambda o: lambda self, other: _binary(self, other, o))(op))
    for op in ("eq", "ne", "lt", "le", "gt", "ge"):
        setattr(Tensor, op, (lambda o: lambda self, other: _binary(self, other, o, "cmp"))(op))
    for op in ("logical_and", "logical_or", "logical_xor"):
        setattr(Tensor, op, (lambda o: lambda self, other: _binary(self, other, o, "logical"))(op))
    for op in ("bitwise_and", "bitwise_or", "bitwise_xor"):
        setattr(Tensor, op, (lambda o: lambda self, other: _binary(self, other, o, "bitwise"))(op))
    for fn in (add, sub, pow, masked_fill, clamp, sum, mean, prod, amax, amin, all, any, var, std, logsumexp,
               argmax, argmin, max, min, cumsum, cumprod, norm, matmul, bmm, mm, index_select, gather,
               scatter, scatter_add, sort, argsort, topk, flip, roll, repeat, repeat_interleave, triu, tril,
               nonzero):
        setattr(Tensor, fn.__name__, fn)
    Tensor.where = lambda self, cond, other: where(cond, self, other)
    Tensor.clip = clamp
    Tensor.multiply, Tensor.divide, Tensor.subtract = Tensor.mul, Tensor.div, Tensor.sub
    Tensor.__add__ = Tensor.__radd__ = lambda s, o: _binary(s, o, "add")
    Tensor.__sub__ = lambda s, o: _binary(s, o, "sub")
    Tensor.__rsub__ = lambda s, o: _binary_swapped(s, o, "sub", "arith")
    Tensor.__mul__ = Tensor.__rmul__ = lambda s, o: _binary(s, o, "mul")
    Tensor.__truediv__ = lambda s, o: _binary(s, o, "div")
    Tensor.__rtruediv__ = lambda s, o: _binary_swapped(s, o, "div", "arith")
    Tensor.__floordiv__ = lambda s, o: _binary(s, o, "floor_divide")
    Tensor.__rfloordiv__ = lambda s, o: _binary_swapped(s, o, "floor_divide", "arith")
    Tensor.__mod__ = lambda s, o: _binary(s, o, "remainder")
    Tensor.__rmod__ = lambda s, o: _binary_swapped(s, o, "remainder", "arith")
    Tensor.__pow__ = pow
    Tensor.__rpow__ = lambda s, o: _binary_swapped(s, o, "pow", "arith")
    Tensor.__matmul__ = matmul
    Tensor.__neg__ = lambda s: _unary(s, "neg")
    Tensor.__abs__ = lambda s: _unary(s, "abs")
    Tensor.__invert__ = lambda s: (_unary(s, "logical_not") if s.dtype is D.bool_
                                   else Tensor._wrap(s.backend.unary("bitwise_not", s.array, s.dtype), s.backend, s.dtype))
    for dunder, op in (("eq", "eq"), ("ne", "ne"), ("lt", "lt"), ("le", "le"), ("gt", "gt"), ("ge", "ge")):
        setattr(Tensor, f"__{dunder}__", (lambda o: lambda s, other: _binary(s, other, o, "cmp"))(op))
    for dunder, op in (("and", "bitwise_and"), ("or", "bitwise_or"), ("xor", "bitwise_xor")):
        fn = (lambda o: lambda s, other: _binary(s, other, o, "logical" if s.dtype is D.bool_ else "bitwise"))(op)
        setattr(Tensor, f"__{dunder}__", fn)
        setattr(Tensor, f"__r{dunder}__", fn)
    Tensor.__iadd__ = lambda s, o: s.add_(o)
    Tensor.__isub__ = lambda s, o: s.sub_(o)
    Tensor.__imul__ = lambda s, o: s.mul_(o)
    Tensor.__itruediv__ = lambda s, o: s.div_(o)


_attach()
