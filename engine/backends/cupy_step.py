"""A decode step's position work in one launch each (fused.py's rope, causal_mask and advance; kernels in
cuda/rows.cu and cuda/sample.cu): each function returns None where its kernel does not take the operands, and the
backend then runs fused.py's composition (the same numbers)."""
from __future__ import annotations

import cupy
import numpy as np

from engine import dtype as D
from engine.backends import cupy_kernels as K

STEP_OPS = {"enabled": True}  # False: rope, causal_mask and advance run as fused.py's compositions (A/B runs)


def rope(backend, positions, inv_freq, scaling: float, out_dtype):
    """(cos, sin) (..., 2 len(inv_freq)) of positions (...) int64 and inv_freq float32, or None."""
    if not (STEP_OPS["enabled"] and positions.dtype == np.int64 and positions.flags.c_contiguous and positions.size
            and inv_freq.ndim == 1 and inv_freq.dtype == np.float32 and inv_freq.flags.c_contiguous
            and inv_freq.size and out_dtype.name in K.TYPES):
        return None
    n, half = positions.size, inv_freq.size
    cos = backend.empty(positions.shape + (2 * half,), out_dtype)
    sin = backend.empty(cos.shape, out_dtype)
    K._fn(f"rope<{K.type_name(cos.dtype)}>")((min(-(-n * 2 * half // 256), 1024),), (256,), (
        positions, inv_freq, cupy.int64(n), cupy.int32(half), cupy.float32(scaling), cupy.int32(scaling != 1.0),
        cos, sin))
    return cos, sin


def causal_mask(backend, query_pos, key_pos, window, out_dtype):
    """The additive mask (1, L, S) of query_pos (L,) and key_pos (S,) int64, or None."""
    if not (STEP_OPS["enabled"] and query_pos.dtype == key_pos.dtype == np.int64
            and query_pos.ndim == key_pos.ndim == 1 and query_pos.size and key_pos.size and out_dtype.name in K.TYPES):
        return None
    L, S = query_pos.size, key_pos.size
    m = backend.empty((1, L, S), out_dtype)
    K._fn(f"causal_mask<{K.type_name(m.dtype)}>")((min(-(-L * S // 256), 1024),), (256,), (
        query_pos, cupy.int64(query_pos.strides[0] // 8), key_pos, cupy.int64(key_pos.strides[0] // 8),
        cupy.int32(L), cupy.int32(S), cupy.int32(window is not None), cupy.int64(window or 0),
        cupy.float32(D.min_value(out_dtype)), m))
    return m


def advance(tokens, tok, out, n) -> bool:
    """tok (B, 1) = out[:, n] = tokens (B,), then n += 1, in place (all int64); False where it does not apply."""
    B = tokens.shape[0]
    if not (STEP_OPS["enabled"] and tokens.dtype == tok.dtype == out.dtype == n.dtype == np.int64
            and tokens.ndim == 1 and tokens.flags.c_contiguous and tok.shape == (B, 1)
            and out.ndim == 2 and out.shape[0] == B and out.strides[1] == 8 and n.size == 1):
        return False
    K._fn("advance")((1,), (min(1024, max(32, B)),), (
        tokens, tok, cupy.int64(tok.strides[0] // 8), out, cupy.int64(out.strides[0] // 8),
        cupy.int64(out.shape[1]), n, cupy.int32(B)))
    return True
