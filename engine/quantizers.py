"""Quantisers to ggml's block formats, written once over an array module (numpy, or cupy: a 7B model
quantises on the GPU in seconds): `quantize(a, qtype)`.

- Q4_K and Q6_K: the algorithm of llama.cpp's reference quantize_row_q4_K_ref / quantize_row_q6_K_ref
  (ggml-quants.c, no importance matrix), vectorised over all blocks of a tile at once. gguf-py has no
  quantiser for these.
- Q8_0, Q4_0, Q4_1: gguf-py's numpy quantisers (bit-exact to ggml's reference), op for op, so that they
  run on cupy arrays too (a test checks them against gguf-py bit for bit); engine.io.gguf writes files
  through gguf-py's own on the CPU.
engine/quant.py holds the block layouts, engine/backends/numpy_quant.py the dequantisers.

Q4_K, a super-block of 256 weights = 8 sub-blocks of 32:
  1. per sub-block, weights w = rms(x) + |x| and a search of (scale, min) over 21 candidate grids
     (make_qkx2_quants: nmax 15, rmin -1, rdelta 0.1, 20 steps, weighted squared error);
  2. the 8 scales and 8 mins quantised to 6 bits against the largest of each (d = max / 63,
     dmin = max_min / 63, both float16), packed into 12 bytes;
  3. every weight requantised against its sub-block's final (rounded) scale and min, 4 bits.
Q6_K, a super-block of 256 = 16 sub-blocks of 16:
  1. per sub-block, the scale of a symmetric 6-bit grid (-32..31) from a search of 19 candidate
     grids weighted by x^2 (make_qx_quants, rmse_type 1);
  2. the 16 scales quantised to int8 against the one of largest magnitude (d = -max / 128, float16);
  3. every weight requantised against d * scale, 6 bits split into 4 low + 2 high bits.
Rounding is ggml's nearest_int (to nearest, ties to even: np.rint) on float32 values; sums accumulate
in float64 and round once to float32 (ggml sums sequentially in float32; this way numpy and cupy give
the same blocks whatever their reduction order), and the candidates' errors come from sums rather
than a pass over the block, so a block can differ from llama.cpp's in the last bit of a scale (or the
pick between two near-equal candidates), never in the format: the dequantiser reads either the same way.
"""
from __future__ import annotations

import numpy as np

QK_K = 256
_F = np.float32
TILE_WEIGHTS = 1 << 18  # weights quantised per tile in numpy (temporaries stay near 16 MiB)


def _rint(xp, a):
    return xp.rint(a).astype(np.int32)


def _sum(a):
    """Row sums of a float32 (n, k) block, accumulated in float64 and rounded once to float32: the same
    value in any summation order (numpy's pairwise sum, cupy's tree reduction), so the quantiser picks
    the same grid on the CPU and on the GPU."""
    return a.sum(1, dtype=np.float64).astype(_F)


def _dot(a, b):
    """Row dot products of two float32 (n, k) blocks, as _sum (the float64 products are exact)."""
    return _sum(a.astype(np.float64) * b)


def _f16(xp, a):
    """float32 (n,) -> float16 bytes (n, 2)."""
    return a.astype(np.float16).view(np.uint8).reshape(-1, 2)


