"""Indexing, sorting and set ops of Tensor: index_select, gather, scatter (and scatter_reduce), sort,
topk, flip, roll, repeat, triu/tril, nonzero, index_add/copy/fill/put, masked_select, take,
take_along_dim, unique, searchsorted, bucketize, bincount.

Same contract as engine/tensor_ops.py: validate (errors name shapes, dtypes, dims and arguments; index
bounds are checked before any kernel runs), then one backend kernel or a composition. Each function is
a Tensor method of the same name; the ones torch also has only as functions are exported as
engine.<name> through __all__ (engine/ops.py).
"""
from __future__ import annotations

import builtins

from engine import dtype as D
from engine.layout import ShapeError, broadcast_shapes, norm_dim
from engine.tensor import DeviceMismatchError, DTypeError, Sorted, Tensor
from engine.tensor_ops import _dims, where


def _wrap(like: Tensor, arr, dt) -> Tensor:
    return Tensor._wrap(arr, like.backend, dt)


def _device(x: Tensor, *others, what: str):
    for o in others:
        if isinstance(o, Tensor) and o.device != x.device:
            raise DeviceMismatchError(f"{what}: tensors on {x.device} and {o.device}")


# ---- indexing ops, sorting ---------------------------------------------------------------------------------
def _index_tensor(x: Tensor, index, what: str) -> Tensor:
    if not isinstance(index, Tensor) or index.dtype.category != 1 or index.dtype is D.bool_:
        raise DTypeError(f"{what}: index must be an integer tensor, got {getattr(index, 'dtype', type(index).__name__)}")
    if index.device != x.device:
        raise DeviceMismatchError(f"{what}: index on {index.device}, tensor on {x.device}")
    return index


def _as_1d(x: Tensor, index: Tensor | None = None):
    """torch treats a 0-d tensor as one element along dim 0 in the indexing ops."""
    return (x.reshape(1), None if index is None else index.reshape(-1)) if x.ndim == 0 else (x, index)


def index_select(x: Tensor, dim: int, index: Tensor) -> Tensor:
    _index_tensor(x, index, "index_select()")
    d = norm_dim(dim, x.ndim)
    if index.ndim > 1:
        raise ShapeError(f"index_select(): index must be 1-d, got shape {index.shape}")
    if x.ndim == 0:
        return index_select(x.reshape(1), 0, index).reshape(())
    x._check_bounds(index.array, d, negative=False)
    return Tensor._wrap(x.backend.take(x.array, index.reshape(-1).array, d), x.backend, x.dtype)


def gather(x: Tensor, dim: int, index: Tensor) -> Tensor:
    _index_tensor(x, index, "gather()")
    d = norm_dim(dim, x.ndim)
    if index.numel() == 0:  # torch skips the shape checks for an empty index
        return Tensor._wrap(x.backend.empty(index.shape, x.dtype), x.backend, x.dtype)
    if x.ndim == 0 or index.ndim == 0:
        if x.ndim > 1 or index.ndim > 1:
            raise ShapeError(f"gather(): index shape {index.shape} does not fit input shape {x.shape} at dim {d}")
        x1, i1 = x.reshape(-1), index.reshape(-1)
        return gather(x1, 0, i1).reshape(index.shape)
    if index.ndim != x.ndim or builtins.any(i > n for k, (i, n) in enumerate(zip(index.shape, x.shape)) if k != d):
        raise ShapeError(f"gather(): index shape {index.shape} does not fit input shape {x.shape} at dim {d}")
    x._check_bounds(index.array, d, negative=False)
    return Tensor._wrap(x.backend.gather(x.array, d, index.array), x.backend, x.dtype)


