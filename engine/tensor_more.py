"""More torch-named Tensor ops: pointwise ops with parameters, scans and linear-algebra helpers
(the indexing and set ops live in engine/tensor_index.py).

Same contract as engine/tensor_ops.py: validate (errors name shapes, dtypes, dims and arguments),
work out torch's result dtype, call one backend kernel or compose existing ops. Every function is a
Tensor method of the same name and is exported as engine.<name> (engine/ops.py imports __all__).
"""
from __future__ import annotations

import builtins
from collections import namedtuple

import ml_dtypes
import numpy as np

from engine import dtype as D
from engine import tensor_index as I
from engine.tensor_index import _device, _wrap
from engine import tensor_ops as T
from engine.layout import ShapeError, broadcast_shapes, norm_dim
from engine.tensor import DTypeError, Tensor

CumResult = namedtuple("CumResult", "values indices")  # torch.return_types.cummax / cummin
VarMean = namedtuple("VarMean", "var mean")


def _pointwise(op: str, operands: tuple, params: tuple, out: D.DType, what: str) -> Tensor:
    x = next(v for v in operands if isinstance(v, Tensor))
    _device(x, *operands, what=what)
    broadcast_shapes(*[v.shape for v in operands if isinstance(v, Tensor)])
    arrs = tuple(v.array if isinstance(v, Tensor) else v for v in operands)
    return _wrap(x, x.backend.pointwise(op, arrs, params, out), out)


# ---- pointwise ----------------------------------------------------------------------------------------
def nan_to_num(x: Tensor, nan: float = 0.0, posinf=None, neginf=None) -> Tensor:
    """nan -> nan, +inf -> posinf (default: the dtype's max), -inf -> neginf (default: its lowest)."""
    if not x.dtype.is_floating_point:
        return x.clone()
    info = ml_dtypes.finfo(x.dtype.np_dtype)
    posinf = float(info.max) if posinf is None else posinf
    neginf = float(info.min) if neginf is None else neginf
    return _pointwise("nan_to_num", (x,), (nan, posinf, neginf), x.dtype, "nan_to_num()")


def lerp(x: Tensor, end: Tensor, weight) -> Tensor:
    """x + weight * (end - x), with torch's two-sided formula (exact at weight 0 and 1)."""
    if not isinstance(end, Tensor) or end.dtype is not x.dtype or not x.dtype.is_floating_point:
        raise DTypeError(f"lerp(): start and end must be floating tensors of one dtype, got {x.dtype.name} and "
                         f"{getattr(end, 'dtype', type(end).__name__)}")
    if isinstance(weight, Tensor) and weight.dtype is not x.dtype:
        raise DTypeError(f"lerp(): weight dtype {weight.dtype.name} differs from the tensors' {x.dtype.name}")
    return _pointwise("lerp", (x, end, weight), (), x.dtype, "lerp()")


def addcmul(x: Tensor, tensor1: Tensor, tensor2: Tensor, *, value=1) -> Tensor:
    out = D.result_type(x, tensor1, tensor2)
    return _pointwise("addcmul", (x, tensor1, tensor2), (value,), out, "addcmul()")


def addcdiv(x: Tensor, tensor1: Tensor, tensor2: Tensor, *, value=1) -> Tensor:
    out = D.result_type(x, tensor1, tensor2)
    if out.category < 2:
        raise DTypeError("addcdiv(): integer division is not supported; use floating tensors (as torch requires)")
    return _pointwise("addcdiv", (x, tensor1, tensor2), (value,), out, "addcdiv()")


def isclose(a: Tensor, b, rtol: float = 1e-05, atol: float = 1e-08, equal_nan: bool = False) -> Tensor:
    if isinstance(b, Tensor) and b.dtype is not a.dtype:
        raise DTypeError(f"isclose(): both tensors must have one dtype, got {a.dtype.name} and {b.dtype.name}")
    if rtol < 0 or atol < 0:
        raise ValueError(f"isclose(): rtol and atol must be non-negative, got {rtol} and {atol}")
    return _pointwise("isclose", (a, b), (rtol, atol, equal_nan), D.bool_, "isclose()")


