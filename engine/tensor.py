"""Tensor: a handle on (Storage, Layout, dtype, device) with torch-named methods.

Views (transpose, permute, narrow, slicing, reshape of contiguous data, expand) build a new Layout
over the same Storage. Every op validates shapes, dtypes and devices here and then calls one backend
kernel; kernels return pooled arrays.
"""
from __future__ import annotations

import math
from collections import namedtuple

import numpy as np

from engine import device as _dev
from engine import dtype as D
from engine.layout import Layout, ShapeError, broadcast_shapes, norm_dim
from engine.storage import Storage


class DTypeError(TypeError):
    """An op got a dtype it does not accept; the message names the op and the dtypes."""


class DeviceMismatchError(RuntimeError):
    """Operands live on different devices; the message names them."""


MinMax = namedtuple("MinMax", "values indices")
Sorted = namedtuple("Sorted", "values indices")


class Tensor:
    __slots__ = ("storage", "layout", "dtype", "_arr", "__weakref__")
    __hash__ = object.__hash__
    __array_priority__ = 1000  # numpy scalars defer to our reflected operators

    def __init__(self, storage: Storage, layout: Layout, dtype: D.DType):
        self.storage, self.layout, self.dtype = storage, layout, dtype
        self._arr = None

    # ---- construction helpers ------------------------------------------------------------------
    @staticmethod
    def _wrap(arr, backend, dtype: D.DType | None = None) -> "Tensor":
        """A Tensor over a contiguous backend array (normally a pooled kernel output)."""
        t = Tensor.__new__(Tensor)
        t.storage = Storage.over(arr, backend)  # the flat view is made when a view of t needs it
        t.layout = Layout.contiguous(arr.shape)  # shared per shape
        t.dtype = dtype or D.get(arr.dtype)
        t._arr = arr
        return t

    def _view(self, layout: Layout) -> "Tensor":
        return Tensor(self.storage, layout, self.dtype)

    @property
    def backend(self):
        return self.storage.backend

    @property
    def array(self):
        """The backend array (numpy or cupy) this tensor describes: a view, never a copy."""
        a = self._arr
        if a is None:
            st, lay = self.storage, self.layout
            src = st._shaped  # the whole op output this storage was made over, not flattened yet
            if src is not None and not lay.offset and lay.is_contiguous() and lay.numel == src.size:
                a = src.reshape(lay.shape)  # one reshape, not a flat view and then a strided one
            else:
                a = st.backend.strided(st.data, lay)
            self._arr = a
        return a

    # ---- metadata --------------------------------------------------------------------------------
    shape = property(lambda self: self.layout.shape)
    ndim = property(lambda self: len(self.layout.shape))
    device = property(lambda self: self.storage.backend.device)
    is_cuda = property(lambda self: self.device.type == "cuda")
    T = property(lambda self: self.permute(tuple(reversed(range(self.ndim)))))
    mT = property(lambda self: self.transpose(-2, -1))

    def dim(self) -> int:
        return self.ndim

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[norm_dim(dim, self.ndim)]

    def stride(self, dim=None):
        return self.layout.strides if dim is None else self.layout.strides[norm_dim(dim, self.ndim)]

    def numel(self) -> int:
        return self.layout.numel

    def element_size(self) -> int:
        return self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.numel() * self.dtype.itemsize

    def is_contiguous(self) -> bool:
        return self.layout.is_contiguous()

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def data_ptr(self) -> int:
        data = self.storage.data
        base = data.ctypes.data if hasattr(data, "ctypes") else data.data.ptr
        return base + self.layout.offset * self.dtype.itemsize

    def __len__(self) -> int:
        if not self.ndim:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self) -> str:
        extra = "" if self.dtype is D.float32 else f", dtype={self.dtype!r}"
        dev = "" if self.device.type == "cpu" else f", device='{self.device}'"
        body = np.array2string(self.numpy().astype(np.float32) if self.dtype.is_reduced else self.numpy(),
                               separator=", ", threshold=64, prefix="tensor(")
        return f"tensor({body}{extra}{dev})"

    # ---- host interop ------------------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """A numpy array: a view on the CPU, a host copy from other devices."""
        return self.backend.to_numpy(self.array)

    def tolist(self):
        a = self.numpy()
        return (a.astype(np.float32) if self.dtype.is_reduced else a).tolist()

    def item(self):
        if self.numel() != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.tolist() if self.ndim == 0 else self.reshape(()).tolist()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __bool__(self):
        if self.numel() != 1:
            raise ValueError(f"the truth value of a tensor with {self.numel()} elements is ambiguous")
        return bool(self.item())

    def __index__(self):
        if self.dtype.category != 1 or self.numel() != 1:
            raise TypeError(f"only integer tensors of one element can be used as an index (got {self.dtype}, "
                            f"shape {self.shape})")
        return int(self.item())

    def __dlpack__(self, *args, **kwargs):
        try:
            return self.array.__dlpack__(*args, **kwargs)
        except (BufferError, TypeError) as e:
            raise TypeError(f"cannot export a {self.dtype.name} tensor through DLPack from {self.device}: {e}. "
                            "numpy cannot export ml_dtypes' bfloat16: convert with .float() first.") from e

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()

    # ---- device and dtype ----------------------------------------------------------------------------
    def to(self, *args, dtype=None, device=None, non_blocking=False, copy=False, memory_format=None) -> "Tensor":
        """torch's three forms: to(dtype, non_blocking, copy), to(device, dtype, non_blocking, copy) and
        to(other, non_blocking, copy); non_blocking is accepted (copies here are synchronous)."""
        if (len(args) == 1 and args[0] is self.dtype and dtype is None and device is None and not copy
                and memory_format is None):
            return self  # to(own dtype): the common no-op, without parsing the forms below
        _memory_format(memory_format)
        args, flags = list(args), []
        while args and isinstance(args[-1], (bool, np.bool_)):
            flags.insert(0, bool(args.pop()))
        if len(flags) > 2 or len(args) > 2:
            raise TypeError(f"to(): too many positional arguments {tuple(args) + tuple(flags)}; expected "
                            "(dtype | device | tensor[, dtype], non_blocking, copy)")
        copy = flags[1] if len(flags) == 2 else copy
        for a in args:
            if isinstance(a, Tensor):
                dtype, device = a.dtype, a.device
            elif isinstance(a, (D.DType, np.dtype)) or (isinstance(a, str) and a.removeprefix("torch.") in D._BY_NAME):
                dtype = a
            else:
                device = a
        dtype = D.get(dtype) if dtype is not None else self.dtype
        dev = _dev.parse(device) if device is not None else self.device
        if dev != self.device:
            host = self.numpy()
            target = _dev.backend(dev)
            return Tensor._wrap(target.from_numpy(host, dtype), target, dtype)
        if dtype is self.dtype and not copy:
            return self
        return Tensor._wrap(self.backend.cast(self.array, dtype), self.backend, dtype)

    def cpu(self):
        return self.to("cpu")

    def cuda(self, index: int = 0):
        return self.to(f"cuda:{index}")

    def type_as(self, other):
        return self.to(other.dtype)

    def contiguous(self, memory_format=None) -> "Tensor":
        _memory_format(memory_format)
        if self.is_contiguous():
            return self
        return Tensor._wrap(self.backend.contiguous(self.array, self.dtype), self.backend, self.dtype)

    def clone(self, memory_format=None) -> "Tensor":
        _memory_format(memory_format)
        return Tensor._wrap(self.backend.contiguous(self.array, self.dtype), self.backend, self.dtype)

    def detach(self):
        return self

    # ---- views ------------------------------------------------------------------------------------------
    def view(self, *shape) -> "Tensor":
        if len(shape) == 1 and isinstance(shape[0], (D.DType, str)):
            return self._view_dtype(D.get(shape[0]))
        shape = _shape_arg(shape)
        lay = self.layout.view(shape)
        if lay is None:
            raise ShapeError(f"view size {shape} is not compatible with input size {self.shape} and strides "
                             f"{self.layout.strides}; use reshape() (which copies) instead")
        return self._view(lay)

    def _view_dtype(self, dt: D.DType) -> "Tensor":
        if dt.itemsize != self.dtype.itemsize:
            raise DTypeError(f"view({dt.name}) needs the same element size as {self.dtype.name}")
        data = self.storage.data.view(dt.np_dtype)
        return Tensor(Storage(data, self.backend), self.layout, dt)

    def reshape(self, *shape) -> "Tensor":
        shape = _shape_arg(shape)
        lay = self.layout.view(shape)
        return self._view(lay) if lay is not None else self.contiguous().view(shape)

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> "Tensor":
        if self.ndim == 0:
            return self.reshape(1)
        s, e = norm_dim(start_dim, self.ndim), norm_dim(end_dim, self.ndim)
        if s > e:
            raise ShapeError(f"flatten(): start_dim {start_dim} comes after end_dim {end_dim} (shape {self.shape})")
        return self.reshape(self.shape[:s] + (math.prod(self.shape[s:e + 1]),) + self.shape[e + 1:])

    def unflatten(self, dim: int, sizes) -> "Tensor":
        d = norm_dim(dim, self.ndim)
        return self.reshape(self.shape[:d] + tuple(sizes) + self.shape[d + 1:])

    def transpose(self, d0: int, d1: int) -> "Tensor":
        return self._view(self.layout.transpose(d0, d1))

    def t(self) -> "Tensor":
        if self.ndim > 2:
            raise ShapeError(f"t() expects a tensor with <= 2 dims, got shape {self.shape}")
        return self.transpose(0, 1) if self.ndim == 2 else self

    def permute(self, *dims) -> "Tensor":
        return self._view(self.layout.permute(_shape_arg(dims)))

    def movedim(self, source, destination) -> "Tensor":
        """source and destination: ints or sequences of the same length (torch.movedim)."""
        src = [norm_dim(d, self.ndim) for d in (source if isinstance(source, (tuple, list)) else (source,))]
        dst = [norm_dim(d, self.ndim) for d in (destination if isinstance(destination, (tuple, list)) else (destination,))]
        if len(src) != len(dst) or len(set(src)) != len(src) or len(set(dst)) != len(dst):
            raise ShapeError(f"movedim(): source {source!r} and destination {destination!r} must be sequences of "
                             "the same length without repeated dims")
        order = [None] * self.ndim
        for s_, d_ in zip(src, dst):
            order[d_] = s_
        rest = iter(d for d in range(self.ndim) if d not in src)
        return self.permute([o if o is not None else next(rest) for o in order])

    moveaxis = movedim

    def narrow(self, dim: int, start: int, length: int) -> "Tensor":
        return self._view(self.layout.narrow(dim, int(start), int(length)))

    def select(self, dim: int, index: int) -> "Tensor":
        d = norm_dim(dim, self.ndim)
        n = self.shape[d]
        if not -n <= int(index) < n:  # torch raises IndexError here, like x[..., i]
            raise IndexError(f"index {int(index)} is out of bounds for dimension {d} with size {n} (shape {self.shape})")
        return self._view(self.layout.select(d, int(index)))

    def unsqueeze(self, dim: int) -> "Tensor":
        return self._view(self.layout.unsqueeze(dim))

    def squeeze(self, dim=None) -> "Tensor":
        return self._view(self.layout.squeeze(dim))

    def expand(self, *shape) -> "Tensor":
        return self._view(self.layout.expand(_shape_arg(shape)))

    def expand_as(self, other) -> "Tensor":
        return self.expand(other.shape)

    def broadcast_to(self, shape) -> "Tensor":
        return self.expand(shape)

    def split(self, split_size, dim: int = 0):
        d = norm_dim(dim, self.ndim)
        n = self.shape[d]
        if isinstance(split_size, int):
            if split_size <= 0:
                raise ValueError(f"split_size must be positive, got {split_size}")
            sizes = [min(split_size, n - i) for i in range(0, n, split_size)] or [0]
        else:
            sizes = list(split_size)
            if sum(sizes) != n:
                raise ShapeError(f"split sizes {sizes} do not sum to dim {d} of size {n} (shape {self.shape})")
        out, start = [], 0
        for s in sizes:
            out.append(self.narrow(d, start, s))
            start += s
        return tuple(out)

    def chunk(self, chunks: int, dim: int = 0):
        if chunks <= 0:
            raise ValueError(f"chunk(): chunks must be positive, got {chunks}")
        d = norm_dim(dim, self.ndim)
        n = self.shape[d]
        if n == 0:  # torch returns `chunks` empty pieces for an empty dim
            return tuple(self.narrow(d, 0, 0) for _ in range(chunks))
        return self.split(-(-n // chunks), d)

    def unbind(self, dim: int = 0):
        return tuple(self.select(dim, i) for i in range(self.shape[norm_dim(dim, self.ndim)]))

    # ---- indexing -------------------------------------------------------------------------------------
    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if any(_is_advanced(k) for k in key):
            return Tensor._wrap(self.backend.getitem(self.array, self._array_key(key)), self.backend, self.dtype)
        return self._view(self._basic_layout(key))

    def __setitem__(self, key, value):
        key = key if isinstance(key, tuple) else (key,)
        val = self._value_array(value)
        if any(_is_advanced(k) for k in key):
            self.backend.setitem(self.array, self._array_key(key), val)
        else:
            target = self._view(self._basic_layout(key))
            _check_broadcast(np.shape(val), target.shape, "setitem")
            self.backend.copy_(target.array, val)

    def _basic_layout(self, key) -> Layout:
        if sum(k is Ellipsis for k in key) > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        used = sum(1 for k in key if k is not None and k is not Ellipsis)
        if used > self.ndim:
            raise IndexError(f"too many indices for tensor of dimension {self.ndim} (got {used}, shape {self.shape})")
        lay, d, src = self.layout, 0, 0  # d: dim in the layout being built; src: dim of self
        for k in key:
            if k is Ellipsis:
                d += self.ndim - used
                src += self.ndim - used
            elif k is None:
                lay = lay.unsqueeze(d)
                d += 1
            elif isinstance(k, slice):
                lay = lay.slice(d, k.start, k.stop, k.step)
                d += 1
                src += 1
            else:
                if isinstance(k, (float, np.floating)) or (isinstance(k, Tensor) and k.dtype.category != 1):
                    raise IndexError(f"only integers, slices, None, ..., and integer or bool tensors are valid "
                                     f"indices (got {k!r})")
                i = int(k)
                n = lay.shape[d]
                if not -n <= i < n:
                    raise IndexError(f"index {i} is out of bounds for dimension {src} with size {n} (shape {self.shape})")
                lay = lay.select(d, i)
                src += 1
        return lay

    def _array_key(self, key):
        out, d = [], 0
        for k in key:
            if isinstance(k, Tensor):
                if k.device != self.device:
                    raise DeviceMismatchError(f"index on {k.device} for a tensor on {self.device}")
                if k.dtype.category == 1:
                    self._check_bounds(k.array, d)
                elif k.dtype is D.bool_:
                    self._check_mask(k.shape, d)
                out.append(k.array)
                d += k.ndim if k.dtype is D.bool_ else 1
            elif isinstance(k, (list, np.ndarray)):
                a = np.asarray(k)
                if a.size == 0 and a.dtype.kind == "f":  # x[[]]: an empty integer index, as in torch
                    a = a.astype(np.int64)
                if a.dtype.kind in "iu":
                    self._check_bounds(a, d)
                elif a.dtype == np.bool_:
                    self._check_mask(a.shape, d)
                out.append(self.backend.from_numpy(a, D.get(a.dtype) if a.dtype != np.bool_ else D.bool_))
                d += a.ndim if a.dtype == np.bool_ else 1
            else:
                if isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)):
                    self._check_bounds(np.asarray([k]), d)  # numpy would name its own axis; cupy may wrap
                out.append(k)
                if k is Ellipsis:
                    d += self.ndim - sum(1 for x in key if x is not None and x is not Ellipsis
                                         and not isinstance(x, (bool, np.bool_)))
                elif k is not None and not isinstance(k, (bool, np.bool_)):
                    d += 1
        return tuple(out)

    def _check_mask(self, mshape, d: int):
        want = self.shape[d:d + len(mshape)]
        if tuple(mshape) != want:
            raise IndexError(f"boolean mask of shape {tuple(mshape)} does not match shape {want} at dim {d} of a "
                             f"tensor of shape {self.shape}")

    def _check_bounds(self, index, d: int, negative: bool = True):
        """IndexError unless every index fits dim d; `negative=False` for index_select/gather/scatter,
        which torch refuses negative indices for."""
        if d >= self.ndim:
            raise IndexError(f"too many indices for tensor of dimension {self.ndim} (shape {self.shape})")
        n = self.shape[d]
        if index.size == 0:
            return
        if isinstance(index, np.ndarray):  # host indices (lists, ints) are checked here, on any device
            lo, hi = (int(index.min()), int(index.max())) if index.size else (0, 0)
        else:
            lo, hi = self.backend.index_bounds(index, n)
        low = -n if negative else 0
        if lo < low or hi >= n:
            bad = lo if lo < low else hi
            raise IndexError(f"index {bad} is out of bounds for dimension {d} with size {n} (shape {self.shape})")

    def _value_array(self, value):
        if isinstance(value, Tensor):
            if value.device != self.device:
                raise DeviceMismatchError(f"value on {value.device} for a tensor on {self.device}")
            return value.array
        if isinstance(value, (list, tuple, np.ndarray)):
            return self.backend.from_numpy(np.asarray(value), self.dtype)
        D.scalar_category(value)
        return value

    # ---- in-place ---------------------------------------------------------------------------------------
    def copy_(self, src) -> "Tensor":
        val = self._value_array(src)
        _check_broadcast(np.shape(val), self.shape, "copy_")
        self.backend.copy_(self.array, val)
        return self

    def fill_(self, value) -> "Tensor":
        self.backend.copy_(self.array, value.item() if isinstance(value, Tensor) else value)
        return self

    def zero_(self) -> "Tensor":
        return self.fill_(0)

    def _inplace(self, op, other):
        r = getattr(self, op)(other)
        if r.dtype.category > self.dtype.category:  # torch's can_cast: never float -> int or int -> bool
            raise DTypeError(f"in-place {op}: result type {r.dtype.name} can't be cast to the tensor's {self.dtype.name}")
        if r.shape != self.shape:
            raise ShapeError(f"in-place {op}: result shape {r.shape} differs from the tensor's {self.shape}")
        return self.copy_(r)

    def add_(self, other, alpha=1):
        return self._inplace("add", other if alpha == 1 else other * alpha)

    def sub_(self, other):
        return self._inplace("sub", other)

    def mul_(self, other):
        return self._inplace("mul", other)

    def div_(self, other):
        return self._inplace("div", other)

    def masked_fill_(self, mask, value):
        return self.copy_(self.masked_fill(mask, value))

    def clamp_(self, min=None, max=None):
        return self.copy_(self.clamp(min, max))