def scatter(x: Tensor, dim: int, index: Tensor, src=None, reduce=None, *, value=None) -> Tensor:
    """torch.scatter: src a tensor or a number (or `value=`); reduce None, 'add' or 'multiply'."""
    _index_tensor(x, index, "scatter()")
    if src is None:
        src = value
    if src is None:
        raise TypeError("scatter(): give src (a tensor or a number) or value=")
    d = norm_dim(dim, x.ndim)
    if reduce not in (None, "add", "multiply"):
        raise ValueError(f"scatter(): reduce must be None, 'add' or 'multiply', got {reduce!r}")
    if index.numel() == 0:
        return x.clone()
    if x.ndim == 0 or index.ndim == 0:
        src1 = src.reshape(-1) if isinstance(src, Tensor) else src
        return scatter(x.reshape(-1), 0, index.reshape(-1), src1, reduce).reshape(x.shape)
    if index.ndim != x.ndim:
        raise ShapeError(f"scatter(): index has {index.ndim} dims, input has {x.ndim} ({index.shape} vs {x.shape})")
    if isinstance(src, Tensor) and (src.ndim != index.ndim
                                    or builtins.any(i > s for i, s in zip(index.shape, src.shape))):
        raise ShapeError(f"scatter(): index shape {index.shape} is larger than src shape {src.shape}")
    if builtins.any(i > n for k, (i, n) in enumerate(zip(index.shape, x.shape)) if k != d):
        raise ShapeError(f"scatter(): index shape {index.shape} is larger than input shape {x.shape} outside dim {d}")
    x._check_bounds(index.array, d, negative=False)
    if isinstance(src, Tensor) and src.device != x.device:
        raise DeviceMismatchError(f"scatter(): src on {src.device}, tensor on {x.device}")
    if isinstance(src, Tensor):
        src_v = src.to(x.dtype).array
    else:  # torch converts the number to the tensor's dtype first (2.5 -> 2 for integers)
        D.scalar_category(src)
        src_v = int(src) if x.dtype.category == 1 else (bool(src) if x.dtype is D.bool_ else src)
    return Tensor._wrap(x.backend.scatter(x.array, d, index.array, src_v, reduce), x.backend, x.dtype)


def scatter_add(x, dim, index, src):
    return scatter(x, dim, index, src, reduce="add")


def sort(x: Tensor, dim=-1, descending=False, stable=False):
    if x.ndim == 0:
        norm_dim(dim, 0)
        return Sorted(x.clone(), Tensor._wrap(x.backend.full((), 0, D.int64), x.backend, D.int64))
    v, i = x.backend.sort(x.array, norm_dim(dim, x.ndim), descending, bool(stable))
    return Sorted(Tensor._wrap(v, x.backend, x.dtype), Tensor._wrap(i, x.backend, D.int64))


def argsort(x, dim=-1, descending=False, stable=False):
    return sort(x, dim, descending, stable).indices


def topk(x: Tensor, k: int, dim=-1, largest=True, sorted=True):
    d = norm_dim(dim, x.ndim)
    n = x.shape[d] if x.ndim else 1
    if not 0 <= k <= n:
        raise ShapeError(f"topk(): k={k} out of range for dim {d} of size {n} (shape {x.shape})")
    if x.ndim == 0:  # torch returns the element itself, for k 0 or 1
        return sort(x)
    v, i = x.backend.topk(x.array, k, d, largest)
    return Sorted(Tensor._wrap(v, x.backend, x.dtype), Tensor._wrap(i, x.backend, D.int64))


def flip(x: Tensor, *dims, **kw) -> Tensor:
    """flip(x, dims), flip(x, 0, 1) or flip(x, dims=...)."""
    if "dims" in kw:
        dims = (kw.pop("dims"),)
    if kw or not dims:
        raise TypeError(f"flip(): expected dims, got {tuple(kw) or 'none'}")
    dims = _dims(x, dims[0] if len(dims) == 1 else dims)
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


