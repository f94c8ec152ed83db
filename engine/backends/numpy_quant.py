"""Kernels over quantized weights (engine/quant.py), a mixin of NumpyBackend (the cupy backend overrides
them with fused CUDA kernels where the operands fit, and inherits them, with xp = cupy, elsewhere).

  qlinear(x, data, qtype, cols, b, out)   x @ W.T + b: for up to DOT_ROWS rows of x (decode), per-block
                                          dot products of the quants with x, scaled per block (_qdot);
                                          for more rows, W dequantised a tile of rows at a time
  qtake(data, index, qtype, cols, out)    rows of W, dequantised (embedding lookups)
  dequantize(data, qtype, cols, out)      the whole of W (explicit callers only)

`data` is the (rows, row_bytes) uint8 array of ggml blocks. A tile is at most TILE_WEIGHTS weights
(whole rows), so a matrix is never unpacked at once: memory beyond the packed bytes stays at one
tile of float32 whatever the matrix size. The arithmetic is gguf-py's numpy dequantiser's
(gguf/quants.py, itself ggml-quants.c's), op for op, so the values are bit-identical to it.

The block-dot path reads each block array in a decode layout (_tile_layout), made on its first product and kept while
the array lives (QSCALES; TAPER_QSCALES=0 makes each tile's layout every product instead, with the same products bit
for bit): the block scales in float32 (numpy converts float16 slowly, about 1.3 ns a value), and the quants themselves
regrouped block-major, without the header bytes: each tile's (nb, bytes a block, rows) array, so that a tile's dots
are plain GEMVs over long rows (a batched product of (r, 20)-byte runs spent three times as long in OpenBLAS's small
GEMVs; Q4_K and Q6_K read as their blocks lie took 1.4x and 6.5x as long as now). Still 4 or 8 bits a weight: 16 bytes
a 32-weight block for Q4_1 (+80% of its bytes beside the file's) and 8 of scales (+40%); Q8_0 32 + 4 (+106%); Q4_0
16 + 4 (+111%); Q4_K 128 + 64 a 256-weight block (+133%); Q6_K, its 6-bit quants a byte each, 256 + 64 (+152%).
SmolLM2-135M Q4_1: about 110 MB beside the file's 97 MB, which `taper generate` reports. The blocks must not be
written in place once multiplied (the engine never does: quantize_module and the GGUF loader make new arrays).
"""
from __future__ import annotations

import os
import weakref

import numpy as np

from engine import dtype as D
from engine.quant import qtype as _qtype

TILE_WEIGHTS = 1 << 18  # weights dequantised per tile (1 MiB of float32)
DOT_ROWS = 8  # up to this many rows of x take the block-dot path (numpy, float32)
DOT_TILE = 1 << 19  # weights per tile of the block-dot path (2 MiB of float32 quants; session 18: 256K ~8% slower)
QSCALES = {"enabled": os.environ.get("TAPER_QSCALES", "1") != "0"}  # keep each block array's decode layout
_KEPT: dict = {}  # id(blocks array) -> (weakref to it, dot_spans, each span's _tile_layout), dropped when it dies


def kept_layout_bytes(data) -> int:
    """Bytes of the decode layout kept for block array `data` (its quants block-major and its scales); 0 when
    none is: not multiplied yet on the CPU's block-dot path, or QSCALES off."""
    hit = _KEPT.get(id(data))
    return sum(a.nbytes for lay in hit[2] for a in lay) if hit is not None and hit[0]() is data else 0


