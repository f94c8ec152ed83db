"""Rotary position embeddings (RoPE) in the Hugging Face "rotate half" layout.

Layout: a head vector x of size d is split into halves (x1, x2) = (x[:d/2], x[d/2:]), and pair i is
(x1[i], x2[i]) rotated by angle pos * inv_freq[i]:
    out = x * cos(emb) + rotate_half(x) * sin(emb),  rotate_half(x) = cat(-x2, x1),
    emb = cat(freqs, freqs), freqs = pos * inv_freq.
(The original Meta checkpoints interleave pairs (x[2i], x[2i+1]); HF checkpoints permute the q/k
rows so that the half split applies. Engine models read HF checkpoints, so the half split is right.)

The inverse frequencies follow transformers' modeling_rope_utils for the rope types "default",
"linear", "dynamic" and "llama3", computed in float32 as torch does. Positions are a tensor, so the
forward needs no host read, except for "dynamic", whose frequencies depend on the longest position
seen (as in transformers, the one documented host read).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from engine import dtype as D
from engine import ops
from engine.layout import ShapeError
from engine.nn.module import Module
from engine.tensor import DTypeError, Tensor

ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


def rope_parameters(cfg: dict) -> dict:
    """The standardised rope dict of a HF config: both the new `rope_parameters` form and the old
    `rope_theta` + `rope_scaling` form give {"rope_type", "rope_theta", ...scaling keys}."""
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    params.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type", params.pop("type", "default"))
    if params.get("partial_rotary_factor") is None and cfg.get("partial_rotary_factor") is not None:
        params["partial_rotary_factor"] = cfg["partial_rotary_factor"]
    if params["rope_type"] == "llama3":
        params.setdefault("original_max_position_embeddings", cfg.get("max_position_embeddings"))
    return params


def inv_freq(params: dict, head_dim: int, max_position_embeddings: int, seq_len=None) -> tuple[np.ndarray, float]:
    """(inverse frequencies as float32 (rot_dim / 2,), attention scaling) for a standardised rope dict."""
    rtype = params["rope_type"]
    base = float(params["rope_theta"])
    dim = int(head_dim * params.get("partial_rotary_factor", 1.0) or head_dim)
    f32 = np.float32
    exponents = np.arange(0, dim, 2, dtype=f32) / f32(dim)
    if rtype == "default":
        return f32(1.0) / (f32(base) ** exponents), 1.0
    factor = float(params["factor"])
    if rtype == "linear":
        return (f32(1.0) / (f32(base) ** exponents)) / f32(factor), 1.0
    if rtype == "dynamic":
        # NTK-aware: a larger base once the sequence outgrows max_position_embeddings (torch computes
        # this in float32 tensors, so do we)
        n = f32(max(int(seq_len or 0), max_position_embeddings))
        scaled = f32(base) * ((f32(factor) * n / f32(max_position_embeddings)) - f32(factor - 1)) ** f32(dim / (dim - 2))
        return f32(1.0) / (f32(scaled) ** exponents), 1.0
    if rtype == "llama3":
        freq = f32(1.0) / (f32(base) ** exponents)
        low, high = float(params["low_freq_factor"]), float(params["high_freq_factor"])
        old_len = float(params["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = f32(2 * math.pi) / freq
        # long wavelengths (low frequencies) are divided by factor, short ones kept, and the band in
        # between interpolated smoothly
        scaled = np.where(wavelen > low_wavelen, freq / f32(factor), freq).astype(f32)
        smooth = ((f32(old_len) / wavelen - f32(low)) / f32(high - low)).astype(f32)
        smoothed = ((f32(1) - smooth) * scaled / f32(factor) + smooth * scaled).astype(f32)
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(f32), 1.0
    raise NotImplementedError(f"rope_type {rtype!r} is not implemented (supported: {', '.join(ROPE_TYPES)})")


class RotaryEmbedding(Module):
    """position_ids (B, L) int64 -> (cos, sin), each (B, L, rot_dim) in the activations' dtype."""

    def __init__(self, head_dim: int, params: dict, max_position_embeddings: int, device=None):
        super().__init__()
        self.params, self.head_dim, self.max_position_embeddings = params, head_dim, max_position_embeddings
        self.rope_type = params["rope_type"]
        freq, self.attention_scaling = inv_freq(params, head_dim, max_position_embeddings)
        self.rot_dim = 2 * len(freq)
        self.device = device
        self._set_freq(freq)
        object.__setattr__(self, "original_inv_freq", self.inv_freq)
        self.max_seq_len_cached = max_position_embeddings

    def _set_freq(self, freq):
        # a plain attribute, not a buffer: it is not state, and it stays fp32 when the model is cast
        object.__setattr__(self, "inv_freq", ops.tensor(freq, device=self.device))

    def _dynamic_update(self, position_ids):
        # transformers' dynamic_rope_update: grow past the cached length, reset once back below the
        # original length. Needs max(position) on the host.
        seq_len = int(position_ids.max().item()) + 1
        if seq_len > self.max_seq_len_cached:
            freq, _ = inv_freq(self.params, self.head_dim, self.max_position_embeddings, seq_len)
            self._set_freq(freq)
            self.max_seq_len_cached = seq_len
        if seq_len < self.max_position_embeddings < self.max_seq_len_cached:
            object.__setattr__(self, "inv_freq", self.original_inv_freq)
            self.max_seq_len_cached = self.max_position_embeddings

    def forward(self, position_ids, dtype):
        if self.rope_type == "dynamic":
            self._dynamic_update(position_ids)
        if self.inv_freq.device != position_ids.device:  # the model was moved with Module.to()
            self.device = position_ids.device
            object.__setattr__(self, "original_inv_freq", self.original_inv_freq.to(self.device))
            self._set_freq(self.inv_freq.numpy())
        # emb = cat(freqs, freqs), freqs = float(position_ids) * inv_freq: (B, L, 1) * (rot/2,) -> (B, L, rot);
        # cos(emb), sin(emb) [* attention_scaling], rounded to dtype: one backend op (backends/fused.py)
        dt = D.get(dtype)
        b = position_ids.backend
        cos, sin = b.rope(position_ids.array, self.inv_freq.array, self.attention_scaling, dt)
        return Tensor._wrap(cos, b, dt), Tensor._wrap(sin, b, dt)