def repeat_interleave(x, repeats=None, dim=None, *, output_size=None) -> Tensor:
    """torch.repeat_interleave(x, repeats, dim, output_size); repeat_interleave(repeats) gives
    each index i repeats[i] times. output_size, when given, must equal the result's length."""
    if repeats is None:  # the one-argument form: x holds the repeats
        from engine.ops import arange
        x, repeats = arange(x.shape[0] if x.ndim else 1, device=x.device), x
    if dim is None:
        x, dim = x.flatten(), 0
    d = norm_dim(dim, x.ndim)
    if isinstance(repeats, Tensor):
        if repeats.dtype.category != 1 or repeats.dtype is D.bool_ or repeats.ndim > 1:
            raise DTypeError(f"repeat_interleave(): repeats must be an int or a 0-d/1-d integer tensor, got "
                             f"{repeats.dtype.name} of shape {repeats.shape}")
        if repeats.ndim and repeats.shape[0] not in (1, x.shape[d]):
            raise ShapeError(f"repeat_interleave(): {repeats.shape[0]} repeats for dim {d} of size {x.shape[d]}")
        # the output's length depends on the values, so they come to the host (lists suit cupy too)
        r = repeats.tolist() if repeats.ndim and repeats.shape[0] != 1 else int(repeats.reshape(-1)[0].item())
        if isinstance(r, list) and r and builtins.min(r) < 0:
            raise ValueError(f"repeat_interleave(): repeats must be non-negative, got {builtins.min(r)}")
    else:
        r = int(repeats)
    total = (x.shape[d] * r) if isinstance(r, int) else None
    if isinstance(r, int) and r < 0:
        raise ValueError(f"repeat_interleave(): repeats must be non-negative, got {r}")
    out = Tensor._wrap(x.backend.repeat_interleave(x.array, r, d), x.backend, x.dtype)
    total = out.shape[d] if total is None else total
    if output_size is not None and output_size != total:
        raise ValueError(f"repeat_interleave(): output_size={output_size} but the repeats give {total}")
    return out


def _tri(x: Tensor, diagonal: int, upper: bool) -> Tensor:
    if x.ndim < 2:
        raise ShapeError(f"{'triu' if upper else 'tril'}(): needs at least 2 dims, got shape {x.shape}")
    return Tensor._wrap(x.backend.tri(x.array, diagonal, upper), x.backend, x.dtype)


def triu(x, diagonal=0):
    return _tri(x, diagonal, True)


def tril(x, diagonal=0):
    return _tri(x, diagonal, False)


def nonzero(x: Tensor, *, as_tuple=False):
    """(n, ndim) int64 indices of the nonzero elements; as_tuple: one 1-d tensor per dim (a 0-d
    input counts as 1-d, as in torch)."""
    idx = Tensor._wrap(x.backend.nonzero(x.array.reshape(x.shape or (1,))), x.backend, D.int64)
    if not x.ndim and not as_tuple:
        return idx[:, :0]
    return tuple(idx[:, i].contiguous() for i in range(idx.shape[1])) if as_tuple else idx


# ---- indexing -------------------------------------------------------------------------------------------
def _index_1d(x: Tensor, dim: int, index: Tensor, what: str):
    _index_tensor(x, index, what)
    d = norm_dim(dim, x.ndim)
    if index.ndim > 1:
        raise ShapeError(f"{what}: index must be 0-d or 1-d, got shape {index.shape}")
    if x.ndim:
        x._check_bounds(index.array, d, negative=False)
    elif index.numel():
        x.reshape(1)._check_bounds(index.array, 0, negative=False)
    return d, index.reshape(-1)


def _put_along(x: Tensor, dim: int, index: Tensor, values, accumulate: bool, what: str) -> Tensor:
    d, index = _index_1d(x, dim, index, what)
    if x.ndim == 0:
        vals = values.reshape(-1) if isinstance(values, Tensor) else values
        return _put_along(x.reshape(1), 0, index, vals, accumulate, what).reshape(())
    if isinstance(values, Tensor):
        want = x.shape[:d] + (index.shape[0],) + x.shape[d + 1:]
        if values.ndim and values.shape != want:
            raise ShapeError(f"{what}: source shape {values.shape} must be {want} (input {x.shape}, "
                             f"{index.shape[0]} indices at dim {d})")
        _device(x, values, what=what)
        values = values.to(x.dtype).array
    key = (slice(None),) * d + (index.array,)
    return _wrap(x, x.backend.index_put(x.array, key, values, accumulate), x.dtype)


