"""The raw arrays under the engine: numpy on the cpu, cupy on cuda. Not alternatives a user would
pick, but the floor the engine's dispatch is measured against (an eager engine op on CUDA must cost at
most 1.2x the raw cupy call for the same work)."""
from __future__ import annotations

import functools
import math
import operator

import numpy as np

from impls.base import CudaEvents, Impl, Unavailable


def raw_ops(xp) -> dict:
    """numpy/cupy compositions with torch's signatures, written the obvious way (the baseline for
    what the engine adds on top of the same arrays)."""

    def softmax(x, dim=-1):
        e = xp.exp(x - x.max(axis=dim, keepdims=True))
        return e / e.sum(axis=dim, keepdims=True)

    def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
        axes = tuple(range(-len(tuple(normalized_shape)), 0))
        mu = x.mean(axis=axes, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
        y = (x - mu) / xp.sqrt(var + eps).astype(x.dtype)
        y = y * weight if weight is not None else y
        return y + bias if bias is not None else y

    def rms_norm(x, normalized_shape, weight=None, eps=1e-6):
        axes = tuple(range(-len(tuple(normalized_shape)), 0))
        y = x / xp.sqrt((x * x).mean(axis=axes, keepdims=True) + eps).astype(x.dtype)
        return y * weight if weight is not None else y

    def silu(x):
        return x / (1 + xp.exp(-x))

    def sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
        if k.shape[-3] != q.shape[-3]:
            rep = q.shape[-3] // k.shape[-3]
            k, v = xp.repeat(k, rep, axis=-3), xp.repeat(v, rep, axis=-3)
        s = (q @ xp.swapaxes(k, -1, -2)) * (scale or 1.0 / math.sqrt(q.shape[-1]))
        if is_causal:
            L, S = q.shape[-2], k.shape[-2]
            s = xp.where(xp.tril(xp.ones((L, S), dtype=bool)), s, -xp.inf)
        return softmax(s, -1).astype(q.dtype) @ v

    def linear(x, w, b=None):
        y = x @ w.T
        return y + b if b is not None else y

    def embedding(ids, w):
        return w[ids]

    return {"matmul": xp.matmul, "add": operator.add, "mul": operator.mul, "silu": silu,
            "softmax": softmax, "layer_norm": layer_norm, "rms_norm": rms_norm, "sdpa": sdpa,
            "linear": linear, "embedding": embedding, "reshape": lambda x, shape: x.reshape(shape)}


class NumpyImpl(Impl):
    name = "numpy"
    xp = np

    def __init__(self, device, dtype):
        super().__init__(device, dtype)
        if device != "cpu":
            raise Unavailable("numpy runs on the cpu only (the raw cuda arrays are 'cupy')")
        if dtype == "bfloat16":
            raise Unavailable("numpy has no native bfloat16 kernels (ml_dtypes only stores them)")

    @property
    def label(self):
        return f"numpy {np.__version__}"

    def _ops(self):
        return raw_ops(self.xp)

    def tensor(self, array):
        return np.ascontiguousarray(array).astype(self.np_dtype)

    def ids(self, values):
        return np.asarray(values, dtype=np.int64)

    def cat(self, tensors, dim):
        return np.concatenate(tensors, axis=dim)

    def to_numpy(self, x):
        return np.asarray(x, dtype=np.float32)

    def alloc(self, nbytes):
        return np.empty(nbytes, np.uint8)


class CupyImpl(NumpyImpl):
    name = "cupy"

    def __init__(self, device, dtype):
        Impl.__init__(self, device, dtype)
        if device != "cuda":
            raise Unavailable("cupy runs on cuda only (the raw cpu arrays are 'numpy')")
        try:
            import cupy
        except ImportError:
            raise Unavailable("cupy is not installed") from None
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise Unavailable("cupy: no CUDA device")
        except cupy.cuda.runtime.CUDARuntimeError as e:
            raise Unavailable(f"cupy: no usable CUDA device ({e})") from None
        if dtype == "bfloat16":
            raise Unavailable("raw cupy bfloat16 is left to the engine's kernels")
        self.xp = cupy
        # cupy's own caching pool, even if the engine's backend has hooked cupy's allocator
        self.pool = cupy.cuda.MemoryPool()

    @property
    def label(self):
        return f"cupy {self.xp.__version__}"

    def _own_pool(self):
        return self.xp.cuda.using_allocator(self.pool.malloc)

    def build(self, fn, *args, sync=True, **kwargs):
        call = functools.partial(fn, *args, **kwargs)
        own, stream = self._own_pool, self.xp.cuda.get_current_stream()

        def run():
            with own():
                out = call()
            if sync:
                stream.synchronize()
            return out
        return run

    def tensor(self, array):
        with self._own_pool():
            return self.xp.asarray(np.ascontiguousarray(array).astype(self.np_dtype))

    def ids(self, values):
        with self._own_pool():
            return self.xp.asarray(np.asarray(values, dtype=np.int64))

    def cat(self, tensors, dim):
        with self._own_pool():
            return self.xp.concatenate(tensors, axis=dim)

    def to_numpy(self, x):
        return self.xp.asnumpy(x).astype(np.float32)

    def alloc(self, nbytes):
        with self._own_pool():
            return self.xp.empty(nbytes, self.xp.uint8)

    def synchronize(self):
        self.xp.cuda.get_current_stream().synchronize()

    def events(self):
        return CudaEvents(lambda: self.xp.cuda.Event())

    def memory_stats(self):
        return {"allocated_bytes": self.pool.used_bytes(), "peak_bytes": None,
                "reserved_bytes": self.pool.total_bytes(), "source": "cupy MemoryPool"}

    def empty_cache(self):
        self.pool.free_all_blocks()
