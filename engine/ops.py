"""torch-named free functions: creation, combination, and every Tensor method as engine.<name>."""
from __future__ import annotations

import builtins
import operator

import numpy as np

from engine import device as _dev
from engine import dtype as D
from engine import tensor_ops as T
from engine.layout import Layout, ShapeError, norm_dim
from engine.storage import Storage
from engine.tensor import DeviceMismatchError, Tensor
from engine.tensor_index import *  # noqa: F401,F403  (unique, searchsorted, ... as engine.<name>)
from engine.tensor_more import *  # noqa: F401,F403  (einsum, tensordot, ... as engine.<name>)

# ---- random numbers -----------------------------------------------------------------------------


class Generator:
    """A seeded source of random numbers (numpy's PCG64 on the host, for every device)."""

    def __init__(self, seed: int | None = None):
        self.manual_seed(seed)

    def manual_seed(self, seed):
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        return self


default_generator = Generator(0)


def manual_seed(seed: int) -> Generator:
    return default_generator.manual_seed(seed)


# ---- creation -----------------------------------------------------------------------------------
def _shape(size) -> tuple:
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = size[0]
    try:
        shape = tuple(operator.index(s) for s in size)
    except TypeError:
        raise TypeError(f"size must be a sequence of integers, got {tuple(size)!r}") from None
    if builtins.any(s < 0 for s in shape):
        raise ShapeError(f"negative dimension in size {shape}")
    return shape


def _grad_free(requires_grad, what):
    """Factories accept torch's requires_grad=False; True is a training feature the engine lacks."""
    if requires_grad:
        raise NotImplementedError(f"{what}(requires_grad=True): the engine runs inference only (no autograd)")


def _number(v, what):
    """A Python number from a number or a one-element tensor (torch's Scalar-or-Tensor overloads)."""
    if isinstance(v, Tensor):
        if v.numel() != 1:
            raise ValueError(f"{what} must be a number or a one-element tensor, got shape {v.shape}")
        return v.item()
    D.scalar_category(v)
    return v


def _new(arr, device, dtype) -> Tensor:
    b = _dev.backend(device)
    return Tensor._wrap(arr(b), b, dtype)


def tensor(data, dtype=None, device=None) -> Tensor:
    """Copy Python data, a numpy array or a Tensor into a new tensor (torch.tensor)."""
    if isinstance(data, Tensor):
        return data.to(dtype=dtype or data.dtype, device=device or data.device, copy=True)
    if isinstance(data, (np.ndarray, np.generic)):  # numpy arrays and scalars keep their dtype, as in torch
        arr = np.asarray(data)
        dtype = dtype or D.get(arr.dtype)
    else:  # Python data: bools -> bool, ints -> int64, floats -> float32 (torch's default dtype)
        try:
            arr = np.asarray(data)
        except ValueError:  # numpy 2 refuses ragged nesting itself
            arr = np.empty(0, object)
        if arr.dtype == object:
            raise TypeError(f"tensor(): cannot build a tensor from ragged or non-numeric data {data!r:.80}")
        kinds = {"b": D.bool_, "i": D.int64, "u": D.int64, "f": D.float32}
        if dtype is None and arr.dtype.kind not in kinds:
            raise TypeError(f"tensor(): unsupported data of numpy dtype {arr.dtype}")
        dtype = dtype or kinds[arr.dtype.kind]
    dtype = D.get(dtype)
    return _new(lambda b: b.from_numpy(arr, dtype), device, dtype)


