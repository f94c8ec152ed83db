"""The math methods of Tensor: elementwise, reductions, matmul, indexing ops, sorting.

Each function validates its operands (shapes, dtypes, devices; errors name them), works out the
result dtype with torch's promotion rules, and calls one backend kernel. They are attached to Tensor
as methods at the bottom of this file and exported as engine.<name> functions by engine/ops.py.
"""
from __future__ import annotations

import numpy as np

from engine import dtype as D
from engine.layout import ShapeError, broadcast_shapes, norm_dim
from engine.tensor import DeviceMismatchError, DTypeError, MinMax, Tensor

# ---- elementwise --------------------------------------------------------------------------------
FLOAT_UNARY = ("exp", "exp2", "log", "log2", "log10", "log1p", "expm1", "sqrt", "rsqrt", "sin", "cos", "tan", "asin",
               "acos", "atan", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "sigmoid", "erf", "erfc", "erfinv",
               "gelu", "gelu_tanh", "silu", "reciprocal")
KEEP_UNARY = ("neg", "abs", "relu", "floor", "ceil", "trunc", "frac", "round", "sign", "square", "positive")
BOOL_UNARY = ("isnan", "isinf", "isfinite", "logical_not", "signbit")
# binary ops whose result is floating even for integer inputs (torch promotes them like true division)
FLOAT_BINARY = ("div", "atan2", "hypot", "logaddexp", "xlogy", "copysign")


_FLOAT_UNARY = frozenset(FLOAT_UNARY)


def _unary(x: Tensor, op: str) -> Tensor:
    if op in _FLOAT_UNARY and x.dtype.category == 2:  # the common case: a float op of a float tensor
        b = x.storage.backend
        return Tensor._wrap(b.unary(op, x.array, x.dtype), b, x.dtype)
    if op in FLOAT_UNARY:
        out = D.to_float(x.dtype)
    elif op in BOOL_UNARY:
        out = D.bool_
    else:
        if x.dtype is D.bool_ and op in ("neg", "relu", "abs", "positive"):
            raise DTypeError(f"{op}() is not defined for bool tensors")
        if op == "frac" and x.dtype.category < 2:
            raise DTypeError(f"frac() needs a floating tensor, got {x.dtype.name}")
        out = D.int64 if (x.dtype is D.bool_ and op == "square") else x.dtype  # torch: square(bool) -> int64
    if op in ("floor", "ceil", "round", "trunc", "positive") and x.dtype.category < 2 or (
            op == "sign" and x.dtype is D.bool_):
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


def _binary_types(a, b, op: str, kind: str):
    """(compute dtype, result dtype) of a binary op, torch's promotion plus the op's kind."""
    res = D.result_type(a, b)
    if kind == "cmp":
        return res, D.bool_
    if kind == "logical":
        return D.bool_, D.bool_
    if kind == "bitwise" and res.category == 2:
        names = [v.dtype.name if isinstance(v, Tensor) else type(v).__name__ for v in (a, b)]
        raise DTypeError(f"{op}() is not defined for floating tensors ({', '.join(names)})")
    if op in FLOAT_BINARY:
        res = D.to_float(res)
    return res, res


def _binary(x: Tensor, other, op: str, kind: str = "arith") -> Tensor:
    if type(other) is Tensor and type(x) is Tensor and kind == "arith" and op not in FLOAT_BINARY:
        # the common case first: two tensors of one dtype, shape and backend (so one device). The
        # general path below gives the same dtype and shape; it only costs more to find them.
        dt = x.dtype
        if other.dtype is dt and other.layout.shape == x.layout.shape and other.storage.backend is x.storage.backend:
            b = x.storage.backend
            return Tensor._wrap(b.binary(op, x.array, other.array, dt, dt), b, dt)
    if not isinstance(x, Tensor):  # reflected call with a scalar on the left: engine.add(2, t)
        return _binary_swapped(other, x, op, kind)
    if isinstance(other, Tensor):
        broadcast_shapes(x.shape, other.shape)  # ShapeError names both shapes
    compute, out = _binary_types(x, other, op, kind)
    b = x.backend
    return Tensor._wrap(b.binary(op, x.array, _operand(x, other), compute, out), b, out)


