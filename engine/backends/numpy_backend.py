"""The numpy backend: the readable reference for every kernel.

Kernels take backend arrays (possibly strided views, any dtype) and return a new pooled array.
16-bit floats are computed in float32 and rounded once into the output, as torch does on the CPU.
The cupy backend subclasses this one, swapping `xp` and overriding what cupy does differently.
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np

from engine import dtype as D
from engine.backends.fused import FusedOps
from engine.backends.blas_threads import BLAS_THREADS
from engine.backends.numpy_errstate import _quiet
from engine.backends.numpy_attention import AttentionKernels
from engine.backends.numpy_conv import ConvKernels
from engine.backends.numpy_conv_transpose import ConvTransposeKernels
from engine.backends.numpy_nn import NnKernels
from engine.backends.numpy_index import IndexKernels
from engine.backends.numpy_pointwise import PointwiseKernels
from engine.backends.numpy_pool import PoolKernels
from engine.backends.numpy_quant import QuantKernels
from engine.backends.numpy_special import _IN_PLACE, _chunked, _erf_f32, _erf_f64, _gelu_f32
from engine.backends import numpy_threads
from engine.backends.numpy_threads import split
from engine.storage import StoragePool

_REDUCED = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
# numpy's own dtypes by their array-interface typestr (bfloat16's '<V2' would read back as void)
_TYPESTR = {d.np_dtype: d.np_dtype.str for d in D.ALL if d.np_dtype.kind != "V"}


class _HostBlock:
    """A raw host block of the pool: the array that owns the memory, and its address (read once:
    `ndarray.ctypes.data` costs microseconds)."""

    __slots__ = ("array", "ptr")

    def __init__(self, array: np.ndarray):
        self.array, self.ptr = array, array.ctypes.data


def _block_ptr(raw) -> int:
    """A raw block's address: ours carry it; a bare array (another raw allocator's) is asked."""
    return raw.ptr if type(raw) is _HostBlock else raw.ctypes.data


class NumpyBackend(NnKernels, AttentionKernels, ConvKernels, ConvTransposeKernels, PoolKernels, PointwiseKernels, IndexKernels, QuantKernels, FusedOps):
    name = "numpy"
    available = True
    xp = np

    def __init__(self, device):
        self.device = device
        self.pool = StoragePool(self)

    # ---- raw memory (used by the pool) --------------------------------------------------------
    def raw_alloc(self, nbytes: int):
        return _HostBlock(np.empty(nbytes, np.uint8))

    def raw_free(self, raw) -> None:
        pass  # dropping the last reference returns it to the C allocator

    def free_bytes(self):
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def wrap(self, lease):
        lease.__array_interface__ = {"shape": (lease.nbytes,), "typestr": "|u1", "version": 3,
                                     "data": (_block_ptr(lease.raw), False)}
        return np.asarray(lease)

    # ---- arrays -------------------------------------------------------------------------------------
    def _lease(self, shape, dtype: D.DType) -> tuple:
        """(shape as a tuple, a pooled lease of its bytes): what every backend's empty() starts from."""
        if type(shape) is not tuple:
            shape = tuple(shape)
        n = 1
        for d in shape:
            n *= d
        return shape, self.pool.alloc_lease(n * dtype.itemsize)

    def empty(self, shape, dtype: D.DType):
        """A typed array straight over a pooled block: one array built over the lease (its base), so
        every view keeps the block's lease alive."""
        shape, lease = self._lease(shape, dtype)
        raw = lease.raw
        ptr = raw.ptr if type(raw) is _HostBlock else _block_ptr(raw)
        typestr = _TYPESTR.get(dtype.np_dtype)
        if typestr is None:  # ml_dtypes' bfloat16 has no typestr of its own: its bits, viewed
            lease.__array_interface__ = {"shape": shape + (dtype.itemsize,), "typestr": "|u1", "version": 3,
                                         "data": (ptr, False)}
            return np.asarray(lease).view(dtype.np_dtype).reshape(shape)
        lease.__array_interface__ = {"shape": shape, "typestr": typestr, "version": 3, "data": (ptr, False)}
        return np.asarray(lease)

    def strided(self, flat, layout):
        """The array that `layout` describes over the flat storage array (a view, no copy)."""
        isz = flat.itemsize
        if layout.numel == 0:  # an empty view may sit past the end of its storage (select on a size-0 dim)
            return flat[:0].reshape(layout.shape)
        return np.ndarray(layout.shape, flat.dtype, buffer=flat, offset=layout.offset * isz,
                          strides=tuple(s * isz for s in layout.strides))

    def from_numpy(self, arr: np.ndarray, dtype: D.DType):
        out = self.empty(arr.shape, dtype)
        np.copyto(out, arr, casting="unsafe")
        return out

    def to_numpy(self, arr) -> np.ndarray:
        return arr

    def from_dlpack(self, obj):
        return np.from_dlpack(obj)

    def synchronize(self) -> None:
        pass

    def _c(self, x, dt=None):
        """The array to compute on: 16-bit floats as float32, or cast to numpy dtype `dt`."""
        if dt is not None:
            if isinstance(x, self.xp.ndarray):
                return x.astype(dt, copy=False)
            # a Python scalar becomes a numpy scalar (cupy takes those too); ints wrap into unsigned and
            # narrow dtypes as torch's do (uint8 - 3 -> 253)
            return (np.asarray(x).astype(dt) if isinstance(x, int) else np.asarray(x, dt))[()]
        if isinstance(x, self.xp.ndarray) and x.dtype in _REDUCED:
            return x.astype(np.float32)
        return x

    def _out(self, r, dtype: D.DType):
        out = self.empty(np.shape(r), dtype)
        np.copyto(out, r, casting="unsafe")
        return out

    def copy_(self, dst, src) -> None:
        """dst[...] = src, with broadcasting and casting (16-bit floats round once)."""
        self.xp.copyto(dst, src, casting="unsafe")

    def cast(self, x, dtype: D.DType):
        return self._out(x, dtype)

    def contiguous(self, x, dtype: D.DType):
        return self._out(x, dtype)

    # ---- elementwise ------------------------------------------------------------------------------
    def unary(self, op: str, x, out_dtype: D.DType):
        """Float ops compute in the output's compute dtype; others keep the input dtype."""
        cd = D.compute_dtype(out_dtype)
        if out_dtype.is_floating_point and op not in ("isnan", "isinf", "isfinite", "signbit"):
            x = self._c(x, cd)
        else:
            x = self._c(x)
        if op in _IN_PLACE and self.xp is np and x.dtype == cd == out_dtype.np_dtype:
            out = self.empty(x.shape, out_dtype)
            _quiet(_chunked, _IN_PLACE[op], x, out)
            return out
        if op == "gelu" and self.xp is np and x.dtype == out_dtype.np_dtype == np.float32:
            return _gelu_f32(x, self.empty(x.shape, out_dtype))  # in cache-sized chunks, into pooled memory
        r = _quiet(self._unary, op, x)
        return self._out(r, out_dtype)

    def _unary(self, op, x):
        xp = self.xp
        if op == "rsqrt":
            return 1.0 / xp.sqrt(x)
        if op == "sigmoid":
            return 1.0 / (1.0 + xp.exp(-x))
        if op == "relu":
            return xp.maximum(x, x.dtype.type(0))
        if op == "silu":
            return x / (1.0 + xp.exp(-x))
        if op == "gelu":
            if xp is np and x.dtype == np.float32:
                return _gelu_f32(x)
            return 0.5 * x * (1.0 + self._erf(x / math.sqrt(2.0)))
        if op == "gelu_tanh":
            return 0.5 * x * (1.0 + xp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))
        if op == "erf":
            return self._erf(x)
        if op in ("erfc", "erfinv"):
            return getattr(self, "_" + op)(x)
        if op == "frac":
            return x - xp.trunc(x)
        if op == "positive":
            return x
        if op == "reciprocal":
            return 1.0 / x
        if op == "round":
            return xp.round(x)
        if op == "sign" and x.dtype.kind == "f":  # torch: sign(nan) is 0
            return xp.where(xp.isnan(x), x.dtype.type(0), xp.sign(x))
        if op in ("logical_not", "bitwise_not"):
            return xp.logical_not(x) if op == "logical_not" or x.dtype == np.bool_ else xp.invert(x)
        return getattr(xp, self._UNARY.get(op, op))(x)

    _UNARY = {"neg": "negative", "asin": "arcsin", "acos": "arccos", "atan": "arctan", "asinh": "arcsinh",
              "acosh": "arccosh", "atanh": "arctanh"}

    def _erf(self, x):
        if x.dtype == np.float32:
            return _erf_f32(x)
        return _erf_f64(x).astype(x.dtype)

    _BINARY = {"add": "add", "sub": "subtract", "mul": "multiply", "div": "true_divide",
               "floor_divide": "floor_divide", "remainder": "remainder", "pow": "power",
               "maximum": "maximum", "minimum": "minimum", "atan2": "arctan2",
               "eq": "equal", "ne": "not_equal", "lt": "less", "le": "less_equal", "gt": "greater",
               "ge": "greater_equal", "logical_and": "logical_and", "logical_or": "logical_or",
               "logical_xor": "logical_xor", "bitwise_and": "bitwise_and", "bitwise_or": "bitwise_or",
               "bitwise_xor": "bitwise_xor"}

    _INT_DIVISION = ("floor_divide", "remainder", "fmod", "div_trunc", "div_floor")
    _FLOOR = ("floor_divide", "remainder")  # of floats: _floor_div_mod, torch's algorithm on every backend

    _WARNS = True  # numpy ufuncs warn on overflow and invalid values: binary runs them under errstate

    def _fast_ufunc(self, op: str, cd):
        """The ufunc binary() calls for `op` in compute dtype cd when no special path applies (None
        otherwise); memoised per class, the fast path's one lookup."""
        key = (op, cd)
        fast = type(self).__dict__.get("_FAST_BINARY")
        if fast is None:
            fast = {}
            setattr(type(self), "_FAST_BINARY", fast)
        if key not in fast:
            special = (op not in self._BINARY or (cd.kind in "iub" and op in self._INT_DIVISION)
                       or (op == "pow" and cd.kind in "iu") or (op in self._FLOOR and cd.kind == "f"))
            fast[key] = None if special else getattr(self.xp, self._BINARY[op])
        return fast[key]

    def binary(self, op: str, a, b, compute: D.DType, out_dtype: D.DType):
        """a, b: arrays or Python scalars; both are cast to `compute` (16-bit floats to float32)."""
        cd = compute.compute
        if compute is out_dtype and type(a) is self.xp.ndarray and a.dtype == cd and (
                (type(b) is type(a) and b.shape == a.shape and b.dtype == cd)
                or (type(b) is float and cd.kind == "f")):
            # hot path (same-shape arrays of the result dtype, or an array and a float): one ufunc into
            # pooled memory, exactly what the general path below does for these operands
            fn = self._fast_ufunc(op, cd)
            if fn is not None:
                out = self.empty(a.shape, out_dtype)
                if type(b) is float:
                    b = self._c(b, cd)
                if self.xp is np and a.size >= numpy_threads.SPLIT_MIN and a.flags.c_contiguous and (
                        type(b) is not np.ndarray or b.flags.c_contiguous):
                    _quiet(_binary_split, fn, a, b, out)  # on idle cores (the numpy backend's; cupy's one launch)
                elif self._WARNS:
                    _quiet(fn, a, b, out=out)
                else:
                    fn(a, b, out=out)
                return out
        a, b = self._c(a, cd), self._c(b, cd)
        if cd.kind in "iub" and op in self._INT_DIVISION:
            self._check_divisor(b, op)
        if op not in self._BINARY or (op == "pow" and cd.kind in "iu") or (op in self._FLOOR and cd.kind == "f"):
            with np.errstate(all="ignore"):
                return self._out(self._binary_extra(op, a, b), out_dtype)
        fn = getattr(self.xp, self._BINARY[op])
        if cd == out_dtype.np_dtype:  # write straight into pooled memory
            out = self.empty(np.broadcast_shapes(np.shape(a), np.shape(b)), out_dtype)
            _quiet(fn, a, b, out=out)
            return out
        return self._out(_quiet(fn, a, b), out_dtype)

    def where(self, cond, a, b, out_dtype: D.DType):
        cd = D.compute_dtype(out_dtype)
        return self._out(self.xp.where(cond, self._c(a, cd), self._c(b, cd)), out_dtype)

    def clamp(self, x, lo, hi, out_dtype: D.DType):
        cd = D.compute_dtype(out_dtype)
        x = self._c(x, cd)
        if lo is not None:
            x = self.xp.maximum(x, self._c(lo, cd))
        if hi is not None:
            x = self.xp.minimum(x, self._c(hi, cd))
        return self._out(x, out_dtype)

    # ---- reductions ---------------------------------------------------------------------------------
    def reduce(self, op: str, x, dims: tuple, keepdim: bool, out_dtype: D.DType, correction: int = 1):
        xp = self.xp
        cd = D.compute_dtype(out_dtype) if op not in ("all", "any", "amax", "amin") else None
        x = self._c(x, cd) if cd is not None else self._c(x)
        with np.errstate(all="ignore"):
            if op == "sum":
                r = xp.sum(x, axis=dims, keepdims=keepdim)
            elif op == "sumsq":  # the 2-norm's sum of squares, rounded once
                r = xp.sum(xp.square(xp.abs(x)), axis=dims, keepdims=keepdim)
            elif op == "mean":  # sum / n: an empty reduction gives nan without numpy's warning
                r = xp.sum(x, axis=dims, keepdims=keepdim) / x.dtype.type(math.prod(x.shape[d] for d in dims))
            elif op == "prod":
                r = xp.prod(x, axis=dims, keepdims=keepdim)
            elif op in ("amax", "amin"):  # the tensor layer refuses empty reduced dims
                r = (xp.max if op == "amax" else xp.min)(x, axis=dims, keepdims=keepdim)
            elif op == "all":
                r = xp.all(x, axis=dims, keepdims=keepdim)
            elif op == "any":
                r = xp.any(x, axis=dims, keepdims=keepdim)
            elif op == "var":  # torch divides by max(n - correction, 0): nan or inf, no warning
                n = math.prod(x.shape[d] for d in dims)
                mean = xp.sum(x, axis=dims, keepdims=True) / x.dtype.type(n)
                r = xp.sum(xp.square(x - mean), axis=dims, keepdims=keepdim) / x.dtype.type(max(n - correction, 0))
            elif op == "logsumexp":
                m = xp.max(x, axis=dims, keepdims=True) if x.size else xp.zeros((), x.dtype)
                m = xp.where(xp.isfinite(m), m, 0)
                r = xp.log(xp.sum(xp.exp(x - m), axis=dims, keepdims=True)) + m
                if not keepdim:
                    r = xp.squeeze(r, axis=dims)
            else:
                raise ValueError(f"unknown reduction {op!r}")
        return self._out(r, out_dtype)

    def arg_reduce(self, op: str, x, dim, keepdim: bool):
        x = self._c(x)
        fn = self.xp.argmax if op == "argmax" else self.xp.argmin
        if dim is None:
            r = fn(x.reshape(-1))
            if keepdim:
                r = r.reshape((1,) * x.ndim)
        else:
            r = fn(x, axis=dim, keepdims=keepdim)
        return self._out(r, D.int64)

    def cumulative(self, op: str, x, dim: int, out_dtype: D.DType):
        x = self._c(x, D.compute_dtype(out_dtype))
        fn = self.xp.cumsum if op == "cumsum" else self.xp.cumprod
        return self._out(fn(x, axis=dim), out_dtype)

    # ---- linear algebra ----------------------------------------------------------------------------
    def matmul(self, a, b, out_dtype: D.DType):
        if self.xp is np and a.ndim >= 2 and b.ndim >= 2 and BLAS_THREADS.one(
                math.prod(np.broadcast_shapes(a.shape[:-2], b.shape[:-2])) * a.shape[-2] * a.shape[-1] * b.shape[-1]):
            try:
                return self._matmul(a, b, out_dtype)
            finally:
                BLAS_THREADS.restore()
        return self._matmul(a, b, out_dtype)

    def _matmul(self, a, b, out_dtype: D.DType):
        cd = D.compute_dtype(out_dtype)
        a, b = self._c(a, cd), self._c(b, cd)
        if cd == out_dtype.np_dtype and a.ndim >= 2 and b.ndim >= 2:
            shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
            out = self.empty(shape, out_dtype)
            self.xp.matmul(a, b, out=out)
            return out
        return self._out(self.xp.matmul(a, b), out_dtype)

    def svdvals(self, x, out_dtype: D.DType):
        """Singular values over the last two dims (in float64 for float64 inputs, else float32)."""
        return self._out(self.xp.linalg.svd(self._c(x, D.compute_dtype(out_dtype)), compute_uv=False), out_dtype)

    # ---- shape and indexing -------------------------------------------------------------------------
    def concat(self, arrays, dim: int, out_dtype: D.DType):
        cd = D.compute_dtype(out_dtype)
        arrays = [self._c(a, cd) for a in arrays]
        if self.xp is not np:  # cupy: as it was (not measured here)
            return self._out(self.xp.concatenate(arrays, axis=dim), out_dtype)
        shape = list(arrays[0].shape)
        shape[dim] = sum(a.shape[dim] for a in arrays)
        out = self.empty(tuple(shape), out_dtype)  # straight into pooled memory (no second copy of the result)
        np.concatenate(arrays, axis=dim, out=out, casting="unsafe")
        return out

    def getitem(self, x, key):
        return self._out(x[key], D.get(x.dtype))

    def setitem(self, x, key, value) -> None:
        if isinstance(value, self.xp.ndarray) and value.dtype != x.dtype:
            value = self._c(value).astype(x.dtype)
        x[key] = value

    def take(self, x, index, dim: int):
        if self.xp is np and not x.flags.c_contiguous:  # np.take copies all of x first: a transposed view's few
            return self._out(x[(slice(None),) * dim + (index,)], D.get(x.dtype))  # rows (an input-major embedding)
        return self._out(self.xp.take(x, index, axis=dim), D.get(x.dtype))

    def gather(self, x, dim: int, index):
        # torch allows index smaller than x in the other dims: cut x to index's extent there
        sl = tuple(slice(None) if d == dim else slice(0, n) for d, n in enumerate(index.shape))
        return self._out(self.xp.take_along_axis(x[sl], index, axis=dim), D.get(x.dtype))

    def scatter(self, x, dim: int, index, src, reduce=None):
        out = self._out(x, D.get(x.dtype))
        nd = index.ndim  # open-grid indices (like np.indices(sparse=True), which cupy lacks)
        idx = [self.xp.arange(n).reshape((1,) * d + (n,) + (1,) * (nd - d - 1)) for d, n in enumerate(index.shape)]
        idx[dim] = index
        src = src[tuple(slice(0, n) for n in index.shape)] if hasattr(src, "shape") and src.ndim else src
        if reduce is None:
            out[tuple(idx)] = src
        elif reduce == "add":
            self._at("add", out, tuple(idx), src)
        elif reduce == "multiply":
            self._at("multiply", out, tuple(idx), src)
        else:
            raise ValueError(f"scatter: unknown reduce {reduce!r} (expected None, 'add' or 'multiply')")
        return out

    def index_bounds(self, index, size: int):
        """(min, max) of an integer index array, for a clear out-of-range error."""
        if index.size == 0:
            return 0, 0
        return int(index.min()), int(index.max())

    def sort(self, x, dim: int, descending: bool, stable: bool):
        xp = self.xp
        key = self._c(x)
        if descending and key.dtype.kind in "bu":  # negating would wrap: widen to a signed type first
            key = key.astype(np.int64)
        idx = xp.argsort(-key if descending else key, axis=dim, kind="stable")
        if descending and key.dtype.kind == "f":  # torch ranks nan above inf: a second stable pass puts nans first
            not_nan = xp.take_along_axis(~xp.isnan(key), idx, axis=dim)
            idx = xp.take_along_axis(idx, xp.argsort(not_nan, axis=dim, kind="stable"), axis=dim)
        return self._out(xp.take_along_axis(x, idx, axis=dim), D.get(x.dtype)), self._out(idx, D.int64)

    def topk(self, x, k: int, dim: int, largest: bool):
        vals, idx = self.sort(x, dim, descending=largest, stable=True)
        sl = tuple(slice(0, k) if d == dim else slice(None) for d in range(x.ndim))
        return self._out(vals[sl], D.get(x.dtype)), self._out(idx[sl], D.int64)

    def flip(self, x, dims):
        return self._out(self.xp.flip(x, axis=dims), D.get(x.dtype))

    def roll(self, x, shifts, dims):
        return self._out(self.xp.roll(x, shifts, axis=dims), D.get(x.dtype))

    def tile(self, x, reps):
        return self._out(self.xp.tile(x, reps), D.get(x.dtype))

    def repeat_interleave(self, x, repeats, dim):
        return self._out(self.xp.repeat(x, repeats, axis=dim), D.get(x.dtype))

    def pad(self, x, widths, mode: str, value):
        """widths: ((lo, hi), ...) per dim, non-negative (engine.functional.pad crops and validates first).
        On numpy constant, reflect and circular padding are written straight into the pooled output: the
        input into its middle, then each padded dim's borders from slices along that dim (np.pad's own
        rule, dim after dim, so corners come out the same), without np.pad's array and the copy of it."""
        if self.xp is np and mode in ("constant", "reflect", "circular") and x.dtype.kind != "O":
            return self._pad_into(x, widths, mode, value)
        if mode == "constant":
            return self._out(self.xp.pad(x, widths, mode="constant", constant_values=value), D.get(x.dtype))
        np_mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mode]
        return self._out(self.xp.pad(self._c(x), widths, mode=np_mode), D.get(x.dtype))

    def _pad_into(self, x, widths, mode: str, value):
        widths = [tuple(w) for w in widths]
        out = self.empty(tuple(n + lo + hi for n, (lo, hi) in zip(x.shape, widths)), D.get(x.dtype))
        mid = tuple(slice(lo, lo + n) for n, (lo, hi) in zip(x.shape, widths))
        k = next((d for d, w in enumerate(widths) if w != (0, 0)), x.ndim)  # dims before k are not padded
        lead = math.prod(x.shape[:k])
        if 0 < k < x.ndim and lead > 1 and x.flags.c_contiguous:  # rows of the unpadded dims, on idle cores
            rows = out.reshape((lead,) + out.shape[k:])[(slice(None),) + mid[k:]]
            split(lambda o, i: np.copyto(o, i), rows, x.reshape((lead,) + x.shape[k:]))
        else:
            np.copyto(out, x) if out.shape == x.shape else np.copyto(out[mid], x)
        for d, ((lo, hi), n) in enumerate(zip(widths, x.shape)):
            if not (lo or hi):
                continue
            def at(sl, d=d):
                return out[(slice(None),) * d + (sl,)]
            if mode == "constant":
                at(slice(0, lo))[...] = value
                at(slice(lo + n, lo + n + hi))[...] = value
            elif mode == "reflect":  # x[lo - 1 - i] mirrors x[lo + 1 + i] about the first input element
                np.copyto(at(slice(0, lo)), np.flip(at(slice(lo + 1, 2 * lo + 1)), d))
                np.copyto(at(slice(lo + n, lo + n + hi)), np.flip(at(slice(lo + n - 1 - hi, lo + n - 1)), d))
            else:  # circular: the input's last lo elements before it, its first hi after it
                np.copyto(at(slice(0, lo)), at(slice(n, n + lo)))
                np.copyto(at(slice(lo + n, lo + n + hi)), at(slice(lo, lo + hi)))
        return out

    def tri(self, x, k: int, upper: bool):
        return self._out((self.xp.triu if upper else self.xp.tril)(x, k), D.get(x.dtype))

    def nonzero(self, x):
        return self._out(self.xp.stack(self.xp.nonzero(x), axis=-1), D.int64)

    # ---- creation ------------------------------------------------------------------------------------
    def full(self, shape, value, dtype: D.DType):
        out = self.empty(shape, dtype)
        out.fill(value)
        return out

    def arange(self, start, end, step, dtype: D.DType):
        """torch's arange: for integer dtypes start and step are truncated to integers first (and
        int64 sizes the result in integer arithmetic); floats accumulate in float64."""
        xp = self.xp
        if dtype.is_floating_point:
            n = math.ceil((end - start) / step)
            r = start + xp.arange(max(n, 0), dtype=np.float64) * step
        else:
            s0, s1, st = int(start), int(end), int(step)
            if st == 0:
                raise ValueError(f"arange(): step {step!r} truncates to 0 for {dtype.name}")
            if dtype is D.int64:
                num = s1 - s0 + st - (1 if st > 0 else -1)
                n = abs(num) // abs(st) * (1 if (num >= 0) == (st > 0) else -1)  # C division truncates
            else:
                n = math.ceil((end - start) / step)
            r = s0 + xp.arange(max(n, 0), dtype=np.int64) * st
        return self._out(r, dtype)

    def linspace(self, start, end, steps: int, dtype: D.DType):
        """torch's linspace: start and end in the dtype, the step in float64 for integer dtypes (else the
        compute dtype), the first half counted up from start and the second half down from end."""
        xp = self.xp
        st = np.dtype(np.float64) if not dtype.is_floating_point else dtype.np_dtype  # 16-bit: rounds per op, as torch's Half
        s0, s1 = (int(start), int(end)) if not dtype.is_floating_point else (start, end)
        s0, s1 = st.type(s0), st.type(s1)
        if steps == 1:
            return self._out(xp.full((1,), s0, dtype=st), dtype)
        step = (s1 - s0) / st.type(max(steps - 1, 1))
        i = xp.arange(steps, dtype=st)
        r = xp.where(xp.arange(steps) < steps // 2, s0 + step * i, s1 - step * (steps - 1 - i))
        return self._out(r.astype(st) if dtype.is_floating_point else xp.trunc(r), dtype)

    def eye(self, n: int, m: int, dtype: D.DType):
        return self._out(self.xp.eye(n, m), dtype)

    def random(self, kind: str, shape, dtype: D.DType, generator):
        """Random numbers come from the engine's host generator on every device, so a seed gives the
        same values on CPU and GPU."""
        rng = generator.rng
        r = rng.standard_normal(shape) if kind == "randn" else rng.random(shape)
        return self.from_numpy(np.asarray(r), dtype)

    def load_ranges(self, path: str, ranges):
        """Byte ranges of a file as read-only arrays over one memory map (zero-copy on the CPU)."""
        mm = np.memmap(path, dtype=np.uint8, mode="r")
        return [mm[begin:end] for begin, end in ranges]


def _binary_split(fn, a, b, out) -> None:
    """fn(a, b, out=out) for a C-contiguous array a and a same-shape C-contiguous array or a scalar b, in
    pieces over the idle cores (numpy_threads.split)."""
    if type(b) is np.ndarray:
        split(lambda ap, bp, op: fn(ap, bp, out=op), a.reshape(-1), b.reshape(-1), out.reshape(-1))
    else:
        split(lambda ap, op: fn(ap, b, out=op), a.reshape(-1), out.reshape(-1))
