"""The raw numpy/cupy baselines' ops (torch's signatures over plain arrays) and the F.<op> namespace
over an adapter's ops; used by the numpy and cupy adapters of suites.common."""
from __future__ import annotations

import math
import operator


def _raw_ops(xp) -> dict:
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
            "linear": linear, "embedding": embedding}


class _Namespace:
    """F.<op> access to an adapter's ops, so workload code reads like torch.nn.functional."""

    _ALIASES = {"scaled_dot_product_attention": "sdpa"}

    def __init__(self, impl):
        self._impl = impl

    def __getattr__(self, name):
        return self._impl.op(self._ALIASES.get(name, name))

