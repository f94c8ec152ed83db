"""The cupy backend: the numpy backend's kernels over cupy arrays, plus what CUDA needs.

- Memory: every cupy allocation in the process goes through the engine's StoragePool (cupy's
  allocator hook), so the pool's stats are exact for engine tensors and for cupy's temporaries.
- bfloat16 works natively (cupy 14 with ml_dtypes; seen on the lent H100).
- Kernels by shape (cupy_kernels unless named): linear with up to 8 rows runs the GEMV kernel (linear_fused
  adds the rms_norm prologue, GLU and residual epilogues), a quantized weight's linear the dequant-GEMV
  (qgemv); layer_norm, rms_norm, rotary, group_norm (+ act), decode attention and rotary + KV writes
  (cupy_decode), 16-bit sdpa (flash attention: cupy_flash), an LSTM layer (cupy_lstm), convs through cuDNN
  where it is installed (cupy_cudnn), else 16-bit 2-d convs in captures (CONV_IGEMM); more rows of 16-bit
  floats go to cuBLAS (cupy_blas). The rest: the numpy backend's code.
- Capturable: the kernels read positions and tokens from device memory and never sync with the host;
  inside a capture index bounds are not checked on the host. cupy refuses cuBLAS during stream capture,
  which is why decode shapes never reach it.
"""
from __future__ import annotations

import cupy
import numpy as np

from engine import dtype as D
from engine.backends import (cupy_blas, cupy_cudnn, cupy_decode, cupy_flash, cupy_lstm, cupy_lt, cupy_quant, cupy_step,
                             cupy_upload)
from engine.backends import cupy_elementwise as EW
from engine.backends import cupy_kernels as K
from engine.backends.fused import QOperand
from engine.backends.numpy_backend import NumpyBackend
from engine.storage import StoragePool

_BY_DEVICE: dict = {}
_Unowned, _Pointer = cupy.cuda.UnownedMemory, cupy.cuda.MemoryPointer  # looked up once, not per allocation


def _cupy_alloc(nbytes: int):
    """cupy's allocator hook: take the block from the current device's engine pool."""
    dev = cupy.cuda.runtime.getDevice()
    backend = _BY_DEVICE[dev]
    lease = backend.pool.alloc_lease(nbytes)
    return cupy.cuda.MemoryPointer(cupy.cuda.UnownedMemory(lease.raw.ptr, lease.nbytes, lease, dev), 0)


def _rows(a, k: int):
    """a as (rows, k): itself when already 2-d (a cupy reshape builds a new array: microseconds)."""
    return a if a.ndim == 2 else a.reshape(-1, k)


def _unrows(out, lead: tuple):
    """A 2-d (rows, n) result in the input's leading shape: itself when that is one dim."""
    return out if len(lead) == 1 else out.reshape(lead + (out.shape[1],))