# ---- Q4_K ----------------------------------------------------------------------------------------------
def _qkx2(xp, x, w, nmax=15, rmin=-1.0, rdelta=0.1, nstep=20):
    """make_qkx2_quants over rows of x (n, 32) with weights w: (scale (n,), the_min (n,) = -min, L (n, 32)).
    As ggml: each candidate grid is taken against the min of the best fit so far. Each candidate's weighted
    squared error comes from the sums the fit already needs (sum w (a l + b - x)^2 expanded, in float64),
    and L is formed once, for the winning grid: fewer passes over the block than ggml's loop, same choice
    up to float rounding of near-ties."""
    f64 = np.float64
    mn = xp.minimum(x.min(1), _F(0))
    mx = x.max(1)
    wx = w * x
    sum_w, sum_x = _sum(w), _sum(wx)
    W, X, XX = sum_w.astype(f64), sum_x.astype(f64), _dot(wx, x).astype(f64)
    flat = mx == mn

    def grid(isc, m):
        """the candidate L for iscale isc against min m, and its sums: sum w l, sum w l^2, sum w l x."""
        la = xp.clip(xp.rint(isc[:, None] * (x - m[:, None])), _F(0), _F(nmax))
        wl = w * la
        return _sum(wl), _dot(wl, la), _dot(wl, x)

    def error(a, b, sl, sl2, sxl):
        a, b, sl, sl2, sxl = (v.astype(f64) for v in (a, b, sl, sl2, sxl))
        return a * a * sl2 + b * b * W + XX + 2 * a * b * sl - 2 * a * sxl - 2 * b * X

    def span(m):
        d = mx - m
        return xp.where(d > 0, d, _F(1))

    iscale = _F(nmax) / span(mn)
    scale = _F(1) / iscale
    best = error(scale, mn, *grid(iscale, mn))
    best_isc, best_mn = iscale, mn  # the grid L comes from
    for step in range(nstep + 1):
        isc = (_F(rmin) + _F(rdelta) * _F(step) + _F(nmax)) / span(mn)
        sl, sl2, sxl = grid(isc, mn)
        D = sum_w * sl2 - sl * sl
        ok = D > 0
        Ds = xp.where(ok, D, _F(1))
        ts = (sum_w * sxl - sum_x * sl) / Ds
        tm = (sl2 * sum_x - sl * sxl) / Ds
        pos = tm > 0
        tm = xp.where(pos, _F(0), tm)
        ts = xp.where(pos, sxl / xp.where(sl2 > 0, sl2, _F(1)), ts)
        better = ok & (error(ts, tm, sl, sl2, sxl) < best)
        best = xp.where(better, error(ts, tm, sl, sl2, sxl), best)
        best_isc, best_mn = xp.where(better, isc, best_isc), xp.where(better, mn, best_mn)
        scale = xp.where(better, ts, scale)
        mn = xp.where(better, tm, mn)
    L = xp.clip(xp.rint(best_isc[:, None] * (x - best_mn[:, None])), _F(0), _F(nmax)).astype(np.int32)
    scale = xp.where(flat, _F(0), scale)
    L = xp.where(flat[:, None], 0, L)
    return scale.astype(_F), (-mn).astype(_F), L


