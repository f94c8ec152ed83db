"""Kernels over quantized weights (engine/quant.py), a mixin of NumpyBackend (the cupy backend overrides
them with fused CUDA kernels where the operands fit, and inherits them, with xp = cupy, elsewhere).

  qlinear(x, data, qtype, cols, b, out)   x @ W.T + b, W dequantised a tile of rows at a time
  qtake(data, index, qtype, cols, out)    rows of W, dequantised (embedding lookups)
  dequantize(data, qtype, cols, out)      the whole of W (explicit callers only)

`data` is the (rows, row_bytes) uint8 array of ggml blocks. A tile is at most TILE_WEIGHTS weights
(whole rows), so a matrix is never unpacked at once: memory beyond the packed bytes stays at one
tile of float32 whatever the matrix size. The arithmetic is gguf-py's numpy dequantiser's
(gguf/quants.py, itself ggml-quants.c's), op for op, so the values are bit-identical to it.
"""
from __future__ import annotations

import numpy as np

from engine import dtype as D
from engine.quant import qtype as _qtype

TILE_WEIGHTS = 1 << 18  # weights dequantised per tile (1 MiB of float32)


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

    # ---- ops --------------------------------------------------------------------------------------------------
    def qlinear(self, x, data, qtype: str, cols: int, b, out_dtype):
        """x (..., cols) @ W.T + b, W (rows, cols) in ggml blocks; computed in float32 (float64 for a
        float64 input), rounded once into out_dtype. Each tile of whole rows is dequantised, multiplied
        and dropped before the next."""
        xp, q = self.xp, _qtype(qtype)
        ct = D.compute_dtype(out_dtype)
        lead = x.shape[:-1]
        x2 = self._f(x, out_dtype).reshape(-1, cols)
        rows = data.shape[0]
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