def index_add(x: Tensor, dim: int, index: Tensor, source: Tensor, *, alpha=1) -> Tensor:
    return _put_along(x, dim, index, source if alpha == 1 else source * alpha, True, "index_add()")


def index_copy(x: Tensor, dim: int, index: Tensor, source: Tensor) -> Tensor:
    return _put_along(x, dim, index, source, False, "index_copy()")


def index_fill(x: Tensor, dim: int, index: Tensor, value) -> Tensor:
    if isinstance(value, Tensor):
        if value.ndim:
            raise ShapeError(f"index_fill(): value must be a number or a 0-d tensor, got shape {value.shape}")
        value = value.item()
    return _put_along(x, dim, index, value, False, "index_fill()")


def index_put(x: Tensor, indices, values, accumulate: bool = False) -> Tensor:
    """x[indices] = values (or += with accumulate, repeated indices adding up), out of place."""
    key = x._array_key(tuple(indices))
    if isinstance(values, Tensor):
        _device(x, values, what="index_put()")
        values = values.to(x.dtype).array
    return _wrap(x, x.backend.index_put(x.array, key, values, bool(accumulate)), x.dtype)


def masked_select(x: Tensor, mask: Tensor) -> Tensor:
    if not isinstance(mask, Tensor) or mask.dtype is not D.bool_:
        raise DTypeError(f"masked_select(): mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask))}")
    shape = broadcast_shapes(x.shape, mask.shape)
    return x.expand(shape)[mask.expand(shape)]


def take(x: Tensor, index: Tensor) -> Tensor:
    _index_tensor(x, index, "take()")
    if index.numel() == 0:
        return Tensor._wrap(x.backend.empty(index.shape, x.dtype), x.backend, x.dtype)
    return x.reshape(-1)[index]


def take_along_dim(x: Tensor, indices: Tensor, dim=None) -> Tensor:
    _index_tensor(x, indices, "take_along_dim()")
    if dim is None:
        return take(x, indices.reshape(-1))
    d = norm_dim(dim, x.ndim)
    if x.ndim != indices.ndim:
        raise ShapeError(f"take_along_dim(): input {x.shape} and indices {indices.shape} need the same number of dims")
    shape = broadcast_shapes(x.shape[:d] + (1,) + x.shape[d + 1:], indices.shape[:d] + (1,) + indices.shape[d + 1:])
    xs = x.expand(shape[:d] + (x.shape[d],) + shape[d + 1:])
    ix = indices.expand(shape[:d] + (indices.shape[d],) + shape[d + 1:])
    n = x.shape[d]
    xs._check_bounds(ix.array, d)  # negative indices count from the end, as in torch
    ix = where(ix < 0, ix + n, ix) if n else ix
    return gather(xs, d, ix)


SCATTER_REDUCE = ("sum", "prod", "mean", "amax", "amin")


def scatter_reduce(x: Tensor, dim: int, index: Tensor, src: Tensor, reduce: str, *, include_self: bool = True):
    if reduce not in SCATTER_REDUCE:
        raise ValueError(f"scatter_reduce(): reduce must be one of {', '.join(SCATTER_REDUCE)}, got {reduce!r}")
    _index_tensor(x, index, "scatter_reduce()")
    if x.ndim == 0 or index.ndim == 0:
        return scatter_reduce(x.reshape(-1), 0, index.reshape(-1), src.reshape(-1), reduce,
                              include_self=include_self).reshape(x.shape)
    d = norm_dim(dim, x.ndim)
    if index.numel() == 0:
        return x.clone()
    if index.ndim != x.ndim or src.ndim != x.ndim or builtins.any(i > s for i, s in zip(index.shape, src.shape)):
        raise ShapeError(f"scatter_reduce(): index {index.shape}, src {src.shape} and input {x.shape} do not fit")
    x._check_bounds(index.array, d, negative=False)
    _device(x, src, what="scatter_reduce()")
    arr = x.backend.scatter_reduce(x.array, d, index.array, src.to(x.dtype).array, reduce, bool(include_self))
    return _wrap(x, arr, x.dtype)


