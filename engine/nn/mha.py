"""MultiheadAttention with torch's arguments, parameter names and mask conventions.

Parameters (torch's names, so torch state dicts load as they are):
    in_proj_weight (3E, E), in_proj_bias (3E,)      q, k and v stacked in that order
    q_proj_weight (E, E), k_proj_weight (E, kdim), v_proj_weight (E, vdim)   instead, when kdim/vdim != E
    out_proj.weight (E, E), out_proj.bias (E,)
    bias_k, bias_v (1, 1, E)                         with add_bias_kv

forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
        average_attn_weights=True, is_causal=False) -> (attn_output, attn_weights or None)

Masks follow torch's MultiheadAttention, which is the opposite of scaled_dot_product_attention's
boolean convention: a True in a boolean mask means "may NOT attend"; a float mask is added to the
scores. attn_mask is (L, S) or (N*num_heads, L, S); key_padding_mask is (N, S). As in torch,
is_causal is only a hint and needs attn_mask to hold the causal mask.
"""
from __future__ import annotations

import math

from engine import functional as F
from engine import ops
from engine.layout import ShapeError
from engine.nn.module import Module


class _OutProj(Module):
    """out_proj: a plain (weight, bias) holder, applied with F.linear as torch's MHA does (torch never
    calls its out_proj module, so neither side's hooks/taps fire for it)."""

    def __init__(self, e: int, bias: bool, dtype=None, device=None):
        super().__init__()
        self.weight = ops.zeros(e, e, dtype=dtype, device=device)
        self.bias = ops.zeros(e, dtype=dtype, device=device) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class MultiheadAttention(Module):
    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, device=None, dtype=None):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.batch_first, self.add_zero_attn = dropout, batch_first, add_zero_attn
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        z = lambda *s: ops.zeros(*s, dtype=dtype, device=device)  # noqa: E731
        if self._qkv_same_embed_dim:
            self.in_proj_weight = z(3 * embed_dim, embed_dim)
            self.q_proj_weight = self.k_proj_weight = self.v_proj_weight = None
        else:
            self.in_proj_weight = None
            self.q_proj_weight = z(embed_dim, embed_dim)
            self.k_proj_weight = z(embed_dim, self.kdim)
            self.v_proj_weight = z(embed_dim, self.vdim)
        self.in_proj_bias = z(3 * embed_dim) if bias else None
        self.out_proj = _OutProj(embed_dim, bias, dtype, device)
        if add_bias_kv:
            self.bias_k, self.bias_v = z(1, 1, embed_dim), z(1, 1, embed_dim)
        else:
            self.bias_k = self.bias_v = None

    # ---- helpers ----------------------------------------------------------------------------------
    def _project(self, query, key, value):
        e = self.embed_dim
        b = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight.chunk(3)
        else:
            w = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        assert w[0].shape[0] == e
        return F.linear(query, w[0], b[0]), F.linear(key, w[1], b[1]), F.linear(value, w[2], b[2])

    @staticmethod
    def _additive(mask, dtype, what: str):
        """bool (True = masked) -> 0 / -inf; float -> itself, in the compute dtype."""
        if mask is None:
            return None
        if mask.dtype.name == "bool":
            return ops.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
        if not mask.dtype.is_floating_point:
            raise TypeError(f"MultiheadAttention: {what} must be bool or floating, got {mask.dtype.name}")
        return mask.to(dtype)

    def forward(self, query, key, value, key_padding_mask=None, need_weights: bool = True, attn_mask=None,
                average_attn_weights: bool = True, is_causal: bool = False):
        batched = query.ndim == 3
        if query.ndim not in (2, 3) or key.ndim != query.ndim or value.ndim != query.ndim:
            raise ShapeError(f"MultiheadAttention: query {query.shape}, key {key.shape}, value {value.shape} "
                             "must all be 3-d (batched) or 2-d (unbatched)")
        if is_causal and attn_mask is None:
            raise ValueError("MultiheadAttention: is_causal=True is a hint and needs attn_mask (as in torch)")
        if not batched:                                # (L, E) -> (L, 1, E)
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:                         # (N, L, E) -> (L, N, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        tgt_len, bsz, e = query.shape
        if e != self.embed_dim:
            raise ShapeError(f"MultiheadAttention: query embed dim {e} != embed_dim {self.embed_dim}")
        h, hd = self.num_heads, self.head_dim
        dt = query.dtype
        q, k, v = self._project(query, key, value)     # (L, N, E), (S, N, E), (S, N, E)
        attn_mask = self._additive(attn_mask, dt, "attn_mask")
        key_padding_mask = self._additive(key_padding_mask, dt, "key_padding_mask")
        if attn_mask is not None and attn_mask.ndim == 2:
            attn_mask = attn_mask.unsqueeze(0)         # (1, L, S)
        if self.bias_k is not None:                    # one extra key/value position
            k = ops.cat([k, self.bias_k.expand(1, bsz, e)], dim=0)
            v = ops.cat([v, self.bias_v.expand(1, bsz, e)], dim=0)
            attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
        # (L, N, E) -> (N*H, L, hd): torch's head layout, batch-major
        q = q.reshape(tgt_len, bsz * h, hd).transpose(0, 1)
        k = k.reshape(k.shape[0], bsz * h, hd).transpose(0, 1)
        v = v.reshape(v.shape[0], bsz * h, hd).transpose(0, 1)
        if self.add_zero_attn:
            k = ops.cat([k, ops.zeros(bsz * h, 1, hd, dtype=dt, device=k.device)], dim=1)
            v = ops.cat([v, ops.zeros(bsz * h, 1, hd, dtype=dt, device=v.device)], dim=1)
            attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
        src_len = k.shape[1]
        if key_padding_mask is not None:
            if key_padding_mask.shape != (bsz, src_len):
                raise ShapeError(f"MultiheadAttention: key_padding_mask {key_padding_mask.shape} != ({bsz}, {src_len})")
            kpm = key_padding_mask.reshape(bsz, 1, 1, src_len).expand(bsz, h, 1, src_len).reshape(bsz * h, 1, src_len)
            attn_mask = kpm if attn_mask is None else attn_mask + kpm
        scores = (q * math.sqrt(1.0 / hd)) @ k.transpose(1, 2)   # (N*H, L, S), q scaled first as in torch
        if attn_mask is not None:
            scores = scores + attn_mask
        weights = F.softmax(scores, dim=-1)
        out = weights @ v                                        # (N*H, L, hd)
        out = out.transpose(0, 1).reshape(tgt_len * bsz, e)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias).reshape(tgt_len, bsz, e)
        if need_weights:
            weights = weights.reshape(bsz, h, tgt_len, src_len)
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:
            weights = None
        if not batched:
            return out.squeeze(1), (weights.squeeze(0) if weights is not None else None)
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def extra_repr(self):
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"
