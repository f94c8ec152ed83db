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
        return cupy.ndarray(layout.shape, flat.dtype, flat.data + layout.offset * isz,
                            strides=tuple(s * isz for s in layout.strides))

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

    # ---- fast checkpoint upload -------------------------------------------------------------------
    def load_ranges(self, path: str, ranges, threads: int | None = None, chunk: int = 16 << 20):
        """Read byte ranges [(begin, end), ...] of a file straight into new device arrays.

        Several reader threads each own a stream and two pinned staging buffers: a thread reads the
        next chunk from the page cache with pread (no mmap page faults) while its previous chunk's
        host-to-device copy runs, so reading and copying overlap across threads and streams.
        """
        import concurrent.futures as cf
        import os

        import os as _os
        threads = threads or min(16, _os.cpu_count() or 4)
        outs = [self.empty((end - begin,), D.uint8) for begin, end in ranges]
        staging = self._staging(threads, chunk)
        jobs = []  # (out array, byte offset in out, file offset, n)
        for out, (begin, end) in zip(outs, ranges):
            for off in range(0, end - begin, chunk):
                jobs.append((out, off, begin + off, min(chunk, end - begin - off)))
        fd = os.open(path, os.O_RDONLY)
        try:
            def worker(my_jobs, bufs):
                with cupy.cuda.Device(self.device.index):
                    stream = cupy.cuda.Stream(non_blocking=True)
                    events = [None, None]
                    for i, (out, off, foff, n) in enumerate(my_jobs):
                        slot = i % 2
                        if events[slot] is not None:
                            events[slot].synchronize()  # the copy out of this buffer has finished
                        view = memoryview(np.frombuffer(bufs[slot], np.uint8, n))
                        got = os.preadv(fd, [view], foff)
                        if got != n:
                            raise OSError(f"{path}: short read at offset {foff}: {got} of {n} bytes")
                        cupy.cuda.runtime.memcpyAsync(out.data.ptr + off, bufs[slot].ptr, n,
                                                      cupy.cuda.runtime.memcpyHostToDevice, stream.ptr)
                        events[slot] = stream.record()
                    stream.synchronize()
            per = [jobs[i::threads] for i in range(threads)]
            with cf.ThreadPoolExecutor(threads) as ex:
                for f in [ex.submit(worker, p, staging[i]) for i, p in enumerate(per) if p]:
                    f.result()
        finally:
            os.close(fd)
        return outs

    def _staging(self, threads: int, chunk: int):
        """Two pinned host buffers per reader thread, kept for the next load (pinning memory costs
        about as much as copying it, so a second checkpoint load does not pay it again)."""
        key = (threads, chunk)
        if getattr(self, "_staging_key", None) != key:
            self._staging_bufs = [[cupy.cuda.alloc_pinned_memory(chunk) for _ in range(2)] for _ in range(threads)]
            self._staging_key = key
        return self._staging_bufs

    # ---- 16-bit linear on the tensor cores --------------------------------------------------------
    def linear(self, x, w, b, out_dtype: D.DType):
        """16-bit x @ w.T (+ b) through cublasGemmEx with float32 accumulation, rounded once; the
        reference path (numpy backend) would upcast the whole weight to float32 on every call."""
        if out_dtype.is_reduced and x.dtype == w.dtype == out_dtype.np_dtype and x.size and w.ndim == 2:
            from engine.backends import cupy_prefill
            x2 = cupy.ascontiguousarray(x.reshape(-1, x.shape[-1]))
            y = cupy_prefill.linear(x2, cupy.ascontiguousarray(w), out_dtype=cupy.float32)
            if b is not None:
                y += b.astype(cupy.float32)
            return self._out(y.reshape(x.shape[:-1] + (w.shape[0],)), out_dtype)
        return super().linear(x, w, b, out_dtype)