def _q4_k_blocks(xp, x):
    """(n, 256) float32 -> (n, 144) uint8 Q4_K blocks."""
    n = x.shape[0]
    sub = x.reshape(n * 8, 32)
    av = xp.sqrt(_sum(sub * sub) / _F(32))
    scales, mins, L = _qkx2(xp, sub, av[:, None] + xp.abs(sub))
    scales, mins, L = scales.reshape(n, 8), mins.reshape(n, 8), L.reshape(n, 8, 32)
    max_scale = xp.maximum(scales.max(1), _F(0))
    max_min = xp.maximum(mins.max(1), _F(0))
    inv_s = xp.where(max_scale > 0, _F(63) / xp.where(max_scale > 0, max_scale, _F(1)), _F(0))
    inv_m = xp.where(max_min > 0, _F(63) / xp.where(max_min > 0, max_min, _F(1)), _F(0))
    # uint8_t ls = nearest_int(...); MIN(63, ls): a negative value wraps to a large one, then 63
    ls = xp.minimum(_rint(xp, inv_s[:, None] * scales) & 0xFF, 63).astype(np.uint8)
    lm = xp.minimum(_rint(xp, inv_m[:, None] * mins) & 0xFF, 63).astype(np.uint8)
    packed = xp.zeros((n, 12), np.uint8)
    packed[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    d16, dmin16 = _f16(xp, max_scale / _F(63)), _f16(xp, max_min / _F(63))
    d = d16.view(np.float16).astype(_F)  # (n, 1): the stored, rounded values
    dmin = dmin16.view(np.float16).astype(_F)
    dl = d * ls.astype(_F)  # (n, 8)
    ml = dmin * lm.astype(_F)
    xs = x.reshape(n, 8, 32)
    keep = dl == 0  # ggml skips these sub-blocks and keeps the search's L
    req = xp.clip(_rint(xp, (xs + ml[..., None]) / xp.where(keep, _F(1), dl)[..., None]), 0, 15)
    L = xp.where(keep[..., None], L, req).astype(np.uint8).reshape(n, 4, 2, 32)
    qs = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(n, 128)
    return xp.concatenate([d16, dmin16, packed, qs], axis=1)


# ---- Q6_K ----------------------------------------------------------------------------------------------
def _qx(xp, x, nmax=32):
    """make_qx_quants(n=16, nmax, rmse_type=1, no weights) over rows of x (n, 16): (scale (n,), L (n, 16) in 0..63).
    L is formed once, for the winning grid."""
    idx = xp.argmax(xp.abs(x), axis=1)
    mx = x[xp.arange(x.shape[0]), idx]
    zero = xp.abs(mx) < _F(1e-15)
    mxs = xp.where(zero, _F(1), mx)
    w = x * x
    wx = w * x

    def grid(iscale):
        """sum w x l and sum w l^2 of the candidate l = clip(round(iscale x))."""
        q = xp.clip(xp.rint(iscale[:, None] * x), _F(-nmax), _F(nmax - 1))
        return _dot(wx, q), _dot(w * q, q)

    best_isc = _F(-nmax) / mxs
    sumlx, suml2 = grid(best_isc)
    scale = xp.where(suml2 > 0, sumlx / xp.where(suml2 > 0, suml2, _F(1)), _F(0))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        isc = -(_F(nmax) + _F(0.1) * _F(step)) / mxs
        slx, sl2 = grid(isc)
        better = (sl2 > 0) & (slx * slx > best * sl2)
        sc = slx / xp.where(sl2 > 0, sl2, _F(1))
        best_isc = xp.where(better, isc, best_isc)
        scale = xp.where(better, sc, scale)
        best = xp.where(better, sc * slx, best)
    L = xp.clip(xp.rint(best_isc[:, None] * x), _F(-nmax), _F(nmax - 1)).astype(np.int32) + nmax
    return xp.where(zero, _F(0), scale).astype(_F), xp.where(zero[:, None], 0, L)


def _q6_k_blocks(xp, x):
    """(n, 256) float32 -> (n, 210) uint8 Q6_K blocks."""
    n = x.shape[0]
    scales, L = _qx(xp, x.reshape(n * 16, 16))
    scales, L = scales.reshape(n, 16), L.reshape(n, 16, 16)
    i = xp.argmax(xp.abs(scales), axis=1)
    max_scale = scales[xp.arange(n), i]
    zero = xp.abs(max_scale) < _F(1e-15)
    iscale = _F(-128) / xp.where(zero, _F(1), max_scale)
    d16 = _f16(xp, xp.where(zero, _F(0), _F(1) / iscale))
    sc = xp.minimum(_rint(xp, iscale[:, None] * scales), 127).astype(np.int8)
    sc = xp.where(zero[:, None], np.int8(0), sc)
    dl = d16.view(np.float16).astype(_F) * sc.astype(_F)  # (n, 16)
    keep = dl == 0
    req = xp.clip(_rint(xp, x.reshape(n, 16, 16) / xp.where(keep, _F(1), dl)[..., None]), -32, 31) + 32
    L = xp.where(keep[..., None], L, req).astype(np.uint8).reshape(n, 2, 4, 32)  # (n, half, quarter, 32)
    ql = xp.concatenate([L[:, :, 0] & 0xF | ((L[:, :, 2] & 0xF) << 4),
                         L[:, :, 1] & 0xF | ((L[:, :, 3] & 0xF) << 4)], axis=2).reshape(n, 128)
    qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4)
          | ((L[:, :, 3] >> 4) << 6)).reshape(n, 64)
    out = xp.concatenate([ql, qh, sc.view(np.uint8), d16], axis=1)
    out[zero] = 0
    return out