def allclose(a: Tensor, b, rtol: float = 1e-05, atol: float = 1e-08, equal_nan: bool = False) -> bool:
    return bool(isclose(a, b, rtol, atol, equal_nan).all().item())


# ---- reductions and scans ------------------------------------------------------------------------------
def var_mean(x: Tensor, dim=None, unbiased=None, keepdim=False, *, correction=None):
    mean_dim = None if isinstance(dim, (bool, np.bool_)) else dim  # var_mean(x, True): the bool is unbiased
    return VarMean(T.var(x, dim, unbiased, keepdim, correction=correction), T.mean(x, mean_dim, keepdim))


def std_mean(x: Tensor, dim=None, unbiased=None, keepdim=False, *, correction=None):
    v, m = var_mean(x, dim, unbiased, keepdim, correction=correction)
    return VarMean(v.sqrt(), m)


def _cum_extreme(x: Tensor, dim: int, largest: bool) -> CumResult:
    if x.ndim == 0:
        norm_dim(dim, 0)
        return CumResult(x.clone(), T.argmax(x))
    v, i = x.backend.cum_extreme(x.array, norm_dim(dim, x.ndim), largest)
    return CumResult(_wrap(x, v, x.dtype), _wrap(x, i, D.int64))


def cummax(x: Tensor, dim: int) -> CumResult:
    return _cum_extreme(x, dim, True)


def cummin(x: Tensor, dim: int) -> CumResult:
    return _cum_extreme(x, dim, False)


def logcumsumexp(x: Tensor, dim: int) -> Tensor:
    out = D.to_float(x.dtype)
    if x.ndim == 0:
        norm_dim(dim, 0)
        return x.to(out, copy=True)
    return _wrap(x, x.backend.logcumsumexp(x.array, norm_dim(dim, x.ndim), out), out)


