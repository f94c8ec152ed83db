"""Attention for decoder LLMs: grouped-query attention without copying K/V, and the mask and
positions a decoder forward needs (causal, left padding, sliding window, KV cache).

Shapes: B batch, L new tokens, S keys, Hq query heads, Hkv key/value heads (Hq = rep * Hkv),
D head dim. Query head h reads kv head h // rep (transformers' repeat_kv order).
"""
from __future__ import annotations

from engine import dtype as D
from engine.dtype import min_value  # noqa: F401  (models import it from here)
from engine import ops
from engine.layout import ShapeError
from engine.nn.kv_cache import KVCache, StaticCache
from engine.tensor import DTypeError, Tensor


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, Hkv, S, D) -> (B, Hkv * n_rep, S, D), each kv head repeated n_rep times in place order (a
    copy; `attention` avoids it by grouping the queries instead)."""
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x.unsqueeze(2).expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """Eager attention in transformers' order of operations: scores in the activations' dtype, times
    scale, plus the additive mask, softmax in fp32, rounded back, times V. One backend op
    (backends/fused.py has the composition; a backend may run a decode kernel for one query row).
    q (B, Hq, L, D), k/v (B, Hkv, S, D), mask (B|1, 1, L, S) additive -> (B, L, Hq * D)."""
    b, hq, L, d = q.shape
    hkv, S = k.shape[1], k.shape[2]
    if k.shape[0] != b or v.shape[:3] != k.shape[:3] or k.shape[-1] != d or hq % hkv:
        raise ShapeError(f"attention(): q {q.shape}, k {k.shape}, v {v.shape} do not fit (GQA needs Hq % Hkv == 0)")
    if mask is not None and (mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2:] != (L, S)
                             or mask.shape[0] not in (1, b)):
        raise ShapeError(f"attention(): mask {mask.shape} must be (B|1, 1, {L}, {S})")
    if not (q.dtype is k.dtype is v.dtype) or (mask is not None and mask.dtype is not q.dtype):
        raise DTypeError(f"attention(): q, k, v (and mask) dtypes differ ({q.dtype.name}, {k.dtype.name}, "
                         f"{v.dtype.name}{', ' + mask.dtype.name if mask is not None else ''})")
    m = mask.array if mask is not None else None
    return Tensor._wrap(q.backend.attention(q.array, k.array, v.array, m, scale, q.dtype), q.backend, q.dtype)


def attention_keys(k: Tensor) -> Tensor:
    """Keys (B, H, S, D) that many attention calls will read (Whisper's cross-attention keys, computed once per
    audio), laid out as the backend's attention reads them best: each head's (D, S) contiguous, seen as
    (B, H, S, D), where the backend says so (numpy: attention_keys_transposed), else contiguous. A copy in
    either layout; the values are k's."""
    if getattr(k.backend, "attention_keys_transposed", False):
        return k.transpose(-1, -2).contiguous().transpose(-1, -2)
    return k.contiguous()


def causal_mask(query_pos: Tensor, key_pos: Tensor, attention_mask: Tensor | None = None,
                sliding_window: int | None = None, dtype=D.float32) -> Tensor:
    """Additive mask (B|1, 1, L, S): 0 where query i may read key j, else the dtype's minimum.
    query_pos (L,), key_pos (S,) are cache positions (key_pos -1: an empty slot). A key is readable
    when it is not in the future, within the window (key > query - window), and not padding
    (attention_mask (B, T) over all T positions so far; 0 marks padding)."""
    dt = D.get(dtype)
    b = query_pos.backend
    m = Tensor._wrap(b.causal_mask(query_pos.array, key_pos.array, sliding_window, dt), b, dt)  # (1, L, S)
    if attention_mask is not None:
        t = attention_mask.shape[-1]
        valid = attention_mask.index_select(1, key_pos.clamp(0, t - 1)) != 0  # (B, S)
        m = ops.where(valid.unsqueeze(1), m, min_value(dt))  # (B, L, S): padding masked too (0 and min are exact)
    return m.unsqueeze(1)


def positions(input_ids: Tensor, cache=None, attention_mask: Tensor | None = None,
              position_ids: Tensor | None = None, sliding_window: int | None = None, dtype=D.float32):
    """(position_ids (B|1, L), additive mask (B|1, 1, L, S), cache step or None) for a forward.

    Without a cache the keys are the L inputs themselves. With one, `cache.step(L)` places the new
    tokens. attention_mask (B, T) covers every position so far (past and new, T = cache.seen + L), as
    in transformers; with a StaticCache it covers all max_len slots (future ones 1), so its shape never
    changes. Default position_ids: with a mask, cumsum(mask) - 1 (so left padding does not shift
    positions, as transformers' generate does); else the cache positions.
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
    static = isinstance(cache, StaticCache)
    if attention_mask is not None:
        total = cache.max_len if static else (cache.seen if cache is not None else L)
        if attention_mask.shape != (b, total):
            what = "all cache slots" if static else "all positions so far"
            raise ValueError(f"attention_mask must be (batch, {what}) = {(b, total)}, got {attention_mask.shape}")
    if position_ids is None:
        if attention_mask is not None:
            pos = attention_mask.long().cumsum(-1) - 1
            pos = pos.masked_fill(attention_mask == 0, 1)
            # static: the query slots are device positions (gathered there); else the last L columns
            position_ids = pos.index_select(1, query_pos) if static else pos[:, -L:]  # (B, L)
        else:
            position_ids = query_pos.unsqueeze(0)  # (1, L)
    if L == 1 and attention_mask is None and sliding_window is None and isinstance(cache, KVCache) \
            and not cache.full_length:
        mask = None  # one new token reading exactly the filled prefix of a plain cache: nothing to mask
    else:
        mask = causal_mask(query_pos, key_pos, attention_mask, sliding_window, dtype)
    return position_ids, mask, step