def _dtype_method(name: str, dt: D.DType):
    def method(self, memory_format=None) -> "Tensor":
        return self.to(dt, memory_format=memory_format)
    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"self.to({dt!r})"
    return method


for _name, _dt in (("float", D.float32), ("half", D.float16), ("bfloat16", D.bfloat16), ("double", D.float64),
                   ("long", D.int64), ("int", D.int32), ("bool", D.bool_), ("byte", D.uint8)):
    setattr(Tensor, _name, _dtype_method(_name, _dt))


MEMORY_FORMATS = ("preserve_format", "contiguous_format", "channels_last", "channels_last_3d")


def _memory_format(fmt):
    """torch's memory_format (a torch.memory_format or its name): accepted, and without effect on
    values; engine tensors made by an op are always row-major (which is what contiguous() means here)."""
    if fmt is not None and str(fmt).removeprefix("torch.") not in MEMORY_FORMATS:
        raise ValueError(f"memory_format={fmt!r} is not one of {', '.join(MEMORY_FORMATS)}")


def _shape_arg(shape) -> tuple:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return tuple(map(int, shape))


def _is_advanced(k) -> bool:
    # a Python bool is a 0-d mask (x[True] adds a dim, x[False] an empty one), not the integer 1 or 0
    return isinstance(k, (Tensor, list, np.ndarray, bool, np.bool_)) or (hasattr(k, "__cuda_array_interface__"))


def _check_broadcast(src_shape, dst_shape, what: str):
    try:
        if broadcast_shapes(tuple(src_shape), tuple(dst_shape)) != tuple(dst_shape):
            raise ShapeError("")
    except ShapeError:
        raise ShapeError(f"{what}: a value of shape {tuple(src_shape)} cannot be broadcast to "
                         f"shape {tuple(dst_shape)}") from None


from engine import tensor_ops  # noqa: E402,F401  (attaches the math methods to Tensor)