def unique(x: Tensor, sorted: bool = True, return_inverse: bool = False, return_counts: bool = False, dim=None):
    """Sorted unique values (torch sorts on every device whatever `sorted` says), with the inverse
    indices and the counts when asked."""
    d = None if dim is None else norm_dim(dim, x.ndim)
    v, inv, cnt = x.backend.unique(x.array, d, return_inverse, return_counts)
    out = [_wrap(x, v, x.dtype)]
    if return_inverse:
        out.append(_wrap(x, inv, D.int64))
    if return_counts:
        out.append(_wrap(x, cnt, D.int64))
    return out[0] if len(out) == 1 else tuple(out)


def searchsorted(sorted_sequence: Tensor, values, *, out_int32: bool = False, right: bool = False, side=None,
                 sorter=None) -> Tensor:
    if side not in (None, "left", "right"):
        raise ValueError(f"searchsorted(): side must be 'left' or 'right', got {side!r}")
    if side is not None:
        if right and side == "left":
            raise ValueError("searchsorted(): side='left' contradicts right=True")
        right = side == "right"
    seq = sorted_sequence
    if sorter is not None:
        seq = gather(seq, -1, sorter)
    scalar = not isinstance(values, Tensor)
    from engine.ops import tensor
    vals = tensor(values, dtype=seq.dtype, device=seq.device) if scalar else values
    if seq.ndim > 1 and seq.shape[:-1] != vals.shape[:-1]:
        raise ShapeError(f"searchsorted(): sorted_sequence {seq.shape} and values {vals.shape} must share the "
                         "leading dims (or the sequence must be 1-d)")
    out = D.int32 if out_int32 else D.int64
    v = vals.reshape(1) if vals.ndim == 0 else vals
    r = _wrap(seq, seq.backend.searchsorted(seq.array, v.array, bool(right), out), out)
    return r.reshape(()) if vals.ndim == 0 else r


def bucketize(x, boundaries: Tensor, *, out_int32: bool = False, right: bool = False) -> Tensor:
    if boundaries.ndim != 1:
        raise ShapeError(f"bucketize(): boundaries must be 1-d, got shape {boundaries.shape}")
    return searchsorted(boundaries, x, out_int32=out_int32, right=right)


def bincount(x: Tensor, weights=None, minlength: int = 0) -> Tensor:
    if x.ndim != 1 or x.dtype.category != 1 or x.dtype is D.bool_:
        raise DTypeError(f"bincount(): input must be a 1-d integer tensor, got {x.dtype.name} of shape {x.shape}")
    if minlength < 0:
        raise ValueError(f"bincount(): minlength must be non-negative, got {minlength}")
    if x.numel() and int(x.min().item()) < 0:
        raise ValueError("bincount(): input must be non-negative")
    if weights is not None and weights.shape != x.shape:
        raise ShapeError(f"bincount(): weights {weights.shape} must match input {x.shape}")
    out = D.int64 if weights is None else (weights.dtype if weights.dtype.is_floating_point else D.float64)
    return _wrap(x, x.backend.bincount(x.array, None if weights is None else weights.array, minlength, out), out)


__all__ = ["index_add", "index_copy", "index_fill", "index_put", "masked_select", "take", "take_along_dim",
           "scatter_reduce", "unique", "searchsorted", "bucketize", "bincount"]
for _fn in (index_select, gather, scatter, scatter_add, sort, argsort, topk, flip, roll, repeat, repeat_interleave,
            triu, tril, nonzero, index_add, index_copy, index_fill, index_put, masked_select, take, take_along_dim,
            scatter_reduce, unique, searchsorted, bucketize, bincount):
    setattr(Tensor, _fn.__name__, _fn)
