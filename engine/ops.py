"""torch-named free functions: creation, combination, and every Tensor method as engine.<name>."""
from __future__ import annotations

import builtins

import numpy as np

from engine import device as _dev
from engine import dtype as D
from engine import tensor_ops as T
from engine.layout import Layout, ShapeError, norm_dim
from engine.storage import Storage
from engine.tensor import DeviceMismatchError, Tensor

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
    shape = tuple(int(s) for s in size)
    if builtins.any(s < 0 for s in shape):
        raise ShapeError(f"negative dimension in size {shape}")
    return shape


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


def empty(*size, dtype=None, device=None) -> Tensor:
    dt = D.get(dtype or D.float32)
    return _new(lambda b: b.empty(_shape(size), dt), device, dt)


def full(size, fill_value, dtype=None, device=None) -> Tensor:
    dt = D.get(dtype) if dtype is not None else D.result_type(fill_value)
    return _new(lambda b: b.full(_shape((size,)), fill_value, dt), device, dt)


def zeros(*size, dtype=None, device=None) -> Tensor:
    dt = D.get(dtype or D.float32)
    return _new(lambda b: b.full(_shape(size), 0, dt), device, dt)


def ones(*size, dtype=None, device=None) -> Tensor:
    dt = D.get(dtype or D.float32)
    return _new(lambda b: b.full(_shape(size), 1, dt), device, dt)


def _like(fn):
    def like(x: Tensor, *args, dtype=None, device=None):
        return fn(x.shape, *args, dtype=dtype or x.dtype, device=device or x.device)
    like.__name__ = fn.__name__ + "_like"
    return like


zeros_like, ones_like, empty_like = _like(zeros), _like(ones), _like(empty)


def full_like(x, fill_value, dtype=None, device=None):
    return full(x.shape, fill_value, dtype=dtype or x.dtype, device=device or x.device)


def arange(start, end=None, step=1, dtype=None, device=None) -> Tensor:
    if end is None:
        start, end = 0, start
    if step == 0:
        raise ValueError("arange(): step must be nonzero")
    dt = D.get(dtype) if dtype is not None else D.result_type(start, end, step)
    if dt is D.bool_:
        dt = D.int64
    return _new(lambda b: b.arange(start, end, step, dt), device, dt)


def linspace(start, end, steps: int, dtype=None, device=None) -> Tensor:
    dt = D.get(dtype or D.float32)
    return _new(lambda b: b.linspace(start, end, int(steps), dt), device, dt)


def eye(n: int, m: int | None = None, dtype=None, device=None) -> Tensor:
    dt = D.get(dtype or D.float32)
    return _new(lambda b: b.eye(n, n if m is None else m, dt), device, dt)


def _random(kind):
    def fn(*size, generator=None, dtype=None, device=None):
        dt = D.get(dtype or D.float32)
        if not dt.is_floating_point:
            raise TypeError(f"{kind}(): dtype must be floating, got {dt.name}")
        return _new(lambda b: b.random(kind, _shape(size), dt, generator or default_generator), device, dt)
    fn.__name__ = kind
    return fn


rand, randn = _random("rand"), _random("randn")


def rand_like(x, generator=None):
    return rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def randn_like(x, generator=None):
    return randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def randint(low, high, size, generator=None, dtype=None, device=None) -> Tensor:
    g = generator or default_generator
    dt = D.get(dtype or D.int64)
    arr = g.rng.integers(low, high, size=_shape((size,)))
    return _new(lambda b: b.from_numpy(arr, dt), device, dt)


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


def _export_methods(namespace: dict):
    """engine.exp(x), engine.sum(x, dim), ... call the Tensor method of the same name."""
    names = list(T.FLOAT_UNARY + T.KEEP_UNARY + T.BOOL_UNARY) + [
        "add", "sub", "mul", "div", "pow", "floor_divide", "remainder", "atan2", "eq", "ne", "lt", "le",
        "gt", "ge", "logical_and", "logical_or", "logical_xor", "bitwise_and", "bitwise_or", "bitwise_xor",
        "masked_fill", "clamp", "clip", "sum", "mean", "prod", "amax", "amin", "all", "any", "var", "std",
        "logsumexp", "argmax", "argmin", "max", "min", "cumsum", "cumprod", "norm", "index_select", "gather",
        "scatter", "scatter_add", "sort", "argsort", "topk", "flip", "roll", "repeat_interleave", "triu",
        "tril", "nonzero", "reshape", "transpose", "permute", "narrow", "select", "squeeze", "unsqueeze",
        "flatten", "unflatten", "movedim", "unbind", "t"]
    for name in names:
        if name not in namespace:
            namespace[name] = (lambda n: lambda x, *a, **k: getattr(x, n)(*a, **k))(name)