def dot_spans(rows: int, cols: int) -> list:
    """The block-dot path's tiles: (r0, r1) row ranges of at most DOT_TILE weights (one row at least), as even
    as whole rows make them (576 rows of 576 are two tiles of 288, not 455 and 121)."""
    n = max(1, -(-rows * cols // DOT_TILE))
    step = -(-rows // n)
    return [(r0, min(rows, r0 + step)) for r0 in range(0, rows, step)]


def tile_rows(cols: int) -> int:
    return max(1, TILE_WEIGHTS // max(cols, 1))


class QuantKernels:
    qtile_scale = 1  # a backend may take tiles of this many times TILE_WEIGHTS (the GPU: more memory, fewer launches)
    # ---- block formats: blocks (n, type_size) uint8 -> (n, block_size) float32 -------------------------
    def _f16(self, b):
        """Two bytes per block as float16 -> float32 (n, 1)."""
        return self.xp.ascontiguousarray(b).view(self.xp.float16).astype(self.xp.float32)

    def _dq_q8_0(self, blocks):
        d = self._f16(blocks[:, :2])
        x = self.xp.ascontiguousarray(blocks[:, 2:]).view(self.xp.int8).astype(self.xp.float32)
        return x * d

    def _nibbles(self, qs, n, width):
        """(n, k * width) bytes -> (n, k, 2, width) nibbles: low halves of each run of `width` bytes,
        then the high halves (ggml's order)."""
        xp = self.xp
        q = qs.reshape((n, -1, 1, width)) >> xp.array([0, 4], dtype=xp.uint8).reshape((1, 1, 2, 1))
        return q & xp.uint8(0x0F)

    def _dq_q4_0(self, blocks):
        xp, n = self.xp, blocks.shape[0]
        d = self._f16(blocks[:, :2])
        qs = self._nibbles(blocks[:, 2:], n, 16).reshape((n, -1)).astype(xp.int8) - xp.int8(8)
        return d * qs.astype(xp.float32)

    def _dq_q4_1(self, blocks):
        xp, n = self.xp, blocks.shape[0]
        d, m = self._f16(blocks[:, :2]), self._f16(blocks[:, 2:4])
        qs = self._nibbles(blocks[:, 4:], n, 16).reshape((n, -1)).astype(xp.float32)
        return (d * qs) + m

    def _dq_q4_k(self, blocks):
        xp, n = self.xp, blocks.shape[0]
        d, dmin = self._f16(blocks[:, :2]), self._f16(blocks[:, 2:4])
        scales = blocks[:, 4:16].reshape((n, 3, 4))  # 8 six-bit scales and 8 six-bit mins, packed
        s0, s1, s2 = scales[:, 0:1], scales[:, 1:2], scales[:, 2:3]
        sc = xp.concatenate([s0 & 0x3F, (s2 & 0x0F) | ((s0 >> 2) & 0x30)], axis=-1).reshape((n, 8))
        mn = xp.concatenate([s1 & 0x3F, (s2 >> 4) | ((s1 >> 2) & 0x30)], axis=-1).reshape((n, 8))
        d = (d * sc.astype(xp.float32)).reshape((n, -1, 1))
        dm = (dmin * mn.astype(xp.float32)).reshape((n, -1, 1))
        qs = self._nibbles(blocks[:, 16:], n, 32).reshape((n, -1, 32)).astype(xp.float32)
        return (d * qs - dm).reshape((n, 256))

    def _dq_q6_k(self, blocks):
        xp, n = self.xp, blocks.shape[0]
        ql, qh, scales = blocks[:, :128], blocks[:, 128:192], blocks[:, 192:208]
        scales = xp.ascontiguousarray(scales).view(xp.int8).astype(xp.float32)
        d = (self._f16(blocks[:, 208:210]) * scales).reshape((n, 16, 1))
        ql = self._nibbles(ql, n, 64).reshape((n, -1, 32))
        qh = qh.reshape((n, -1, 1, 32)) >> xp.array([0, 2, 4, 6], dtype=xp.uint8).reshape((1, 1, 4, 1))
        qh = (qh & xp.uint8(0x03)).reshape((n, -1, 32))
        q = (ql | (qh << xp.uint8(4))).astype(xp.int8) - xp.int8(32)
        return (d * q.reshape((n, 16, -1)).astype(xp.float32)).reshape((n, 256))

    def _dequant_rows(self, raw, q, cols: int):
        """(r, row_bytes) uint8 -> (r, cols) float32."""
        r = raw.shape[0]
        blocks = self.xp.ascontiguousarray(raw).reshape((-1, q.type_size))
        return getattr(self, "_dq_" + q.name)(blocks).reshape((r, cols))

    # ---- block dot products (decode rows on the CPU) ------------------------------------------------------------
    # W x = sum over blocks of scale * (q . x_block) (+ min * sum(x_block)): the integer quants go into float32
    # once, a cache-sized tile at a time, one batched product per tile gives every (row, block) dot, and the
    # block scales weigh them; the weights themselves (scale * q + min) are never formed. Each tile's quants are
    # read block-major (_tile_layout), so nibbles and floats come out as (n, k, r) for the n runs of k weights that
    # one scale covers, and x (n, m, k) multiplies them as n GEMVs over rows of r. Each _dot_* takes x's layout
    # (_xlay) and the tile's (_tile_layout) and returns y (m, r).
    @staticmethod
    def _halves(blk, at: int):
        """The float16 at byte `at` (even) of each block, as float32: (r, nb, type_size) -> (r, nb)."""
        return blk.view(np.float16)[..., at // 2].astype(np.float32)

    def _xlay(self, xb, q):
        """x as the tiles' dots read it, by the runs of weights that one scale covers (n of them, k weights each: the
        blocks of 32 of q8_0, q4_0, q4_1; q4_k's sub-blocks of 32, nb * 8; q6_k's of 16, nb * 16): xq (n, m, k) and
        the sums (m, n)."""
        xs = xb.reshape(xb.shape[0], -1, 16 if q.name == "q6_k" else 32)  # (m, n, k)
        return xs.transpose(1, 0, 2), xs.sum(-1)

    def _block_scales(self, blk, q) -> tuple:
        """The float32 scales each block's dot is weighed by, per row: blocks (r, nb, type_size) -> q8_0 / q4_0
        (d (r, nb),); q4_1 (d, m); q4_k (d * scale, dmin * min) (r, nb, 8); q6_k (d * scale (r, nb * 16),)."""
        if q.name in ("q8_0", "q4_0"):
            return (self._halves(blk, 0),)
        if q.name == "q4_1":
            return self._halves(blk, 0), self._halves(blk, 2)
        r, nb, _ = blk.shape
        if q.name == "q6_k":
            return ((self._halves(blk, 208)[..., None] * blk[..., 192:208].view(np.int8).astype(np.float32))
                    .reshape(r, -1),)
        d, dmin = self._halves(blk, 0), self._halves(blk, 2)
        sc = blk[..., 4:16].reshape(r, nb, 3, 4)  # 8 six-bit scales and 8 six-bit mins, packed (as _dq_q4_k)
        s0, s1, s2 = sc[..., 0, :], sc[..., 1, :], sc[..., 2, :]
        scale = np.concatenate([s0 & 0x3F, (s2 & 0x0F) | ((s0 >> 2) & 0x30)], axis=-1).astype(np.float32)
        mins = np.concatenate([s1 & 0x3F, (s2 >> 4) | ((s1 >> 2) & 0x30)], axis=-1).astype(np.float32)
        return d[..., None] * scale, dmin[..., None] * mins

    def _tile_layout(self, blk, q) -> tuple:
        """What a tile's dot reads of its blocks (r, nb, type_size): the quants block-major, then the scales
        transposed, each (n, r) for n the runs _xlay names. The quants: q8_0, q4_0, q4_1, q4_k their bytes without
        the header, (nb, k, r) (int8 for q8_0); q6_k its 6-bit quants as int8 less 32, (nb * 16, 16, r)."""
        sc = self._block_scales(blk, q)
        r, nb, _ = blk.shape
        if q.name == "q6_k":  # weight 128h + 32j + e: low 4 bits in ql 64h + 32(j % 2) + e, high 2 in qh 32h + e
            ql = blk[..., :128].reshape(r, nb, 2, 2, 32)
            qh = blk[..., 128:192].reshape(r, nb, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(4, 1)
            lo = np.concatenate([ql & 0x0F, ql >> 4], axis=3)  # (r, nb, 2, 4, 32): j = 0..3 of each half
            qi = ((lo | ((qh & 0x03) << 4)).view(np.int8) - np.int8(32)).reshape(r, nb * 16, 16)
            qs = np.ascontiguousarray(qi.transpose(1, 2, 0))  # (nb * 16, 16, r) int8
        else:
            head = q.type_size - (q.block_size if q.name == "q8_0" else q.block_size // 2)  # the scales (and mins)
            qs = np.ascontiguousarray(blk[..., head:].transpose(1, 2, 0))  # (nb, quant bytes, r)
        return (qs.view(np.int8) if q.name == "q8_0" else qs,) + tuple(np.ascontiguousarray(a.reshape(r, -1).T)
                                                                          for a in sc)

    def _layouts(self, data, blocks, q, spans) -> list:
        """Every tile's _tile_layout of block array `data`, made on its first product and kept while it lives;
        None where QSCALES is off (each tile then makes its own, every product)."""
        if not QSCALES["enabled"]:
            return None
        key = id(data)
        hit = _KEPT.get(key)
        if hit is not None and hit[0]() is data and hit[1] == spans:  # (DOT_TILE may change between products)
            return hit[2]
        lays = [self._tile_layout(blocks[r0:r1], q) for r0, r1 in spans]
        _KEPT[key] = (weakref.ref(data, lambda _, k=key: _KEPT.pop(k, None)), spans, lays)
        return lays

    def keep_layout(self, data, qtype: str, cols: int) -> int:
        """Make block array `data`'s decode layout now, as its first block-dot product would (nothing where that
        path keeps none: QSCALES off, another array module, a strided array); the bytes kept for it."""
        if self.xp is not np or not QSCALES["enabled"] or not data.flags.c_contiguous:
            return 0
        q = _qtype(qtype)
        rows = data.shape[0]
        self._layouts(data, data.reshape(rows, cols // q.block_size, q.type_size), q, dot_spans(rows, cols))
        return kept_layout_bytes(data)

    @staticmethod
    def _weigh(s, d):
        """s (n, m, r) dots, d (n, r) their scales -> (m, r): sum over the n runs of d * s (s is overwritten)."""
        s *= d[:, None, :]
        return s.sum(0)

    def _dot_q8_0(self, xl, lay):
        return self._weigh(np.matmul(xl[0], lay[0].astype(np.float32)), lay[1])

    _dot_q6_k = _dot_q8_0  # its layout: int8 quants (nb * 16, 16, r), 32 taken off, and d * scale (nb * 16, r)

    def _nibble_dots(self, xq, qs, width=16):
        """xq (n, m, 32) . the tile's nibbles -> (n, m, r) dots, qs (nb, k, r) bytes in runs of `width`: byte j of
        a run holds weight j of it in its low nibble and weight width + j in its high one. q4_0 / q4_1: width 16,
        k 16, n = nb; q4_k: width 32, k 128, n = nb * 8 (the sub-blocks)."""
        nb, k, r = qs.shape
        u = np.empty((nb, k // width, 2, width, r), np.uint8)
        q = qs.reshape(nb, k // width, width, r)
        np.bitwise_and(q, np.uint8(15), out=u[:, :, 0])
        np.right_shift(q, np.uint8(4), out=u[:, :, 1])
        return np.matmul(xq, u.astype(np.float32).reshape(xq.shape[0], 32, r))

    def _dot_q4_0(self, xl, lay):
        s = self._nibble_dots(xl[0], lay[0])
        s -= 8 * xl[1].T[:, :, None]
        return self._weigh(s, lay[1])

    def _dot_q4_1(self, xl, lay):
        return self._weigh(self._nibble_dots(xl[0], lay[0]), lay[1]) + xl[1] @ lay[2]

    def _dot_q4_k(self, xl, lay):
        return self._weigh(self._nibble_dots(xl[0], lay[0], 32), lay[1]) - xl[1] @ lay[2]

    def _qdot(self, x2, data, q, cols, y=None):
        """x2 (m, cols) float32 @ W.T for W the blocks `data` (rows, row_bytes): (m, rows) float32, written
        into y when given."""
        m, rows, nb = x2.shape[0], data.shape[0], cols // q.block_size
        xb = np.ascontiguousarray(x2, dtype=np.float32).reshape(m, nb, q.block_size)
        y = np.empty((m, rows), np.float32) if y is None else y
        blocks = data.reshape(rows, nb, q.type_size)
        dot = getattr(self, "_dot_" + q.name)
        xl = self._xlay(xb, q)
        spans = dot_spans(rows, cols)
        kept = self._layouts(data, blocks, q, spans)
        for i, (r0, r1) in enumerate(spans):
            y[:, r0:r1] = dot(xl, self._tile_layout(blocks[r0:r1], q) if kept is None else kept[i])
        return y

    # ---- ops --------------------------------------------------------------------------------------------------
    def qlinear(self, x, data, qtype: str, cols: int, b, out_dtype):
        """x (..., cols) @ W.T + b, W (rows, cols) in ggml blocks; computed in float32 (float64 for a
        float64 input), rounded once into out_dtype. Up to DOT_ROWS rows of x (numpy, float32): per-block
        dot products (_qdot); more rows: each tile of whole rows is dequantised, multiplied and dropped
        before the next."""
        xp, q = self.xp, _qtype(qtype)
        ct = D.compute_dtype(out_dtype)
        lead = x.shape[:-1]
        x2 = self._f(x, out_dtype).reshape(-1, cols)
        rows = data.shape[0]
        if xp is np and ct == np.float32 and x2.shape[0] <= DOT_ROWS and data.flags.c_contiguous:
            if out_dtype.np_dtype == np.float32:  # straight into pooled memory (the rounding is a no-op)
                y = self._qdot(x2, data, q, cols, self.empty((x2.shape[0], rows), out_dtype))
                if b is not None:
                    y += self._f(b, out_dtype)
                return y.reshape(lead + (rows,))
            y = self._qdot(x2, data, q, cols)
            if b is not None:
                y = y + self._f(b, out_dtype)
            return self._out(y.reshape(lead + (rows,)), out_dtype)
        y = xp.empty((x2.shape[0], rows), ct)
        step = tile_rows(cols) * self.qtile_scale
        for r0 in range(0, rows, step):
            w = self._dequant_rows(data[r0:r0 + step], q, cols)
            y[:, r0:r0 + w.shape[0]] = x2 @ w.T.astype(ct, copy=False)
        if b is not None:
            y = y + self._f(b, out_dtype)
        return self._out(y.reshape(lead + (rows,)), out_dtype)

    def qtake(self, data, index, qtype: str, cols: int, out_dtype):
        """Rows `index` (1-d, in range) of W, dequantised: (len(index), cols)."""
        return self._out(self._dequant_rows(self.xp.take(data, index, axis=0), _qtype(qtype), cols), out_dtype)

    def dequantize(self, data, qtype: str, cols: int, out_dtype):
        """All of W (rows, cols) in out_dtype, written a tile at a time."""
        q = _qtype(qtype)
        out = self.empty((data.shape[0], cols), out_dtype)
        step = tile_rows(cols) * self.qtile_scale
        for r0 in range(0, data.shape[0], step):
            w = self._dequant_rows(data[r0:r0 + step], q, cols)
            self.copy_(out[r0:r0 + w.shape[0]], w)
        return out


# ---- the integer-dot route of the CUDA GEMV (cupy_quant.QUANT_DOT "int8"): its exact reference ---------------
INT8_FORMATS = ("q8_0", "q4_k", "q6_k")


def quantize_x_q8(x):
    """x (m, K) float (K a multiple of 32) -> (xq (m, K) int8, dx (m, K / 32) float32), ggml's q8_1-style
    quantisation of the activations as quant_span.cuh's quantise_x does it: per block of 32, dx = max|x| / 127
    (float32, rounded to nearest), r = 1 / dx (float32), xq = rint(x * r) (the float32 product, then the nearest
    integer, ties to even) clamped to [-127, 127]; xq = 0 where max|x| = 0 or x * r is NaN. So
    |x - dx * xq| <= dx / 2 (1 + 2^-14)."""
    x = np.asarray(x, np.float32)
    m, k = x.shape
    if k % 32:
        raise ValueError(f"quantize_x_q8: K = {k} is not a multiple of 32")
    xb = x.reshape(m, k // 32, 32)
    amax = np.abs(xb).max(axis=2)
    dx = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r = (np.float32(1) / dx).astype(np.float32)
        t = (xb * r[..., None]).astype(np.float32)
    t = np.where(np.isnan(t), np.float32(0), t)
    q = np.clip(np.rint(t), -127, 127)
    q = np.where(amax[..., None] > 0, q, 0).astype(np.int8)
    return q.reshape(m, k), dx


def int_groups(data, qtype: str, cols: int):
    """The integer form of W (rows, row_bytes) ggml blocks: (q (rows, cols) int64, a (rows, cols / G) float32,
    c (rows, cols / G) float32, G, Z) with every weight w = a * (q - Z) - c of its group of G (a, c rounded as
    gguf-py rounds them: float32(d) * scale, float32(dmin) * min). G: the groups quant_span.cuh's lanes see
    (Q8_0 32, Q4_K 32, Q6_K 16)."""
    if qtype not in INT8_FORMATS:
        raise ValueError(f"int_groups: {qtype!r} has no integer route (only {', '.join(INT8_FORMATS)})")
    q_ = _qtype(qtype)
    rows, nb = data.shape[0], cols // q_.block_size
    b = np.ascontiguousarray(data).reshape(rows * nb, q_.type_size)
    f16 = lambda v: np.ascontiguousarray(v).view(np.float16).astype(np.float32)  # noqa: E731
    if qtype == "q8_0":
        q = b[:, 2:].view(np.int8).astype(np.int64)
        a, c, G, Z = f16(b[:, :2]), np.zeros((rows * nb, 1), np.float32), 32, 0
    elif qtype == "q4_k":
        d, dmin, s = f16(b[:, :2]), f16(b[:, 2:4]), b[:, 4:16].astype(np.int64)
        sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)], axis=1)
        mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
        qs = b[:, 16:].reshape(-1, 4, 1, 32).astype(np.int64)
        q = ((qs >> np.array([0, 4]).reshape(1, 1, 2, 1)) & 15).reshape(-1, 256)  # sub-block 2g: low nibbles
        a, c, G, Z = d * sc.astype(np.float32), dmin * mn.astype(np.float32), 32, 0
    else:  # q6_k: weight 128h + 32j + e
        ql, qh = b[:, :128].astype(np.int64).reshape(-1, 2, 2, 32), b[:, 128:192].astype(np.int64).reshape(-1, 2, 1, 32)
        lo = np.concatenate([ql & 15, ql >> 4], axis=2)  # (n, h, j, e): j = 0, 1 low nibbles of ql 64h + 32j + e
        hi = (qh >> (2 * np.arange(4)).reshape(1, 1, 4, 1)) & 3
        q = (lo | (hi << 4)).reshape(-1, 256)
        sc = b[:, 192:208].view(np.int8).astype(np.float32)
        a, c, G, Z = f16(b[:, 208:210]) * sc, np.zeros((rows * nb, 16), np.float32), 16, 32
    ng = cols // G
    return (q.reshape(rows, cols), a.astype(np.float32).reshape(rows, ng),
            np.broadcast_to(c, a.shape).astype(np.float32).reshape(rows, ng), G, Z)


def qdot_int8(x, data, qtype: str, cols: int):
    """The CUDA int8 route's y (m, rows) = x (m, cols) @ W.T in float64 from its exact parts: x quantised
    (quantize_x_q8), per group g of G weights the integer sums isum = sum((q - Z) * xq) and sx = sum(xq)
    (int64, exact), combined as float32(a * dx) * isum - float32(c * dx) * sx and summed exactly (the kernel
    sums these terms in fp32, in its order: it equals this within fp32 rounding of the sum). Returns
    (y float64, isum (m, rows, cols / G) int64)."""
    xq, dx = quantize_x_q8(x)
    q, a, c, G, Z = int_groups(data, qtype, cols)
    m, rows, ng = xq.shape[0], q.shape[0], cols // G
    xg = xq.astype(np.int64).reshape(m, 1, ng, G)
    isum = ((q - Z).reshape(1, rows, ng, G) * xg).sum(axis=3)
    sx = xg.sum(axis=3)
    dxg = np.repeat(dx, 32 // G, axis=1).reshape(m, 1, ng)
    ad = (a[None] * dxg).astype(np.float32).astype(np.float64)
    cd = (c[None] * dxg).astype(np.float32).astype(np.float64)
    y = (ad * isum - cd * sx).sum(axis=2)
    return y, isum


def int8_bound(x, w):
    """How far the int8 route's y = x @ w.T (qdot_int8) may be from the float composition (w the dequantised
    weights (rows, cols), x (m, cols)): the quantisation error of x, sum_i |w_i| dx_i / 2 (1 + 2^-14), plus
    float32 rounding of the per-group scales a * dx and of w itself (2^-22 of sum |w_i x_i|)."""
    x = np.asarray(x, np.float32)
    _, dx = quantize_x_q8(x)
    dxe = np.repeat(dx, 32, axis=1).astype(np.float64)
    aw = np.abs(np.asarray(w, np.float64))
    return 0.5 * (1 + 2.0 ** -14) * dxe @ aw.T + 2.0 ** -22 * np.abs(x.astype(np.float64)) @ aw.T + 1e-30