def _binary_swapped(t: Tensor, left, op: str, kind: str) -> Tensor:
    """left <op> t, where `left` came first (a reflected operator or engine.sub(2, t))."""
    if isinstance(left, Tensor):
        return _binary(left, t, op, kind)
    compute, out = _binary_types(left, t, op, kind)
    return Tensor._wrap(t.backend.binary(op, _operand(t, left), t.array, compute, out), t.backend, out)


def div(x, other, rounding_mode=None):
    """True division, or torch's rounding_mode 'trunc' / 'floor' (which keep integer dtypes)."""
    if rounding_mode is None:
        return _binary(x, other, "div")
    if rounding_mode not in ("trunc", "floor"):
        raise ValueError(f"div(): rounding_mode must be None, 'trunc' or 'floor', got {rounding_mode!r}")
    return _binary(x, other, "div_" + rounding_mode)


ARITH_BINARY = ("mul", "floor_divide", "remainder", "fmod", "maximum", "minimum", "fmax", "fmin") + FLOAT_BINARY[1:]
BITWISE_BINARY = ("bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_left_shift", "bitwise_right_shift")


def round(x: Tensor, decimals: int = 0) -> Tensor:
    """Round half to even; with decimals, torch's scaled rounding (floating tensors only)."""
    if not decimals:
        return _unary(x, "round")
    if x.dtype.category < 2:
        raise DTypeError(f"round(decimals={decimals}): needs a floating tensor, got {x.dtype.name}")
    return Tensor._wrap(x.backend.pointwise("round", (x.array,), (int(decimals),), x.dtype), x.backend, x.dtype)


def bitwise_not(x: Tensor) -> Tensor:
    if x.dtype.category == 2:
        raise DTypeError(f"bitwise_not() is not defined for floating tensors ({x.dtype.name})")
    if x.dtype is D.bool_:
        return _unary(x, "logical_not")
    return Tensor._wrap(x.backend.unary("bitwise_not", x.array, x.dtype), x.backend, x.dtype)


def add(x, other, alpha=1):
    return _binary(x, other if alpha == 1 else other * alpha, "add")


def sub(x, other, alpha=1):
    return _binary(x, other if alpha == 1 else other * alpha, "sub")


def pow(x, exponent):
    if isinstance(exponent, (int, float)) and isinstance(x, Tensor) and exponent == 2:
        return _unary(x, "square") if x.dtype.category else _binary(x, exponent, "pow")
    if (isinstance(x, Tensor) and x.dtype.category < 2 and isinstance(exponent, (int, np.integer))
            and not isinstance(exponent, bool) and exponent < 0):
        raise ValueError(f"pow(): integers to negative integer powers are not allowed ({x.dtype.name} tensor "
                         f"** {exponent}), as in torch")
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
        broadcast_shapes(x.shape, mask.shape)
    except ShapeError:
        raise ShapeError(f"masked_fill(): mask of shape {mask.shape} does not broadcast to {x.shape}") from None
    if isinstance(value, Tensor):
        if value.ndim:
            raise ShapeError(f"masked_fill(): value must be a 0-dim tensor or a number, got shape {value.shape}")
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


def _correction(dim, unbiased, correction):
    """torch's var/std forms: var(dim, unbiased, keepdim), var(unbiased) and var(dim, *, correction)."""
    if isinstance(dim, (bool, np.bool_)):  # var(x, True): the bool is `unbiased`, not dim 1
        dim, unbiased = None, bool(dim)
    if unbiased is not None and correction is not None:
        raise ValueError("var()/std(): give only one of unbiased and correction")
    if unbiased is not None:
        return dim, int(unbiased)
    return dim, 1 if correction is None else correction


def var(x, dim=None, unbiased=None, keepdim=False, *, correction=None):
    dim, c = _correction(dim, unbiased, correction)
    return _reduce(x, "var", dim, keepdim, correction=c)


