"""Attention for decoder LLMs: grouped-query attention without copying K/V, and the mask and
positions a decoder forward needs (causal, left padding, sliding window, KV cache).

Shapes: B batch, L new tokens, S keys, Hq query heads, Hkv key/value heads (Hq = rep * Hkv),
D head dim. Query head h reads kv head h // rep (transformers' repeat_kv order).
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from engine import dtype as D
from engine import functional as F
from engine import ops
from engine.nn.kv_cache import KVCache
from engine.tensor import Tensor


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, Hkv, S, D) -> (B, Hkv * n_rep, S, D), each kv head repeated n_rep times in place order (a
    copy; `attention` avoids it by grouping the queries instead)."""
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x.unsqueeze(2).expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """Eager attention in transformers' order of operations: scores in the activations' dtype, times
    scale, plus the additive mask, softmax in fp32, rounded back, times V.
    q (B, Hq, L, D), k/v (B, Hkv, S, D), mask (B|1, 1, L, S) additive -> (B, L, Hq * D)."""
    b, hq, L, d = q.shape
    hkv, S = k.shape[1], k.shape[2]
    rep = hq // hkv
    # GQA: the rep query heads of one kv head become rows of one matrix, so K and V are read once
    qg = q.reshape(b, hkv, rep * L, d)  # (B, Hkv, rep*L, D)
    s = (qg @ k.transpose(-1, -2)) * scale  # (B, Hkv, rep*L, S)
    if mask is not None:
        s = s.reshape(b, hkv, rep, L, S) + mask.unsqueeze(2)  # mask (B|1, 1, 1, L, S)
    p = F.softmax(s, -1, dtype=D.float32).to(q.dtype).reshape(b, hkv, rep * L, S)
    o = p @ v  # (B, Hkv, rep*L, Dv)
    dv = v.shape[-1]
    return o.reshape(b, hq, L, dv).transpose(1, 2).reshape(b, L, hq * dv)


def min_value(dtype) -> float:
    """The most negative finite value of a float dtype: the additive mask value, as transformers uses
    (finite, so a fully masked row gives a uniform softmax rather than NaN)."""
    dt = D.get(dtype)
    return float((ml_dtypes.finfo if dt.is_reduced else np.finfo)(dt.np_dtype).min)


def causal_mask(query_pos: Tensor, key_pos: Tensor, attention_mask: Tensor | None = None,
                sliding_window: int | None = None, dtype=D.float32) -> Tensor:
    """Additive mask (B|1, 1, L, S): 0 where query i may read key j, else the dtype's minimum.
    query_pos (L,), key_pos (S,) are cache positions (key_pos -1: an empty slot). A key is readable
    when it is not in the future, within the window (key > query - window), and not padding
    (attention_mask (B, T) over all T positions so far; 0 marks padding)."""
    q = query_pos.unsqueeze(1)  # (L, 1)
    kp = key_pos.unsqueeze(0)  # (1, S)
    ok = (kp <= q) & (kp >= 0)  # (L, S)
    if sliding_window is not None:
        ok = ok & (kp > q - sliding_window)
    ok = ok.unsqueeze(0)  # (1, L, S)
    if attention_mask is not None:
        t = attention_mask.shape[-1]
        valid = attention_mask.index_select(1, key_pos.clamp(0, t - 1)) != 0  # (B, S)
        ok = ok & valid.unsqueeze(1)  # (B, L, S)
    return ops.where(ok, 0.0, min_value(dtype)).to(dtype).unsqueeze(1)


def positions(input_ids: Tensor, cache=None, attention_mask: Tensor | None = None,
              position_ids: Tensor | None = None, sliding_window: int | None = None, dtype=D.float32):
    """(position_ids (B|1, L), additive mask (B|1, 1, L, S), cache step or None) for a forward.

    Without a cache the keys are the L inputs themselves. With one, `cache.step(L)` places the new
    tokens. attention_mask (B, T) covers every position so far (past and new, T = cache.seen + L), as
    in transformers. Default position_ids: with a mask, cumsum(mask) - 1 (so left padding does not
    shift positions, as transformers' generate does); else the cache positions.
    """
    b, L = input_ids.shape
    if cache is not None:
        if cache.batch_size != b:
            raise ValueError(f"cache was allocated for batch {cache.batch_size}, input_ids has batch {b}")
        step = cache.step(L)
        query_pos, key_pos = step.query_pos, step.key_pos
    else:
        step = None
        query_pos = key_pos = ops.arange(L, dtype=D.int64, device=input_ids.device)
    if attention_mask is not None:
        total = (cache.seen if cache is not None else L)
        if attention_mask.shape != (b, total):
            raise ValueError(f"attention_mask must be (batch, all positions so far) = {(b, total)}, got "
                             f"{attention_mask.shape}")
    if position_ids is None:
        if attention_mask is not None:
            pos = attention_mask.long().cumsum(-1) - 1
            position_ids = pos.masked_fill(attention_mask == 0, 1)[:, -L:]  # (B, L)
        else:
            position_ids = query_pos.unsqueeze(0)  # (1, L)
    if L == 1 and attention_mask is None and sliding_window is None and isinstance(cache, KVCache) \
            and not cache.full_length:
        mask = None  # one new token reading exactly the filled prefix of a plain cache: nothing to mask
    else:
        mask = causal_mask(query_pos, key_pos, attention_mask, sliding_window, dtype)
    return position_ids, mask, step