class CupyBackend(NumpyBackend):
    name = "cupy"
    xp = cupy
    _WARNS = False  # cupy raises no floating-point warnings: binary's fast path needs no np.errstate
    LINEAR_INPUT_MAJOR = False  # its GEMV kernels read (out, in) rows

    def __init__(self, device):
        n = cupy.cuda.runtime.getDeviceCount()
        if device.index >= n:
            raise RuntimeError(f"cuda:{device.index} requested but only {n} CUDA device(s) are visible")
        self.device = device
        self.pool = StoragePool(self)
        with cupy.cuda.Device(device.index):
            _BY_DEVICE.setdefault(device.index, self)  # the registry's backend owns cupy's allocations
            cupy.cuda.set_allocator(_cupy_alloc)
            cupy.cuda.set_pinned_memory_allocator(None)
        self._special = None

    # ---- raw memory ----------------------------------------------------------------------------
    def raw_alloc(self, nbytes: int):
        try:
            with cupy.cuda.Device(self.device.index):
                return cupy.cuda.memory.Memory(nbytes)
        except cupy.cuda.runtime.CUDARuntimeError as e:
            if "memory" in str(e).lower():
                raise MemoryError(str(e)) from e
            raise

    def raw_free(self, raw) -> None:
        pass  # cupy.cuda.Memory frees itself when the last reference goes

    def free_bytes(self):
        with cupy.cuda.Device(self.device.index):
            return int(cupy.cuda.runtime.memGetInfo()[0])

    def wrap(self, lease):
        mem = cupy.cuda.UnownedMemory(lease.raw.ptr, lease.nbytes, lease, self.device.index)
        return cupy.ndarray((lease.nbytes,), cupy.uint8, cupy.cuda.MemoryPointer(mem, 0))

    # ---- arrays ----------------------------------------------------------------------------------
    def strided(self, flat, layout):
        isz = flat.itemsize
        if layout.numel == 0:  # an empty view may sit past the end of its storage
            return flat[:0].reshape(layout.shape)
        mem = flat.data + layout.offset * isz if layout.offset else flat.data
        if layout.is_contiguous():  # cupy builds a C-order array faster when given no strides
            return cupy.ndarray(layout.shape, flat.dtype, mem)
        return cupy.ndarray(layout.shape, flat.dtype, mem, strides=tuple(s * isz for s in layout.strides))

    def from_numpy(self, arr: np.ndarray, dtype: D.DType):
        arr = np.asarray(arr)
        host = np.ascontiguousarray(arr.astype(dtype.np_dtype, copy=False)).reshape(arr.shape)  # keeps 0-d
        out = self.empty(host.shape, dtype)
        with cupy.cuda.Device(self.device.index):
            out.set(host)
        return out

    def to_numpy(self, arr) -> np.ndarray:
        return cupy.asnumpy(arr)

    def from_dlpack(self, obj):
        return cupy.from_dlpack(obj)

    replayed = False  # a CUDA graph was launched since the last synchronize (NcclCommunicator reads it)

    def synchronize(self) -> None:
        with cupy.cuda.Device(self.device.index):
            cupy.cuda.get_current_stream().synchronize()
        self.replayed = False

    def unary(self, op: str, x, out_dtype: D.DType):
        if out_dtype.is_reduced and isinstance(x, cupy.ndarray) and x.dtype == out_dtype.np_dtype:
            out = self.empty(x.shape, out_dtype)
            if EW.unary(op, x, out):  # one launch for the float32 arithmetic of the reference
                return out
        return super().unary(op, x, out_dtype)

    def binary(self, op: str, a, b, compute: D.DType, out_dtype: D.DType):
        if compute.is_reduced and (out_dtype is compute or out_dtype is D.bool_):
            sa = a.shape if type(a) is cupy.ndarray else np.shape(a)
            sb = b.shape if type(b) is cupy.ndarray else np.shape(b)
            shape = sa if sa == sb or not sb else np.broadcast_shapes(sa, sb)
            out = self.empty(shape, out_dtype)
            if EW.binary(op, a, b, out):
                return out
        return super().binary(op, a, b, compute, out_dtype)

    def _out(self, r, dtype: D.DType):
        out = self.empty(r.shape if hasattr(r, "shape") else (), dtype)
        cupy.copyto(out, r, casting="unsafe")
        return out

    def copy_(self, dst, src) -> None:
        if isinstance(src, np.ndarray):
            src = cupy.asarray(src)
        cupy.copyto(dst, src, casting="unsafe")

    def _c(self, x, dt=None):
        if isinstance(x, np.ndarray):
            x = cupy.asarray(x)
        return super()._c(x, dt)

    def _erf(self, x):
        if self._special is None:
            import cupyx.scipy.special as special
            self._special = special
        return self._special.erf(x)

    def index_bounds(self, index, size: int):
        if index.size == 0 or self.capturing():  # no host read inside a capture (engine.capture)
            return 0, 0
        lo_hi = cupy.stack([index.min(), index.max()]).get()  # one host sync for an eager bounds check
        return int(lo_hi[0]), int(lo_hi[1])

    def setitem(self, x, key, value) -> None:
        if isinstance(value, np.ndarray):
            value = cupy.asarray(value)
        super().setitem(x, key, value)

    def full(self, shape, value, dtype: D.DType):
        out = self.empty(shape, dtype)
        out.fill(value)
        return out

    # ---- fast checkpoint upload (cupy_upload) -------------------------------------------------------
    def load_ranges(self, path: str, ranges, threads: int | None = None, chunk: int = 16 << 20):
        """Read byte ranges [(begin, end), ...] of a file straight into new device arrays (cupy_upload)."""
        return cupy_upload.load_ranges(self, path, ranges, threads, chunk)

    # ---- kernels chosen by shape (cupy_kernels: GEMV and decode kernels, capturable; cupy_blas: cuBLAS) ----
    def empty(self, shape, dtype: D.DType):
        """A typed array straight over a pooled block (one ndarray, not a byte view reshaped)."""
        shape, lease = self._lease(shape, dtype)
        mem = _Unowned(lease.raw.ptr, lease.nbytes, lease, self.device.index)
        return cupy.ndarray(shape, dtype.np_dtype, _Pointer(mem, 0))

    def matmul(self, a, b, out_dtype: D.DType):
        if self.capturing() and a.ndim >= 2 and b.ndim >= 2 and a.dtype == b.dtype == out_dtype.np_dtype \
                and out_dtype.name in K.TYPES:  # cupy refuses cuBLAS inside a capture
            batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
            a3 = cupy.broadcast_to(a, batch + a.shape[-2:]).reshape((-1,) + a.shape[-2:])
            b3 = cupy.broadcast_to(b, batch + b.shape[-2:]).reshape((-1,) + b.shape[-2:])
            out = self.empty((a3.shape[0], a.shape[-2], b.shape[-1]), out_dtype)
            if cupy_lt.matmul(a3, b3, out) is None:  # cuBLASLt where nvmath serves it, else the tiled kernel
                K.gemm(a3, b3, out)
            return out.reshape(batch + (a.shape[-2], b.shape[-1]))
        if out_dtype.is_reduced and a.dtype == b.dtype == out_dtype.np_dtype and cupy_blas.matmul_ok(a, b):
            shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
            if a.shape[:-2] == shape[:-2] and (b.ndim == 2 or b.shape[:-2] == shape[:-2]) and 0 not in shape:
                out = self.empty(shape, out_dtype)
                if cupy_blas.matmul(a, b, out) is not None:
                    return out
        return super().matmul(a, b, out_dtype)

    def linear(self, x, w, b, out_dtype: D.DType):
        """x @ w.T (+ b), rounded once: cuBLASLt for 4 to 16 rows of 16-bit floats (any count from 4 inside a
        capture) where nvmath-python is installed, the GEMV kernel for up to 8 rows (decode; both capturable),
        cuBLAS GemmEx with float32 accumulation for more rows of 16-bit floats, else the reference path."""
        if x.dtype == w.dtype == out_dtype.np_dtype and x.size and w.ndim == 2:
            lead, k = x.shape[:-1], x.shape[-1]
            x2 = _rows(x, k)
            if cupy_lt.takes(x2, w, self.capturing()) and (b is None or b.ndim == 1):  # cuBLASLt (capturable)
                out = self.empty((x2.shape[0], w.shape[0]), out_dtype)
                cupy_lt.linear(x2, w, out, bias=b)
                return _unrows(out, lead)
            if K.gemv_ok(x2, w) and (b is None or b.flags.c_contiguous):
                out = self.empty((x2.shape[0], w.shape[0]), out_dtype)
                K.gemv(x2, w, out, bias=b)
                return _unrows(out, lead)
            if self.capturing() and out_dtype.name in K.TYPES:  # no cuBLAS inside a capture
                out = self.empty((1, x2.shape[0], w.shape[0]), out_dtype)
                K.gemm(x2[None], w.T[None], out, bias=b)
                return out.reshape(lead + (w.shape[0],))
            if out_dtype.is_reduced:
                out = self.empty((x2.shape[0], w.shape[0]), out_dtype)
                cupy_blas.linear(x2, w, out, bias=b)
                return _unrows(out, lead)
        return super().linear(x, w, b, out_dtype)

    def linear_fused(self, x, w, b, out_dtype, norm=None, glu=None, residual=None, frozen: bool = False):
        """One GEMV launch for rms_norm -> linear [-> GLU] [-> + residual] when the shapes fit (qgemv_fused
        for a quantized weight, a QOperand); frozen weights: a programmatic dependent launch inside a capture
        (cupy_launch), its first weight loads before the kernel before it ends."""
        if isinstance(w, QOperand):
            out = self._qfused(x, w, b, out_dtype, norm=norm, glu=glu, residual=residual, pdl=frozen)
            return out if out is not None else super().linear_fused(x, w, b, out_dtype, norm=norm, glu=glu,
                                                                    residual=residual)
        if x.dtype == w.dtype == out_dtype.np_dtype and x.size and w.ndim == 2:
            lead, k = x.shape[:-1], x.shape[-1]
            x2 = _rows(x, k)
            w2, b2, act = glu if glu is not None else (None, None, None)
            n = w.shape[0]
            res2 = _rows(residual, n) if residual is not None else None
            ok = K.gemv_ok(x2, w, w2) and not cupy_lt.takes(x2, w)  # cuBLASLt's rows: the composition
            ok = ok and all(a is None or a.flags.c_contiguous for a in (b, b2))
            ok = ok and (w2 is None or w2.shape == w.shape) and (norm is None or norm[0] is None
                                                                 or norm[0].flags.c_contiguous)
            ok = ok and (res2 is None or (res2.dtype == w.dtype and res2.strides[1] == res2.itemsize))
            if ok:
                out = self.empty((x2.shape[0], n), out_dtype)
                K.gemv(x2, w, out, bias=b, W2=w2, bias2=b2, act=act, norm=norm, residual=res2, pdl=frozen)
                return _unrows(out, lead)
        return super().linear_fused(x, w, b, out_dtype, norm=norm, glu=glu, residual=residual)

    def linear_group(self, x, ws, bs, out_dtype, norm=None, frozen: bool = False):
        """Up to three linears of one input in one GEMV launch over the stacked weights; the outputs
        are views of one (rows, sum of N) result (quantized weights of one format: qgemv_fused)."""
        if 1 < len(ws) <= 3 and all(isinstance(w, QOperand) for w in ws):
            out = self._qfused(x, ws[0], bs[0], out_dtype, norm=norm, segments=list(zip(ws[1:], bs[1:])),
                               pdl=frozen)
            if out is not None:
                cuts = np.cumsum([0] + [w.shape[0] for w in ws])
                return [out[..., a:b] for a, b in zip(cuts[:-1], cuts[1:])]
            return super().linear_group(x, ws, bs, out_dtype, norm=norm)
        if 1 < len(ws) <= 3 and x.dtype == out_dtype.np_dtype and x.size and all(
                w.ndim == 2 and w.dtype == x.dtype and w.shape[1] == ws[0].shape[1] for w in ws):
            lead, k = x.shape[:-1], x.shape[-1]
            x2 = _rows(x, k)
            ok = all(K.gemv_ok(x2, w) and not cupy_lt.takes(x2, w) for w in ws)
            ok = ok and all(b is None or b.flags.c_contiguous for b in bs)
            ok = ok and (norm is None or norm[0] is None or norm[0].flags.c_contiguous)
            if ok:
                ns = [w.shape[0] for w in ws]
                out = self.empty((x2.shape[0], sum(ns)), out_dtype)
                K.gemv(x2, ws[0], out, bias=bs[0], norm=norm, segments=list(zip(ws[1:], bs[1:])), pdl=frozen)
                cuts = np.cumsum([0] + ns)
                return [out[:, a:b].reshape(lead + (b - a,)) for a, b in zip(cuts[:-1], cuts[1:])]
        return super().linear_group(x, ws, bs, out_dtype, norm=norm)

    def group_norm(self, x, groups: int, weight, bias, eps: float, out_dtype):
        return self.group_norm_act(x, groups, weight, bias, eps, None, out_dtype)

    def group_norm_act(self, x, groups: int, weight, bias, eps: float, act, out_dtype):
        """One launch (a block per sample and group) for contiguous x in the output dtype."""
        if x.dtype == out_dtype.np_dtype and K.group_norm_ok(x, weight, bias, groups):
            out = self.empty(x.shape, out_dtype)
            K.group_norm_act(x, weight, bias, groups, eps, act, out)
            return out
        y = super().group_norm(x, groups, weight, bias, eps, out_dtype)
        return y if act is None else self.unary(act, y, out_dtype)

    # when the implicit-GEMM conv kernel runs (16-bit, groups 1, 2-d): "capture" (inside CUDA graphs only,
    # where cuBLAS is refused; eager convs keep im2col + cuBLAS), "always", or "never"
    CONV_IGEMM = "capture"

    def conv(self, x, w, b, stride, padding, dilation, groups: int, out_dtype):
        if cupy_cudnn.takes(x, w, b, stride, padding, groups, out_dtype):  # cuDNN first, where installed
            return cupy_cudnn.conv(self, x, w, b, stride, padding, dilation, groups, out_dtype)
        out = self._igemm(x, w, b, stride, padding, dilation, groups, None, out_dtype)
        return out if out is not None else super().conv(x, w, b, stride, padding, dilation, groups, out_dtype)

    def conv_act(self, x, w, b, stride, padding, dilation, groups: int, act, out_dtype):
        """The implicit-GEMM kernel with the activation in its epilogue, where it runs (CONV_IGEMM) and cuDNN
        does not (its conv, then the activation)."""
        out = None if cupy_cudnn.takes(x, w, b, stride, padding, groups, out_dtype) else \
            self._igemm(x, w, b, stride, padding, dilation, groups, act, out_dtype)
        return out if out is not None else super().conv_act(x, w, b, stride, padding, dilation, groups, act,
                                                            out_dtype)

    def _igemm(self, x, w, b, stride, padding, dilation, groups, act, out_dtype):
        mode = self.CONV_IGEMM
        if (mode == "always" or (mode == "capture" and self.capturing())) and x.dtype == out_dtype.np_dtype \
                and len(stride) == 2 and K.conv2d_ok(x, w, groups) \
                and (b is None or (b.flags.c_contiguous and b.dtype == x.dtype)):
            n, _, h, wd = x.shape
            o, _, kh, kw = w.shape
            oh = (h + sum(padding[0]) - dilation[0] * (kh - 1) - 1) // stride[0] + 1
            ow = (wd + sum(padding[1]) - dilation[1] * (kw - 1) - 1) // stride[1] + 1
            if oh > 0 and ow > 0 and all(lo >= 0 and hi >= 0 for lo, hi in padding):
                out = self.empty((n, o, oh, ow), out_dtype)
                K.conv2d(x, w, b, stride, padding, dilation, out, act)
                return out
        return None

    def layer_norm(self, x, nd: int, weight, bias, eps: float, out_dtype):
        """One kernel a row (cupy_kernels.layer_norm) where the last dim is the normalised one."""
        if nd == 1 and x.ndim and x.dtype == out_dtype.np_dtype and x.size and out_dtype.name in K.TYPES:
            x2 = _rows(x, x.shape[-1])
            if K.layer_norm_ok(x2, weight, bias):
                out = self.empty(x2.shape, out_dtype)
                K.layer_norm(x2, weight, bias, eps, out)
                return out if x.ndim == 2 else out.reshape(x.shape)
        return super().layer_norm(x, nd, weight, bias, eps, out_dtype)

    def rms_norm(self, x, nd: int, weight, eps: float, out_dtype, style: str = "torch"):
        if nd == 1 and x.dtype == out_dtype.np_dtype and out_dtype.name in K.TYPES and x.size:
            k = x.shape[-1]
            x2 = _rows(x, k)
            if (k % (16 // x.itemsize) == 0 and x2.strides[1] == x.itemsize and x2.strides[0] % 16 == 0
                    and x2.data.ptr % 16 == 0 and (weight is None or (weight.flags.c_contiguous
                                                                      and weight.dtype == x.dtype))):
                out = self.empty(x2.shape, out_dtype)
                K.rms_norm(x2, weight, eps, style, out)
                return out if x.ndim == 2 else out.reshape(x.shape)
        return super().rms_norm(x, nd, weight, eps, out_dtype, style)

    def moe(self, x, weights, experts, w_gate, w_up, w_down, act, out_dtype):
        """Routed experts on the device (capturable): a GLU GEMV per (token, slot) reading its expert's
        weights through a pointer table, the down GEMV likewise, then the weighted sum in expert order."""
        ws = list(w_gate) + list(w_up) + list(w_down)
        T_, H = x.shape
        k = experts.shape[1]
        n_i = w_gate[0].shape[0]
        ok = (x.dtype == out_dtype.np_dtype and out_dtype.name in K.TYPES and k <= 8 and T_ * k <= 65535
              and all(w.dtype == x.dtype and w.flags.c_contiguous and w.data.ptr % 16 == 0 for w in ws)
              and all(w.shape == (n_i, H) for w in list(w_gate) + list(w_up))
              and all(w.shape == (H, n_i) for w in w_down)
              and K.gemv_ok(x.reshape(-1, H)[:1], w_gate[0]) and H % (16 // x.itemsize) == 0
              and n_i % (16 // x.itemsize) == 0 and x.strides[1] == x.itemsize and x.strides[0] % 16 == 0)
        if not ok:
            return super().moe(x, weights, experts, w_gate, w_up, w_down, act, out_dtype)
        gate, up, down = (self._pointer_table(w) for w in (w_gate, w_up, w_down))
        ids = cupy.ascontiguousarray(experts.reshape(-1))
        h = self.empty((T_ * k, n_i), out_dtype)
        K.gemv_routed(x, gate, ids, k, h, table2=up, act=act, n=n_i, k_dim=H)
        y = self.empty((T_ * k, H), out_dtype)
        K.gemv_routed(h, down, ids, 1, y, n=H, k_dim=n_i)
        out = self.empty((T_, H), out_dtype)
        K.moe_combine(y, cupy.ascontiguousarray(weights.astype(cupy.float32, copy=False)),
                      cupy.ascontiguousarray(experts), out)
        return out

    def _pointer_table(self, arrays):
        """A device array of the arrays' addresses, made once (an upload cannot happen inside a capture)."""
        key = tuple(a.data.ptr for a in arrays)
        tables = self.__dict__.setdefault("_tables", {})
        if key not in tables:
            tables[key] = (cupy.asarray(np.array(key, np.uint64)), list(arrays))  # keeps the weights alive
        return tables[key][0]

    def topk(self, x, k: int, dim: int, largest: bool):
        """Small k over the last dim by k argmax passes (capturable; the sort-based path is not)."""
        if k <= 8 and dim == x.ndim - 1 and x.ndim >= 1 and largest and x.shape[-1] and x.dtype.kind == "f":
            cur = x.astype(cupy.float32)
            ar = cupy.arange(x.shape[-1])
            vals, idxs = [], []
            for _ in range(k):
                i = cupy.argmax(cur, axis=-1)
                idxs.append(i)
                vals.append(cupy.take_along_axis(x, i[..., None], axis=-1)[..., 0])
                cur = cupy.where(ar == i[..., None], -cupy.inf, cur)
            return self._out(cupy.stack(vals, -1), D.get(x.dtype)), self._out(cupy.stack(idxs, -1), D.int64)
        return super().topk(x, k, dim, largest)

    def lstm_recurrence(self, xw, h, c, w_hh, b_hh, w_hr, reverse: bool, out_dtype):  # one launch: cupy_lstm
        if cupy_lstm.lstm_ok(xw, h, c, w_hh, b_hh, w_hr, out_dtype):
            return cupy_lstm.lstm(self, xw, h, c, w_hh, b_hh, reverse, out_dtype)
        return super().lstm_recurrence(xw, h, c, w_hh, b_hh, w_hr, reverse, out_dtype)

    def rotary(self, x, cos, sin_signed, out_dtype):
        isz = x.itemsize
        if (x.dtype == cos.dtype == sin_signed.dtype == out_dtype.np_dtype and out_dtype.name in K.TYPES
                and x.strides[-1] == isz and cos.strides == sin_signed.strides and cos.strides[-1] == isz
                and x.size):
            out = self.empty(x.shape, out_dtype)
            K.rotary(x, cos, sin_signed, out)
            return out
        return super().rotary(x, cos, sin_signed, out_dtype)

    def rope(self, positions, inv_freq, scaling: float, out_dtype):  # one launch (cupy_step)
        r = cupy_step.rope(self, positions, inv_freq, scaling, out_dtype)
        return r if r is not None else super().rope(positions, inv_freq, scaling, out_dtype)

    def causal_mask(self, query_pos, key_pos, window, out_dtype):  # one launch (cupy_step)
        m = cupy_step.causal_mask(self, query_pos, key_pos, window, out_dtype)
        return m if m is not None else super().causal_mask(query_pos, key_pos, window, out_dtype)

    def advance(self, tokens, tok, out, n) -> None:  # one launch (cupy_step)
        if not cupy_step.advance(tokens, tok, out, n):
            super().advance(tokens, tok, out, n)

    def rotary_cache(self, q, k, v, cos, sin_signed, k_cache, v_cache, slots, out_dtype, q_out=None):  # one launch
        if cupy_decode.rotary_cache_ok(q, k, v, cos, sin_signed, k_cache, v_cache, slots, out_dtype.np_dtype, q_out):
            q_out = self.empty(q.shape, out_dtype) if q is not None and q_out is None else q_out
            return cupy_decode.rotary_cache(q, k, v, cos, sin_signed, k_cache, v_cache, slots, q_out)
        return super().rotary_cache(q, k, v, cos, sin_signed, k_cache, v_cache, slots, out_dtype, q_out)

    def sdpa(self, q, k, v, mask, causal: bool, scale: float, out_dtype):  # 16-bit: flash attention (cupy_flash)
        if q.dtype == out_dtype.np_dtype and cupy_flash.flash_ok(q, k, v, mask):
            out = self.empty(q.shape[:-1] + (v.shape[-1],), out_dtype)
            cupy_flash.sdpa(q, k, v, mask, causal, scale, out)
            return out
        return super().sdpa(q, k, v, mask, causal, scale, out_dtype)

    def attention(self, q, k, v, mask, scale: float, out_dtype):
        """One query row: split-K decode (cupy_decode); more 16-bit rows: flash (cupy_flash), else two batched
        products around one softmax kernel (cuBLAS; cuBLASLt inside a capture), else the composition."""
        if q.dtype == out_dtype.np_dtype and K.attention_ok(q, k, v, mask):
            b, hq, _, d = q.shape
            out = self.empty((b, 1, hq * d), out_dtype)
            cupy_decode.attention(q, k, v, mask, scale, out, self.capturing())  # attn_partial with the combine
            return out
        if (out := cupy_flash.attention(self, q, k, v, mask, scale, out_dtype)) is not None:
            return out
        if (out_dtype.is_reduced and q.dtype == k.dtype == v.dtype == out_dtype.np_dtype
                and (mask is None or mask.dtype == q.dtype) and q.size and k.shape[2]):
            b, hq, L, d = q.shape
            hkv, S, dv = k.shape[1], k.shape[2], v.shape[-1]
            rep = hq // hkv
            qg = cupy.ascontiguousarray(q).reshape(b, hkv, rep * L, d)
            s = self.empty((b, hkv, rep * L, S), out_dtype)
            if self._bmm(qg, k.swapaxes(-1, -2), s) is not None:
                p = self.empty(s.shape, out_dtype)
                K.softmax_mask_rows(s.reshape(-1, S), mask, scale, L, hkv * rep * L, p.reshape(-1, S))
                o = self.empty((b, hkv, rep * L, dv), out_dtype)
                if self._bmm(p, v, o) is not None:
                    out = self.empty((b, L, hq * dv), out_dtype)
                    out.reshape(b, L, hq, dv)[...] = o.reshape(b, hq, L, dv).transpose(0, 2, 1, 3)
                    return out
        return super().attention(q, k, v, mask, scale, out_dtype)

    def _bmm(self, a, b, out):
        """out (B, H, M, N) = a (B, H, M, K) @ b (B, H, K, N), 16-bit, out contiguous: cuBLAS eagerly, cuBLASLt
        inside a capture (where cupy refuses cuBLAS); None where neither serves these operands."""
        if self.capturing():
            return cupy_lt.matmul(a.reshape((-1,) + a.shape[-2:]), b.reshape((-1,) + b.shape[-2:]),
                                  out.reshape((-1,) + out.shape[-2:]))
        return cupy_blas.matmul(a, b, out) if cupy_blas.matmul_ok(a, b) else None

    def sample(self, logits, seen, penalty: float, temperature: float, top_k, top_p, seed: int, counter):
        """The next tokens on the device (one kernel; capturable): engine/sampling.py's steps."""
        if logits.ndim == 2 and K._kernel_dtype(logits.dtype) and counter.dtype == np.int64:
            out = self.empty((logits.shape[0],), D.int64)
            K.sample(logits, seen, penalty, temperature, top_k, top_p, seed, counter, out)
            counter += 1
            return out
        return super().sample(logits, seen, penalty, temperature, top_k, top_p, seed, counter)

    def random_normal(self, shape, dtype, seed: int, std: float = 1.0):
        """N(0, std) drawn on the device (cupy's generator): seconds for 7B weights, where the host
        draw takes minutes. Values differ from the CPU's draw for the same seed."""
        with cupy.cuda.Device(self.device.index):
            a = cupy.random.RandomState(seed).standard_normal(size=tuple(shape), dtype=cupy.float32)
            if std != 1.0:
                a *= np.float32(std)
            return self._out(a, D.get(dtype))

    # ---- quantized weights (engine/quant.py): fused kernels (quant.cu, quant_span.cu; cupy_quant), capturable ----
    qtile_scale = 64  # more than 8 rows (prefill): tiles of 16 M dequantised weights, 64 times the CPU's

    def qlinear(self, x, data, qtype: str, cols: int, b, out_dtype):
        """Up to 8 rows: the fused dequant-GEMV kernel (packed blocks in, fp32 sums, one rounding; capturable).
        More rows: the reference's tiles, each dequantised by the kernel, times x in float32."""
        if (out_dtype.name in K.TYPES and x.dtype == out_dtype.np_dtype and x.size
                and (b is None or (b.dtype == x.dtype and b.flags.c_contiguous))):
            lead = x.shape[:-1]
            x2 = x.reshape(-1, cols)
            if K.qgemv_ok(x2, data, qtype):
                out = self.empty((x2.shape[0], data.shape[0]), out_dtype)
                cupy_quant.qgemv(x2, data, qtype, out, bias=b)  # qgemv_span for Q8_0 / Q4_K / Q6_K
                return out.reshape(lead + (data.shape[0],))
        return super().qlinear(x, data, qtype, cols, b, out_dtype)

    def _qfused(self, x, w, b, out_dtype, norm=None, glu=None, residual=None, segments=None, pdl=False):
        """linear_fused / linear_group over quantized weights (QOperands) as one qgemv_fused launch; None when
        the operands do not fit (the caller runs the composition)."""
        if out_dtype.name not in K.TYPES or x.dtype != out_dtype.np_dtype or not x.size:
            return None
        w2, b2, act = glu if glu is not None else (None, None, None)
        segments = segments or []
        if w2 is not None and not (isinstance(w2, QOperand) and w2.qtype == w.qtype and w2.shape == w.shape):
            return None
        if any(not isinstance(sw, QOperand) or sw.qtype != w.qtype or sw.cols != w.cols for sw, _ in segments):
            return None
        if not all(a is None or (a.dtype == x.dtype and a.flags.c_contiguous) for a in [b, b2] + [sb for _, sb in segments]):
            return None
        if norm is not None and norm[0] is not None and not (norm[0].flags.c_contiguous and norm[0].dtype == x.dtype):
            return None
        lead = x.shape[:-1]
        x2 = x.reshape(-1, w.cols)
        n = w.shape[0] + sum(sw.shape[0] for sw, _ in segments)
        res2 = residual.reshape(-1, n) if residual is not None else None
        if res2 is not None and not (res2.dtype == x.dtype and res2.strides[1] == res2.itemsize):
            return None
        others = ([w2.data] if w2 is not None else []) + [sw.data for sw, _ in segments]
        if not K.qgemv_fused_ok(x2, w.data, w.qtype, others):
            return None
        out = self.empty((x2.shape[0], n), out_dtype)
        cupy_quant.qgemv_fused(x2, w.data, w.qtype, out, bias=b, W2=w2.data if w2 is not None else None, bias2=b2,
                               act=act, norm=norm, residual=res2, segments=[(sw.data, sb) for sw, sb in segments],
                               pdl=pdl)
        return out.reshape(lead + (n,))

    def _dequant_rows(self, raw, q, cols: int):
        if K.qdata_ok(raw, q.name):
            out = self.empty((raw.shape[0], cols), D.float32)
            K.qdequant(raw, q.name, cols, out)
            return out
        return super()._dequant_rows(raw, q, cols)

    def qtake(self, data, index, qtype: str, cols: int, out_dtype):
        """Rows `index` dequantised by the kernel straight into out_dtype (no gathered copy; capturable)."""
        if out_dtype.name in K.TYPES and index.ndim == 1 and K.qdata_ok(data, qtype):
            idx = index if index.dtype == cupy.int64 and index.flags.c_contiguous else \
                cupy.ascontiguousarray(index.astype(cupy.int64))
            out = self.empty((index.shape[0], cols), out_dtype)
            K.qdequant(data, qtype, cols, out, idx=idx)
            return out
        return super().qtake(data, index, qtype, cols, out_dtype)

    def dequantize(self, data, qtype: str, cols: int, out_dtype):
        if out_dtype.name in K.TYPES and K.qdata_ok(data, qtype):
            out = self.empty((data.shape[0], cols), out_dtype)
            K.qdequant(data, qtype, cols, out)
            return out
        return super().dequantize(data, qtype, cols, out_dtype)

    # ---- CUDA graphs (engine.capture) ----------------------------------------------------------------------
    def graph_capture(self, fn, memory):
        """Run fn() under stream capture on a side stream; returns the graph (its blocks are leased to
        `memory` by the caller)."""
        with cupy.cuda.Device(self.device.index):
            if getattr(self, "_capture_stream", None) is None:
                self._capture_stream = cupy.cuda.Stream(non_blocking=False)
            stream = self._capture_stream
            cupy.cuda.get_current_stream().synchronize()
            with stream:
                stream.begin_capture()
                try:
                    fn()
                except BaseException:
                    try:  # end the broken capture so the stream is usable again; keep fn's error
                        stream.end_capture()
                    except Exception:
                        pass
                    raise
                graph = stream.end_capture()
            stream.synchronize()
            return graph

    def graph_launch(self, graph) -> None:
        graph.launch(cupy.cuda.get_current_stream())
        self.replayed = True

    def capturing(self) -> bool:
        return self.rehearsing or cupy.cuda.get_current_stream().is_capturing()