def _over(arr, b, what: str) -> Tensor:
    """A Tensor over an existing backend array, no copy: the storage is a flat 1-D view from the
    array's first element over its whole span, and the layout carries the array's strides."""
    isz = arr.itemsize
    if builtins.any(s % isz or s < 0 for s in arr.strides):
        raise ValueError(f"{what}: strides {arr.strides} (bytes) are not whole, non-negative elements; "
                         "copy it first (engine.tensor)")
    try:
        dt = D.get(arr.dtype)
    except TypeError as e:
        raise TypeError(f"{what}: {e}") from None
    if arr.size == 0:
        lay = Layout.contiguous(arr.shape)
        flat = arr.reshape(-1)
    else:
        lay = Layout(tuple(arr.shape), tuple(s // isz for s in arr.strides), 0)
        flat = b.xp.lib.stride_tricks.as_strided(arr, (lay.span(),), (isz,))  # keeps `arr` (the producer) alive
    t = Tensor(Storage(flat, b), lay, dt)
    t._arr = arr
    return t


def from_numpy(arr: np.ndarray, device=None) -> Tensor:
    """Zero-copy on the CPU, strided arrays included (like torch.from_numpy); a copy elsewhere."""
    arr = np.asarray(arr)
    b = _dev.backend(device or "cpu")
    if b.device.type == "cpu":
        return _over(arr, b, "from_numpy")
    dt = D.get(arr.dtype)
    return Tensor._wrap(b.from_numpy(arr, dt), b, dt)


as_tensor = tensor


def from_dlpack(obj) -> Tensor:
    """Zero-copy import of a DLPack producer (torch, cupy, numpy) on its own device, strided views too."""
    dev_type, index = obj.__dlpack_device__()
    kind = {1: "cpu", 2: "cuda"}.get(int(dev_type))
    if kind is None:
        raise ValueError(f"from_dlpack: unsupported DLPack device type {dev_type}")
    b = _dev.backend("cpu" if kind == "cpu" else f"cuda:{index}")
    try:
        arr = b.from_dlpack(obj)
    except (RuntimeError, BufferError, TypeError) as e:
        raise TypeError(f"from_dlpack: cannot import {getattr(obj, 'dtype', type(obj).__name__)} on {kind}: {e}. "
                        "numpy has no DLPack bfloat16: convert on the producer's side (t.float()) first") from e
    return _over(arr, b, "from_dlpack")


def empty(*size, dtype=None, device=None, requires_grad=False, memory_format=None) -> Tensor:
    _grad_free(requires_grad, "empty")
    dt = D.get(dtype or D.float32)
    return _new(lambda b: b.empty(_shape(size), dt), device, dt)


def _fill_value(value, dt: D.DType, wrap: bool):
    """The fill value in dt: full() refuses an integer that does not fit an integer dtype (as torch
    does); full_like() wraps it (-9 -> 247 in uint8), as torch does too."""
    value = _number(value, "fill_value")
    if dt.category == 1 and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        info = np.iinfo(dt.np_dtype)
        # c10's overflow rule: unsigned dtypes also take negatives down to -max (they wrap, -5 -> 251)
        low = -info.max if info.min == 0 else info.min
        if not wrap and not low <= value <= info.max:
            raise ValueError(f"full(): fill_value {value} cannot be converted to {dt.name} without overflow")
        return np.asarray(value).astype(dt.np_dtype)[()].item()
    return value


def full(size, fill_value, dtype=None, device=None, requires_grad=False, _wrap=False) -> Tensor:
    _grad_free(requires_grad, "full")
    dt = D.get(dtype) if dtype is not None else D.result_type(_number(fill_value, "fill_value"))
    return _new(lambda b: b.full(_shape((size,)), _fill_value(fill_value, dt, _wrap), dt), device, dt)


def zeros(*size, dtype=None, device=None, requires_grad=False) -> Tensor:
    _grad_free(requires_grad, "zeros")
    dt = D.get(dtype or D.float32)
    return _new(lambda b: b.full(_shape(size), 0, dt), device, dt)


def ones(*size, dtype=None, device=None, requires_grad=False) -> Tensor:
    _grad_free(requires_grad, "ones")
    dt = D.get(dtype or D.float32)
    return _new(lambda b: b.full(_shape(size), 1, dt), device, dt)


def _like(fn):
    def like(x: Tensor, *args, dtype=None, device=None, requires_grad=False, memory_format=None, **kw):
        return fn(x.shape, *args, dtype=dtype or x.dtype, device=device or x.device, requires_grad=requires_grad, **kw)
    like.__name__ = fn.__name__ + "_like"
    return like


zeros_like, ones_like, empty_like = _like(zeros), _like(ones), _like(empty)


def full_like(x, fill_value, dtype=None, device=None, requires_grad=False, memory_format=None):
    return full(x.shape, fill_value, dtype=dtype or x.dtype, device=device or x.device, requires_grad=requires_grad,
                _wrap=True)


def _new_of(fn):
    """Tensor.new_zeros / new_ones / new_empty / new_full: the tensor's dtype and device by default."""
    def new(x: Tensor, *args, dtype=None, device=None, requires_grad=False, **kw):
        size = args[0] if len(args) >= 1 and isinstance(args[0], (tuple, list)) else None
        if fn is full:  # new_full(size, fill_value)
            return full(args[0], args[1] if len(args) > 1 else kw.pop("fill_value"), dtype=dtype or x.dtype,
                        device=device or x.device, requires_grad=requires_grad)
        return fn(*(args if size is None else (size,)), dtype=dtype or x.dtype, device=device or x.device,
                  requires_grad=requires_grad, **kw)
    new.__name__ = "new_" + fn.__name__
    return new


Tensor.new_zeros, Tensor.new_ones, Tensor.new_empty, Tensor.new_full = (_new_of(zeros), _new_of(ones), _new_of(empty),
                                                                        _new_of(full))


def arange(start, end=None, step=1, dtype=None, device=None, requires_grad=False) -> Tensor:
    _grad_free(requires_grad, "arange")
    start, step = _number(start, "start"), _number(step, "step")
    end = None if end is None else _number(end, "end")
    if end is None:
        start, end = 0, start
    if step == 0:
        raise ValueError("arange(): step must be nonzero")
    if (end - start) * step < 0:
        raise ValueError(f"arange(): the bounds ({start}, {end}) are inconsistent with step {step}")
    dt = D.get(dtype) if dtype is not None else D.result_type(start, end, step)
    if dt is D.bool_:
        dt = D.int64
    return _new(lambda b: b.arange(start, end, step, dt), device, dt)


def linspace(start, end, steps: int, dtype=None, device=None, requires_grad=False) -> Tensor:
    _grad_free(requires_grad, "linspace")
    start, end, steps = _number(start, "start"), _number(end, "end"), operator.index(steps)
    if steps < 0:
        raise ValueError(f"linspace(): steps must be non-negative, got {steps}")
    dt = D.get(dtype or D.float32)
    return _new(lambda b: b.linspace(start, end, steps, dt), device, dt)


def logspace(start, end, steps: int, base: float = 10.0, dtype=None, device=None, requires_grad=False) -> Tensor:
    """base ** (start + i * step), torch's kernel: start and end converted to the dtype first, the
    step and the power in float64, the first half counted from start and the second from end."""
    _grad_free(requires_grad, "logspace")
    start, end, steps = _number(start, "start"), _number(end, "end"), operator.index(steps)
    if steps < 0:
        raise ValueError(f"logspace(): steps must be non-negative, got {steps}")
    dt = D.get(dtype or D.float32)
    if steps == 1:
        vals = np.array([float(base) ** float(start)])
    else:
        # C++ arithmetic on the converted bounds: integers subtract as ints, float32 in float32, 16-bit
        # floats (converted to float32) and float64 in their own precision
        if dt.category < 2:
            s0, s1 = int(np.asarray(start).astype(dt.np_dtype)), int(np.asarray(end).astype(dt.np_dtype))
        else:
            c = D.compute_dtype(dt).type
            s0, s1 = c(dt.np_dtype.type(start)), c(dt.np_dtype.type(end))
        with np.errstate(all="ignore"):
            step = float(s1 - s0) / (steps - 1)
            i = np.arange(steps, dtype=np.float64)
            exps = np.where(i < steps // 2, float(s0) + step * i, float(s1) - step * (steps - i - 1))
            vals = np.power(float(base), exps)
    return _new(lambda b: b.from_numpy(vals, dt), device, dt)


def eye(n: int, m: int | None = None, dtype=None, device=None, requires_grad=False) -> Tensor:
    _grad_free(requires_grad, "eye")
    n, m = operator.index(n), operator.index(n if m is None else m)
    if n < 0 or m < 0:
        raise ShapeError(f"eye(): n and m must be non-negative, got {n} and {m}")
    dt = D.get(dtype or D.float32)
    return _new(lambda b: b.eye(n, m, dt), device, dt)


def _random(kind):
    def fn(*size, generator=None, dtype=None, device=None, requires_grad=False):
        _grad_free(requires_grad, kind)
        dt = D.get(dtype or D.float32)
        if not dt.is_floating_point:
            raise TypeError(f"{kind}(): dtype must be floating, got {dt.name}")
        return _new(lambda b: b.random(kind, _shape(size), dt, generator or default_generator), device, dt)
    fn.__name__ = kind
    return fn


rand, randn = _random("rand"), _random("randn")


def rand_like(x, generator=None, dtype=None, device=None, requires_grad=False, memory_format=None):
    return rand(x.shape, generator=generator, dtype=dtype or x.dtype, device=device or x.device,
                requires_grad=requires_grad)


def randn_like(x, generator=None, dtype=None, device=None, requires_grad=False, memory_format=None):
    return randn(x.shape, generator=generator, dtype=dtype or x.dtype, device=device or x.device,
                 requires_grad=requires_grad)


def randint(*args, size=None, generator=None, dtype=None, device=None, requires_grad=False) -> Tensor:
    """randint(high, size) or randint(low, high, size): integers in [low, high)."""
    _grad_free(requires_grad, "randint")
    if size is None:
        if not args or not isinstance(args[-1], (tuple, list)):
            raise TypeError("randint(): expected randint(high, size) or randint(low, high, size)")
        args, size = args[:-1], args[-1]
    if len(args) not in (1, 2):
        raise TypeError(f"randint(): expected one or two bounds before size, got {args!r}")
    low, high = (0, args[0]) if len(args) == 1 else args
    if high <= low:
        raise ValueError(f"randint(): high ({high}) must be greater than low ({low})")
    g = generator or default_generator
    dt = D.get(dtype or D.int64)
    arr = g.rng.integers(low, high, size=_shape((size,)))
    return _new(lambda b: b.from_numpy(arr, dt), device, dt)


def randint_like(x, low=0, high=None, dtype=None, device=None, generator=None, requires_grad=False,
                 memory_format=None):
    if high is None:
        low, high = 0, low
    return randint(low, high, x.shape, generator=generator, dtype=dtype or x.dtype, device=device or x.device,
                   requires_grad=requires_grad)


def tril_indices(row: int, col: int, offset: int = 0, dtype=None, device=None) -> Tensor:
    """(2, n) int64 indices of the lower triangle of a row x col matrix, row-major."""
    r, c = np.tril_indices(row, offset, col)
    dt = D.get(dtype or D.int64)
    return _new(lambda b: b.from_numpy(np.stack([r, c]).reshape(2, -1), dt), device, dt)


def triu_indices(row: int, col: int, offset: int = 0, dtype=None, device=None) -> Tensor:
    r, c = np.triu_indices(row, offset, col)
    dt = D.get(dtype or D.int64)
    return _new(lambda b: b.from_numpy(np.stack([r, c]).reshape(2, -1), dt), device, dt)


# ---- combination --------------------------------------------------------------------------------
def _same_device(tensors, what):
    devs = {t.device for t in tensors}
    if len(devs) > 1:
        raise DeviceMismatchError(f"{what}: tensors on several devices: {sorted(map(str, devs))}")


def cat(tensors, dim: int = 0) -> Tensor:
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat(): expected a non-empty list of tensors")
    _same_device(tensors, "cat()")
    parts = [t for t in tensors if not (t.ndim == 1 and t.shape[0] == 0)] or tensors[:1]  # torch skips (0,)
    d = norm_dim(dim, parts[0].ndim)
    ref = parts[0].shape
    for i, t in enumerate(parts):
        if t.ndim != len(ref) or builtins.any(a != b for k, (a, b) in enumerate(zip(t.shape, ref)) if k != d):
            raise ShapeError(f"cat(): tensor {i} has shape {t.shape}, expected {ref} except at dim {d}")
    dt = D.result_type(*tensors)  # torch promotes over every input, empty ones included
    b = parts[0].backend
    return Tensor._wrap(b.concat([t.array for t in parts], d, dt), b, dt)


concat = concatenate = cat


def stack(tensors, dim: int = 0) -> Tensor:
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack(): expected a non-empty list of tensors")
    for i, t in enumerate(tensors):
        if t.shape != tensors[0].shape:
            raise ShapeError(f"stack(): tensor {i} has shape {t.shape}, tensor 0 has {tensors[0].shape}")
    d = norm_dim(dim, tensors[0].ndim, extra=1)
    return cat([t.unsqueeze(d) for t in tensors], d)


def atleast_1d(*tensors):
    out = tuple(t.reshape(1) if t.ndim == 0 else t for t in _seq(tensors))
    return out[0] if len(out) == 1 else out


def atleast_2d(*tensors):
    out = tuple(t.reshape(1, -1) if t.ndim < 2 else t for t in _seq(tensors))
    return out[0] if len(out) == 1 else out


def atleast_3d(*tensors):
    def up(t):  # torch: (n,) -> (1, n, 1); (m, n) -> (m, n, 1)
        return t.reshape(1, 1, 1) if t.ndim == 0 else (t.reshape(1, -1, 1) if t.ndim == 1 else
                                                         (t.unsqueeze(-1) if t.ndim == 2 else t))
    out = tuple(up(t) for t in _seq(tensors))
    return out[0] if len(out) == 1 else out


def _seq(tensors):
    return tuple(tensors[0]) if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)) else tensors


def hstack(tensors) -> Tensor:
    """cat along dim 1, or dim 0 for 1-d inputs (after atleast_1d)."""
    ts = [atleast_1d(t) for t in tensors]
    return cat(ts, 0 if ts and ts[0].ndim == 1 else 1)


def vstack(tensors) -> Tensor:
    return cat([atleast_2d(t) for t in tensors], 0)


def dstack(tensors) -> Tensor:
    return cat([atleast_3d(t) for t in tensors], 2)


def column_stack(tensors) -> Tensor:
    return hstack([t.reshape(-1, 1) if t.ndim <= 1 else t for t in tensors])


row_stack = vstack


def meshgrid(*tensors, indexing: str = "ij"):
    """Coordinate grids from 0-d or 1-d tensors: views (expand), as torch returns them."""
    ts = _seq(tensors)
    if indexing not in ("ij", "xy"):
        raise ValueError(f"meshgrid(): indexing must be 'ij' or 'xy', got {indexing!r}")
    if builtins.any(t.ndim > 1 for t in ts):
        raise ShapeError(f"meshgrid(): expects 0-d or 1-d tensors, got shapes {[t.shape for t in ts]}")
    _same_device(ts, "meshgrid()")
    if len({t.dtype for t in ts}) > 1:
        raise TypeError(f"meshgrid(): expects tensors of one dtype, got {sorted(t.dtype.name for t in ts)}")
    flat = [t.reshape(-1) for t in ts]
    swap = indexing == "xy" and len(flat) >= 2
    if swap:
        flat[0], flat[1] = flat[1], flat[0]
    shape = tuple(t.shape[0] for t in flat)
    grids = [t.reshape((1,) * i + (-1,) + (1,) * (len(flat) - i - 1)).expand(shape) for i, t in enumerate(flat)]
    if swap:  # torch: 'xy' is 'ij' with the first two inputs (and outputs) swapped
        grids[0], grids[1] = grids[1], grids[0]
    return tuple(grids)


def softmax(x, dim=None, dtype=None):
    from engine.functional import softmax as _softmax
    return _softmax(x, dim, dtype=dtype)


def log_softmax(x, dim=None, dtype=None):
    from engine.functional import log_softmax as _log_softmax
    return _log_softmax(x, dim, dtype=dtype)


Tensor.softmax, Tensor.log_softmax = softmax, log_softmax


def split(x, split_size, dim=0):
    return x.split(split_size, dim)


def chunk(x, chunks, dim=0):
    return x.chunk(chunks, dim)


def broadcast_tensors(*tensors):
    from engine.layout import broadcast_shapes
    shape = broadcast_shapes(*[t.shape for t in tensors])
    return tuple(t.expand(shape) for t in tensors)


def result_type(*operands):
    return D.result_type(*operands)


def promote_types(a, b):
    return D.promote_types(a, b)


where, matmul, bmm, mm = T.where, T.matmul, T.bmm, T.mm
maximum = lambda a, b: a.maximum(b)  # noqa: E731
minimum = lambda a, b: a.minimum(b)  # noqa: E731


# binaries that take a Python number first in torch (torch.add(2, t), torch.sub(2, t, alpha=2), torch.div(2, t)):
# exported as Tensor's own function, which handles a number on the left (tensor_ops._binary)
_NUMBER_FIRST = ("add", "sub", "mul", "div", "true_divide", "pow", "floor_divide", "remainder", "xlogy") + T.BITWISE_BINARY


def _export_methods(namespace: dict):
    """engine.exp(x), engine.sum(x, dim), ... call the Tensor method of the same name."""
    names = list(T.FLOAT_UNARY + T.KEEP_UNARY + T.BOOL_UNARY + T.ARITH_BINARY + T.BITWISE_BINARY) + [
        "add", "sub", "div", "true_divide", "pow", "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or",
        "logical_xor", "bitwise_not", "masked_fill", "clamp", "clip", "sum", "mean", "prod", "amax", "amin", "all",
        "any", "var", "std", "logsumexp", "argmax", "argmin", "max", "min", "cumsum", "cumprod", "norm",
        "index_select", "gather", "scatter", "scatter_add", "sort", "argsort", "topk", "flip", "roll",
        "repeat_interleave", "triu", "tril", "nonzero", "reshape", "transpose", "permute", "narrow", "select",
        "squeeze", "unsqueeze", "flatten", "unflatten", "movedim", "moveaxis", "unbind", "t", "round", "clone"]
    for name in names:
        if name in namespace:
            continue
        if name in _NUMBER_FIRST:
            namespace[name] = getattr(Tensor, name)
        else:
            namespace[name] = (lambda n: lambda x, *a, **k: getattr(x, n)(*a, **k))(name)
