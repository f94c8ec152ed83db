"""The cupy backend: the numpy backend's kernels over cupy arrays, plus what CUDA needs.

- Memory: every cupy allocation in the process goes through the engine's StoragePool (cupy's
  allocator hook), so the pool's stats are exact for engine tensors and for cupy's temporaries.
- bfloat16 works natively (cupy 14 with ml_dtypes; seen on the lent H100).
- Capturable decode: kernels take no host syncs except where a result is read on the host (bounds
  checks of index tensors, .item()); the graph path of issue 6 uses its own GEMV kernels because cupy
  refuses cuBLAS calls during stream capture.
"""
from __future__ import annotations

import cupy
import numpy as np

from engine import dtype as D
from engine.backends.numpy_backend import NumpyBackend
from engine.storage import StoragePool

_BY_DEVICE: dict = {}


def _cupy_alloc(nbytes: int):
    """cupy's allocator hook: take the block from the current device's engine pool."""
    dev = cupy.cuda.runtime.getDevice()
    backend = _BY_DEVICE[dev]
    lease = backend.pool.alloc_lease(nbytes)
    return cupy.cuda.MemoryPointer(cupy.cuda.UnownedMemory(lease.raw.ptr, lease.nbytes, lease, dev), 0)


class CupyBackend(NumpyBackend):
    name = "cupy"
    xp = cupy

    def __init__(self, device):
        n = cupy.cuda.runtime.getDeviceCount()
        if device.index >= n:
            raise RuntimeError(f"cuda:{device.index} requested but only {n} CUDA device(s) are visible")
        self.device = device
        self.pool = StoragePool(self)
        with cupy.cuda.Device(device.index):
            _BY_DEVICE[device.index] = self
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
        return cupy.ndarray(layout.shape, flat.dtype, flat.data + layout.offset * isz,
                            strides=tuple(s * isz for s in layout.strides))

    def from_numpy(self, arr: np.ndarray, dtype: D.DType):
        host = np.ascontiguousarray(np.asarray(arr).astype(dtype.np_dtype, copy=False))
        out = self.empty(host.shape, dtype)
        with cupy.cuda.Device(self.device.index):
            out.set(host)
        return out

    def to_numpy(self, arr) -> np.ndarray:
        return cupy.asnumpy(arr)

    def from_dlpack(self, obj):
        return cupy.from_dlpack(obj)

    def synchronize(self) -> None:
        with cupy.cuda.Device(self.device.index):
            cupy.cuda.get_current_stream().synchronize()

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
        if index.size == 0:
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