# ---- Q8_0, Q4_0, Q4_1 (gguf-py's quantize_blocks, op for op) ----------------------------------------------
def _roundf(xp, n):
    """Round half away from zero, as gguf-py's np_roundf (C's roundf)."""
    a = xp.abs(n)
    floored = xp.floor(a)
    return xp.sign(n) * (floored + xp.floor(_F(2) * (a - floored)))


def _inv(xp, d):
    return xp.where(d == 0, _F(0), _F(1) / xp.where(d == 0, _F(1), d))


def _q8_0_blocks(xp, x):
    """(n, 32) float32 -> (n, 34) uint8: f16 d = amax / 127, q = roundf(x / d)."""
    d = xp.abs(x).max(axis=1, keepdims=True) / _F(127)
    qs = _roundf(xp, x * _inv(xp, d))
    return xp.concatenate([d.astype(np.float16).view(np.uint8), qs.astype(np.int8).view(np.uint8)], axis=1)


def _pack_nibbles(xp, qs):
    n = qs.shape[0]
    qs = qs.reshape(n, 2, 16)
    return qs[:, 0] | (qs[:, 1] << np.uint8(4))


def _q4_0_blocks(xp, x):
    """(n, 32) -> (n, 18): d = the value of largest magnitude / -8, q = trunc(x / d + 8.5) in 0..15."""
    imax = xp.abs(x).argmax(axis=-1)[:, None]
    d = xp.take_along_axis(x, imax, axis=-1) / _F(-8)
    qs = xp.clip(xp.trunc(x * _inv(xp, d) + _F(8.5)).astype(np.uint8), 0, 15)
    return xp.concatenate([d.astype(np.float16).view(np.uint8), _pack_nibbles(xp, qs)], axis=-1)


def _q4_1_blocks(xp, x):
    """(n, 32) -> (n, 20): d = (max - min) / 15, m = min, q = trunc((x - min) / d + 0.5) in 0..15."""
    mx, mn = x.max(axis=-1, keepdims=True), x.min(axis=-1, keepdims=True)
    d = (mx - mn) / _F(15)
    qs = xp.clip(xp.trunc((x - mn) * _inv(xp, d) + _F(0.5)).astype(np.uint8), 0, 15)
    return xp.concatenate([d.astype(np.float16).view(np.uint8), mn.astype(np.float16).view(np.uint8),
                           _pack_nibbles(xp, qs)], axis=-1)


_BLOCKS = {"q4_k": (_q4_k_blocks, 256, 144), "q6_k": (_q6_k_blocks, 256, 210),
           "q8_0": (_q8_0_blocks, 32, 34), "q4_0": (_q4_0_blocks, 32, 18), "q4_1": (_q4_1_blocks, 32, 20)}


def array_module(a):
    """numpy, or cupy for a cupy array (the quantisers run on the GPU too: a 7B model in seconds)."""
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy
        return cupy
    return np


def quantize(a, qtype: str):
    """A (rows, cols) float matrix -> (rows, cols / block_size * type_size) uint8 blocks of `qtype` (q4_k,
    q6_k, q8_0, q4_0, q4_1), a tile of whole rows at a time. A numpy array (or a memory map) is quantised
    in numpy, a cupy array on its GPU. ValueError when cols is not a whole number of blocks."""
    fn, bs, size = _BLOCKS[qtype]
    xp = array_module(a)
    if a.ndim != 2 or a.shape[1] % bs:
        raise ValueError(f"{qtype}: needs a 2-d matrix with rows of a multiple of {bs} weights, got shape {a.shape}")
    rows, cols = a.shape
    out = xp.empty((rows, cols // bs * size), np.uint8)
    step = max(1, (TILE_WEIGHTS if xp is np else 64 * TILE_WEIGHTS) // cols)
    for r0 in range(0, rows, step):
        tile = xp.ascontiguousarray(xp.asarray(a[r0:r0 + step], dtype=_F))
        out[r0:r0 + tile.shape[0]] = fn(xp, tile.reshape(-1, bs)).reshape(tile.shape[0], -1)
    return out