def rotate_half(x):
    """cat(-x2, x1) over the last dim."""
    half = x.shape[-1] // 2
    return ops.cat([-x[..., half:], x[..., :half]], -1)


def signed_sin(sin):
    """cat(-s1, s2) for sin = cat(s1, s2): rotate_half(x) * sin == swap_halves(x) * signed_sin(sin)
    exactly (a sign flip rounds nothing), one op less per rotation. Compute once per forward: one launch,
    sin times a cached (-1, .., 1, ..) row (exact)."""
    return sin * _signs(sin.shape[-1], sin.dtype, sin.device)


@functools.lru_cache(maxsize=None)
def _signs(rot: int, dtype, device):
    half = rot // 2
    return ops.tensor(np.concatenate([-np.ones(half), np.ones(rot - half)]), dtype=dtype, device=device)


def apply_rotary(x, cos, sin_signed):
    """x (B, H, L, d), cos and signed_sin(sin) (B|1, L, rot) with rot <= d: rotate the first `rot`
    dims of every head (partial rotary, as Phi-3 mini-4k's successors use), pass the rest through.
    Same arithmetic as transformers' x * cos + rotate_half(x) * sin, op by op; one backend kernel
    (backends/fused.py has the composition)."""
    if cos.dtype is not x.dtype or sin_signed.dtype is not x.dtype:
        raise DTypeError(f"apply_rotary(): cos/sin ({cos.dtype.name}, {sin_signed.dtype.name}) must be in the "
                         f"activations' dtype {x.dtype.name}")
    rot = cos.shape[-1]
    if x.ndim != 4 or cos.shape != sin_signed.shape or cos.ndim != 3 or rot > x.shape[-1] or rot % 2 \
            or cos.shape[1] != x.shape[2] or cos.shape[0] not in (1, x.shape[0]):
        raise ShapeError(f"apply_rotary(): x {x.shape} (B, H, L, d) and cos/sin {cos.shape}, {sin_signed.shape} "
                         f"(B|1, L, rot <= d, rot even) do not fit")
    return Tensor._wrap(x.backend.rotary(x.array, cos.array, sin_signed.array, x.dtype), x.backend, x.dtype)