def std(x, dim=None, unbiased=None, keepdim=False, *, correction=None):
    return var(x, dim, unbiased, keepdim, correction=correction).sqrt()


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


def norm(x, p="fro", dim=None, keepdim=False, dtype=None):
    """torch.norm: a vector p-norm over `dim` (all elements when None); 'fro' is the 2-norm over
    one or two dims; 'nuc' the sum of singular values over two dims (a matrix without dim)."""
    if dtype is not None:
        x = x.to(dtype)
    if x.dtype.category < 2:
        raise DTypeError(f"norm(): expected a floating tensor, got {x.dtype.name}")
    if x.dtype.is_reduced:  # torch accumulates 16-bit norms in float32 (x**p would overflow float16)
        return norm(x.float(), p, dim, keepdim).to(x.dtype)
    if p == "nuc":
        dims = _dims(x, dim)
        if len(dims) != 2:
            raise ShapeError(f"norm(p='nuc'): needs two dims, got dim={dim!r} for shape {x.shape}")
        rest = [d for d in range(x.ndim) if d not in dims]
        xm = x.permute(rest + list(dims))
        out = Tensor._wrap(x.backend.svdvals(xm.array, x.dtype), x.backend, x.dtype).sum(-1)
        if keepdim:
            for d in sorted(dims):
                out = out.unsqueeze(d)
        return out
    if p == "fro":
        p = 2
    if not isinstance(p, (int, float)) or isinstance(p, bool):
        raise ValueError(f"norm(): p must be a number, 'fro' or 'nuc', got {p!r}")
    if dim is not None and not isinstance(dim, (tuple, list)):
        dim = (dim,)
    a = x.abs()
    if p == float("inf"):
        return a.amax(dim, keepdim)
    if p == float("-inf"):
        return a.amin(dim, keepdim)
    if p == 0:
        return (a != 0).to(x.dtype).sum(dim, keepdim)
    if p == 1:
        return a.sum(dim, keepdim)
    if p == 2:
        return _reduce(x, "sumsq", dim, keepdim).sqrt()
    return (a ** p).sum(dim, keepdim) ** (1.0 / p)


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


# ---- attach as methods ------------------------------------------------------------------------------
def _attach():
    for op in FLOAT_UNARY + KEEP_UNARY + BOOL_UNARY:
        setattr(Tensor, op, (lambda o: lambda self: _unary(self, o))(op))
    for op in ARITH_BINARY:
        setattr(Tensor, op, (lambda o: lambda self, other: _binary(self, other, o))(op))
    for op in ("eq", "ne", "lt", "le", "gt", "ge"):
        setattr(Tensor, op, (lambda o: lambda self, other: _binary(self, other, o, "cmp"))(op))
    for op in ("logical_and", "logical_or", "logical_xor"):
        setattr(Tensor, op, (lambda o: lambda self, other: _binary(self, other, o, "logical"))(op))
    for op in BITWISE_BINARY:
        setattr(Tensor, op, (lambda o: lambda self, other: _binary(self, other, o, "bitwise"))(op))
    for fn in (add, sub, pow, masked_fill, clamp, sum, mean, prod, amax, amin, all, any, var, std, logsumexp,
               argmax, argmin, max, min, cumsum, cumprod, norm, matmul, bmm, mm, div, round, bitwise_not):
        setattr(Tensor, fn.__name__, fn)
    Tensor.true_divide = div
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
    Tensor.__invert__ = bitwise_not
    Tensor.__lshift__ = lambda s, o: _binary(s, o, "bitwise_left_shift", "bitwise")
    Tensor.__rshift__ = lambda s, o: _binary(s, o, "bitwise_right_shift", "bitwise")
    Tensor.__rlshift__ = lambda s, o: _binary_swapped(s, o, "bitwise_left_shift", "bitwise")
    Tensor.__rrshift__ = lambda s, o: _binary_swapped(s, o, "bitwise_right_shift", "bitwise")
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
from engine import tensor_index  # noqa: E402,F401  (indexing and sorting ops, attached there)