# ---- linear algebra ------------------------------------------------------------------------------------
def einsum(equation: str, *operands) -> Tensor:
    """torch.einsum(equation, *operands) or einsum(equation, [operands]); one dtype for all."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if not operands or not builtins.all(isinstance(o, Tensor) for o in operands):
        raise TypeError(f"einsum(): expected tensors after the equation, got {[type(o).__name__ for o in operands]}")
    dts = {o.dtype for o in operands}
    if len(dts) > 1:
        raise DTypeError(f"einsum(): operands must share one dtype, got {sorted(d.name for d in dts)}")
    _device(operands[0], *operands, what="einsum()")
    x = operands[0]
    eq = _explicit_ellipsis(equation.replace(" ", ""), [o.ndim for o in operands])
    out = x.dtype
    lhs, rhs = eq.split("->")
    if out.category < 2 and out is not D.int64:
        terms = lhs.split(",")
        # torch sums a label found in one operand only (and not in the output) first; sum widens to int64
        if builtins.any(sum(c in t for t in terms) == 1 and c not in rhs for c in set(lhs) - {","}):
            out = D.int64
    try:
        arr = x.backend.einsum(eq, [o.array for o in operands], out)
    except ValueError as e:  # numpy names the subscript problem; add the shapes
        raise ShapeError(f"einsum({equation!r}) with shapes {[o.shape for o in operands]}: {e}") from None
    return _wrap(x, arr, out)


def _explicit_ellipsis(eq: str, ndims) -> str:
    """The equation with '...' spelled out in free letters and an explicit output, as torch reads it:
    broadcast dims of '...' lead the output only where the output names '...' (implicit mode: always)."""
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ndims):
        raise ShapeError(f"einsum({eq!r}): {len(terms)} operand terms for {len(ndims)} operands")
    if not arrow:  # implicit: labels seen once, sorted, after the broadcast dims
        once = sorted(c for c in set(lhs.replace(",", "").replace(".", ""))
                      if lhs.replace(".", "").count(c) == 1)
        rhs = ("..." if "..." in lhs else "") + "".join(once)
    if "..." not in lhs:
        return f"{lhs}->{rhs}"
    free = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in eq]
    width = builtins.max(n - len(t.replace("...", "")) for t, n in zip(terms, ndims) if "..." in t)
    letters = "".join(free[:width])
    terms = [t.replace("...", letters[width - (n - len(t.replace("...", ""))):]) for t, n in zip(terms, ndims)]
    return ",".join(terms) + "->" + rhs.replace("...", letters)


def tensordot(a: Tensor, b: Tensor, dims=2) -> Tensor:
    """Contract the last `dims` dims of a with the first of b, or the dims listed in a pair of lists."""
    if isinstance(dims, Tensor):
        dims = dims.tolist()
    if isinstance(dims, int):
        if dims < 0 or dims > builtins.min(a.ndim, b.ndim):
            raise ShapeError(f"tensordot(): dims={dims} out of range for shapes {a.shape} and {b.shape}")
        da, db = list(range(a.ndim - dims, a.ndim)), list(range(dims))
    else:
        da, db = ([d] if isinstance(d, int) else list(d) for d in dims)
    da, db = [norm_dim(d, a.ndim) for d in da], [norm_dim(d, b.ndim) for d in db]
    if len(da) != len(db):
        raise ShapeError(f"tensordot(): {len(da)} dims of a and {len(db)} dims of b to contract")
    for i, j in zip(da, db):  # torch: a contracted size 1 against n sums the other side first
        if a.shape[i] != b.shape[j]:
            if a.shape[i] == 1:
                b = b.sum(j, keepdim=True, dtype=b.dtype)
            elif b.shape[j] == 1:
                a = a.sum(i, keepdim=True, dtype=a.dtype)
            else:
                raise ShapeError(f"tensordot(): dim {i} of {a.shape} and dim {j} of {b.shape} do not match")
    ra, rb = [d for d in range(a.ndim) if d not in da], [d for d in range(b.ndim) if d not in db]
    k = int(np.prod([a.shape[d] for d in da]))
    am = a.permute(ra + da).reshape(-1, k)
    bm = b.permute(db + rb).reshape(k, -1)
    return T.matmul(am, bm).reshape([a.shape[d] for d in ra] + [b.shape[d] for d in rb])


def outer(a: Tensor, b: Tensor) -> Tensor:
    if a.ndim != 1 or b.ndim != 1:
        raise ShapeError(f"outer(): expected two 1-d tensors, got {a.shape} and {b.shape}")
    return a.reshape(-1, 1) * b.reshape(1, -1)


def _add_scaled(x: Tensor, a: Tensor, b: Tensor, beta, alpha, product) -> Tensor:
    """beta * x + alpha * product(a, b), as torch's addmm family: 16-bit floats keep the product in
    float32 and round once; integer dtypes truncate alpha and beta to integers; bool is logical; a beta
    of 0 ignores x (nan and inf included)."""
    dt = D.result_type(x, a, b)
    if dt is D.bool_:
        p = product(a, b)
        out = p if alpha else p & False
        return out.expand(broadcast_shapes(x.shape, p.shape)) | (x & bool(beta))
    if dt.category == 1:
        alpha, beta = int(alpha), int(beta)
    wide = dt.is_reduced
    p = product(a.float(), b.float()) if wide else product(a, b)
    shape = broadcast_shapes(x.shape, p.shape)
    if alpha != 1:
        p = p * alpha
    if beta != 0:
        p = p + ((x.float() if wide else x) if beta == 1 else (x.float() if wide else x) * beta)
    return p.expand(shape).to(dt).contiguous()


def addmm(x: Tensor, mat1: Tensor, mat2: Tensor, *, beta=1, alpha=1) -> Tensor:
    return _add_scaled(x, mat1, mat2, beta, alpha, T.mm)


def addmv(x: Tensor, mat: Tensor, vec: Tensor, *, beta=1, alpha=1) -> Tensor:
    if mat.ndim != 2 or vec.ndim != 1:
        raise ShapeError(f"addmv(): expected a matrix and a vector, got {mat.shape} and {vec.shape}")
    return _add_scaled(x, mat, vec, beta, alpha, T.matmul)


def addr(x: Tensor, vec1: Tensor, vec2: Tensor, *, beta=1, alpha=1) -> Tensor:
    if D.result_type(x, vec1, vec2).category < 2:  # torch refuses here what addmm truncates
        for name, v in (("beta", beta), ("alpha", alpha)):
            if isinstance(v, float):
                raise TypeError(f"addr(): for integer or bool tensors, {name} must not be a float (got {v})")
    return _add_scaled(x, vec1, vec2, beta, alpha, outer)


def baddbmm(x: Tensor, batch1: Tensor, batch2: Tensor, *, beta=1, alpha=1) -> Tensor:
    return _add_scaled(x, batch1, batch2, beta, alpha, T.bmm)


def addbmm(x: Tensor, batch1: Tensor, batch2: Tensor, *, beta=1, alpha=1) -> Tensor:
    return _add_scaled(x, batch1, batch2, beta, alpha, lambda a, b: T.bmm(a, b).sum(0, dtype=a.dtype))


def dot(a: Tensor, b: Tensor) -> Tensor:
    if a.ndim != 1 or b.ndim != 1 or a.shape != b.shape:
        raise ShapeError(f"dot(): expected two 1-d tensors of one size, got {a.shape} and {b.shape}")
    return T.matmul(a, b)


def mv(mat: Tensor, vec: Tensor) -> Tensor:
    if mat.ndim != 2 or vec.ndim != 1:
        raise ShapeError(f"mv(): expected a matrix and a vector, got {mat.shape} and {vec.shape}")
    return T.matmul(mat, vec)


def diagonal(x: Tensor, offset: int = 0, dim1: int = 0, dim2: int = 1) -> Tensor:
    """A view of the diagonal over dims dim1 and dim2, as the last dim."""
    return x._view(x.layout.diagonal(int(offset), dim1, dim2))


def diag(x: Tensor, diagonal: int = 0) -> Tensor:
    """1-d -> a square matrix with x on the given diagonal; 2-d -> that diagonal (a copy)."""
    if x.ndim == 2:
        return globals()["diagonal"](x, diagonal).contiguous()
    if x.ndim != 1:
        raise ShapeError(f"diag(): expected a 1-d or 2-d tensor, got shape {x.shape}")
    from engine.ops import arange, zeros
    n = x.shape[0] + builtins.abs(diagonal)
    out = zeros(n, n, dtype=x.dtype, device=x.device)
    i = arange(x.shape[0], device=x.device)
    out[i + builtins.max(-diagonal, 0), i + builtins.max(diagonal, 0)] = x
    return out


def trace(x: Tensor) -> Tensor:
    if x.ndim != 2:
        raise ShapeError(f"trace(): expected a matrix, got shape {x.shape}")
    return diagonal(x).sum()


# ---- shape -------------------------------------------------------------------------------------------------
def tile(x: Tensor, *dims) -> Tensor:
    dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
    dims = (1,) * (x.ndim - len(dims)) + tuple(dims)
    return I.repeat(x, *dims)


def rot90(x: Tensor, k: int = 1, dims=(0, 1)) -> Tensor:
    if len(dims) != 2:
        raise ShapeError(f"rot90(): dims must have 2 entries, got {dims!r}")
    d0, d1 = norm_dim(dims[0], x.ndim), norm_dim(dims[1], x.ndim)
    if d0 == d1:
        raise ShapeError(f"rot90(): dims must differ, got {dims!r}")
    k %= 4
    if k == 1:
        return I.flip(x, d1).transpose(d0, d1)
    if k == 2:
        return I.flip(x, (d0, d1))
    if k == 3:
        return I.flip(x, d0).transpose(d0, d1)
    return x.clone()


__all__ = ["nan_to_num", "lerp", "addcmul", "addcdiv", "isclose", "allclose", "var_mean", "std_mean", "cummax",
           "cummin", "logcumsumexp", "einsum", "tensordot", "outer", "addmm", "addmv", "addr", "baddbmm", "addbmm",
           "dot", "mv", "diagonal", "diag", "trace", "tile", "rot90"]
for _name in __all__:
    if _name != "einsum":
        setattr(Tensor, _name, globals()[_name])
Tensor.ger = outer
