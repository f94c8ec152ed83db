"""The numpy backend's convolutions (a mixin of NumpyBackend, beside numpy_nn's NnKernels; transposed convs:
numpy_conv_transpose): im2col + one GEMM per group (in bands of output rows where the columns would leave the
cache or fill memory), a SiLU in place. On numpy, float32 3x3 stride-1 convs with many channels as Winograd
F(2x2, 3x3) (16 GEMMs over the transform points), 2-d stride-1 and -2 convs with fewer channels as a GEMM a tap
(or a kernel row) over strided views of the padded input (its stride phases), summed by BLAS, stride-1 1-d convs
with O <= C without im2col (one GEMM of the stacked taps per band), and large copies, bias adds and SiLUs on idle
cores (numpy_threads). Shared with the cupy backend (xp)."""
from __future__ import annotations

import math
from functools import partial

import numpy as np

from engine import dtype as D
from engine.backends.blas_threads import BLAS_THREADS
from engine.backends.numpy_blas import sgemm_into
from engine.backends import numpy_threads
from engine.backends.numpy_threads import ROW_THREADS, ranges, split


class ConvKernels:
    # ---- convolution ------------------------------------------------------------------------------
    def _windows(self, x, k, stride, dilation):
        """(N, C, *S) -> strided view (N, C, *O, *K) over every window; no copy."""
        nd = len(k)
        o = tuple((x.shape[2 + i] - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1 for i in range(nd))
        s = x.strides
        return self.xp.lib.stride_tricks.as_strided(
            x, x.shape[:2] + o + tuple(k),
            s[:2] + tuple(s[2 + i] * stride[i] for i in range(nd)) + tuple(s[2 + i] * dilation[i] for i in range(nd)))

    # numpy: a SiLU after a conv's GEMMs runs over the negated products (the weights negated as they are copied,
    # or a negated copy beside a large output), one pass less (_neg_silu_block); False: x / (1 + exp(-x)) over
    # the products as they are
    SILU_NEG = True

    def conv_act(self, x, w, b, stride, padding, dilation, groups: int, act, out_dtype):
        """conv then act; on numpy a SiLU runs in place on the conv's output, band by band while it is
        in cache where the conv goes in bands (the same operations as the composition)."""
        if act != "silu" or self.xp is not np or D.compute_dtype(out_dtype) != out_dtype.np_dtype:
            return super().conv_act(x, w, b, stride, padding, dilation, groups, act, out_dtype)
        return self.conv(x, w, b, stride, padding, dilation, groups, out_dtype, _silu=True)

    @staticmethod
    def _silu_inplace(a) -> None:
        """a = a / (1 + exp(-a)) in cache-sized pieces of a contiguous array (unary silu's formula)."""
        flat = a.reshape(-1)
        one = a.dtype.type(1.0)
        with np.errstate(all="ignore"):  # exp(-x) overflows to inf for x < -88: x / inf = -0, as unary's
            for i in range(0, flat.size, 1 << 16):
                c = flat[i:i + (1 << 16)]
                t = np.negative(c)
                np.exp(t, out=t)
                t += one
                np.divide(c, t, out=c)

    @staticmethod
    def _silu_band(a) -> None:  # _silu_inplace for a strided band of the banded conv, in one piece
        with np.errstate(all="ignore"):
            t = np.negative(a)
            np.exp(t, out=t)
            t += a.dtype.type(1.0)
            np.divide(a, t, out=a)

    def _blas_scoped(self, fn, *args):
        """fn(*args), on numpy with its GEMMs under BLAS_THREADS (one thread on a busy machine)."""
        if self.xp is np and BLAS_THREADS.one(0):
            try:
                return fn(*args)
            finally:
                BLAS_THREADS.restore()
        return fn(*args)

    def conv(self, x, w, b, stride, padding, dilation, groups: int, out_dtype, _silu: bool = False):
        """See _conv (its GEMMs under BLAS_THREADS)."""
        return self._blas_scoped(self._conv, x, w, b, stride, padding, dilation, groups, out_dtype, _silu)

    def _conv(self, x, w, b, stride, padding, dilation, groups: int, out_dtype, _silu: bool = False):
        """x (N, C, *S), w (O, C/groups, *K); padding is ((lo, hi), ...) per spatial dim. im2col in the
        (N, C*K, positions) order, then one batched GEMM per group, w (O/g, C/g*K) @ cols, which lands
        in (N, O, positions) = NCHW with no transpose of the output. The column copy reads the input
        along its rows (the positions are innermost); a 1x1 stride-1 conv needs no copy at all. In the
        compute dtype (integers stay integers)."""
        xp = self.xp
        x, w = self._f(x, out_dtype), self._f(w, out_dtype)
        nd = x.ndim - 2
        if self._winograd_fits(x, w, stride, dilation, groups, padding, out_dtype):
            return self._conv_winograd(x, w, b, padding, _silu)
        if self._shifted_fits(x, w, stride, groups, padding, dilation, out_dtype):
            return self._conv2d_shifted(x, w, b, stride, padding, dilation, _silu)
        if any(lo or hi for lo, hi in padding):  # numpy: into pooled memory (pad's rows on idle cores)
            widths = ((0, 0), (0, 0)) + tuple(tuple(p) for p in padding)
            x = self._pad_into(x, widths, "constant", 0) if xp is np else xp.pad(x, widths)
        x = xp.ascontiguousarray(x)
        n = x.shape[0]
        o, cg, k = w.shape[0], w.shape[1], w.shape[2:]
        og, kk = o // groups, math.prod(k)
        if (xp is np and nd == 1 and groups == 1 and x.dtype == out_dtype.np_dtype and x.dtype.kind == "f"
                and not (kk > 1 and stride[0] == 1 and 8 <= cg and o <= cg)  # those: _conv1d_stacked
                and self.CONV_SPLIT
                and numpy_threads.pieces(cg * kk * (x.shape[2] - dilation[0] * (kk - 1)) // stride[0]) > 1):
            # 1-d on an idle machine (1x1 too): bands of positions on every core, OpenBLAS on one thread in each
            return self._conv_chunked(self._windows(x, k, stride, dilation), w.reshape(o, cg * kk), b, out_dtype, _silu)
        if kk == 1 and all(s == 1 for s in stride):  # 1x1: the input is already the column matrix
            osz = x.shape[2:]
            cols = x.reshape(n, groups * cg, math.prod(osz))
        else:
            if (xp is np and nd == 1 and groups == 1 and stride[0] == 1 and 8 <= cg and o <= cg
                    and x.dtype == out_dtype.np_dtype and x.dtype.kind == "f"):
                return self._conv1d_stacked(x, w, b, dilation[0], _silu)
            win = self._windows(x, k, stride, dilation)  # (N, C, *O, *K) view
            osz = win.shape[2:2 + nd]
            ncols = cg * kk * math.prod(osz)  # one sample's column matrix
            if xp is np and groups == 1 and ncols > self.CONV_BLOCK and (
                    ncols > self.CONV_WIDE or (cg * kk <= self.CONV_CHUNK_K and BLAS_THREADS.single())):
                return self._conv_chunked(win, w.reshape(o, cg * kk), b, out_dtype, _silu)
            perm = (0, 1) + tuple(range(2 + nd, 2 + 2 * nd)) + tuple(range(2, 2 + nd))  # (N, C, *K, *O)
            cols = self._im2col(win.transpose(perm)).reshape(n, groups * cg * kk, math.prod(osz))
        w2 = w.reshape(o, cg * kk)
        cdt = D.get(x.dtype)  # the backend's matmul: pooled output; on cupy its capture-safe kernel in a graph
        # a SiLU's epilogue over the negated products (_neg_silu_block) where the weight's negated copy is small
        # beside the output (the 1x1 and im2col convs of YOLOv8s at 80-640 px)
        neg = (_silu and self.SILU_NEG and xp is np and groups == 1 and x.dtype == out_dtype.np_dtype
               and x.dtype.kind == "f" and n * cols.shape[2] >= 8 * w2.shape[1])
        if neg:
            w2 = np.negative(w2)
        if groups == 1:
            out = self.matmul(w2, cols, cdt)  # (N, O, M)
        else:
            out = xp.empty((n, o, cols.shape[2]), x.dtype)
            for g in range(groups):
                out[:, g * og:(g + 1) * og] = self.matmul(w2[g * og:(g + 1) * og],
                                                          cols[:, g * cg * kk:(g + 1) * cg * kk], cdt)
        out = out.reshape((n, o) + tuple(osz))
        if xp is np and groups == 1 and out.dtype == out_dtype.np_dtype:  # already pooled (self.matmul's output)
            self._bias_act(out, None if b is None else self._f(b, out_dtype), _silu, neg)
            return out
        if b is not None:
            out += self._f(b, out_dtype).reshape((1, o) + (1,) * nd)
        if groups == 1 and out.dtype == out_dtype.np_dtype:  # already pooled (self.matmul's output)
            if _silu:
                self._silu_inplace(out)
            return out
        out = self._out(out, out_dtype)
        if _silu:
            self._silu_inplace(out)
        return out

    # numpy, float32: a 3x3 stride-1 conv (groups 1, no dilation) with at least WINO_MIN_CHANNELS input and
    # output channels and WINO_MIN_TILES 2x2 output tiles (N * ceil(Ho/2) * ceil(Wo/2)) goes through Winograd
    # F(2x2, 3x3): 16 GEMMs of (O, C) @ (C, tiles) in place of one (O, 9C) @ (9C, N*Ho*Wo), 2.25x fewer
    # multiply-adds, as accurate as im2col (its transforms are sums, differences and halves). The transforms
    # are memory-bound passes over 4x the input and output, which only pay with many channels (one conv on the
    # idle 2-core EPYC, ms im2col / F(2x2): 2x320 at 64x64 -> 320 53.9 / 42.8; 640 at 32x32 43.3 / 31.2; 512 at
    # 128x128 277 / 180; 2x1280 at 16x16 44 / 37; 256 at 256x256 249 / 331; 128 at 512x512 308 / 430; 64 at
    # 80x80 2.6 / 3.7). F(4x4, 3x3) (4x fewer) was faster still (31.6, 26.3, 130, 170 and 292 ms for the first
    # five) but its float32 error is ~10x im2col's with 64 channels, past the conv parity rows' tolerance.
    WINOGRAD = True
    WINO_MIN_CHANNELS = 320
    WINO_MIN_TILES = 128

    def _winograd_fits(self, x, w, stride, dilation, groups, padding, out_dtype) -> bool:
        """Whether _conv_winograd takes this conv (see WINOGRAD)."""
        if not (self.WINOGRAD and self.xp is np and x.ndim == 4 and groups == 1 and w.shape[2:] == (3, 3)
                and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
                and x.dtype == out_dtype.np_dtype == np.float32 and min(w.shape[:2]) >= self.WINO_MIN_CHANNELS):
            return False
        ho, wo = (x.shape[2 + i] + sum(padding[i]) - 2 for i in range(2))
        return ho > 0 and wo > 0 and x.shape[0] * -(-ho // 2) * -(-wo // 2) >= self.WINO_MIN_TILES

    def _conv_winograd(self, x, w, b, padding, silu: bool = False):
        """A 3x3 stride-1 conv, x (N, C, H, W) float32, w (O, C, 3, 3), as Winograd F(2x2, 3x3) (Lavin & Gray
        2015): the input cut into overlapping 4x4 tiles at stride 2 (zero padding past the output), V = B^T d B
        and U = G g G^T per tile and channel pair (each one GEMM with the Kronecker product of the 1-d
        transforms), M[p] = U[p] (O, C) @ V[p] (C, tiles) for each of the 16 points p, and the 2x2 outputs
        A^T M A of each tile."""
        m, t = 2, 4
        n, c, h, wd = x.shape
        o = w.shape[0]
        ho, wo = h + sum(padding[0]) - 2, wd + sum(padding[1]) - 2
        th, tw = -(-ho // m), -(-wo // m)
        (pt, _), (pl, _) = padding
        xp = self._pad_into(x, ((0, 0), (0, 0), (pt, th * m + 2 - h - pt), (pl, tw * m + 2 - wd - pl)), "constant", 0)
        s = xp.strides
        tiles = np.lib.stride_tricks.as_strided(xp, (t, t, c, n, th, tw), (s[2], s[3], s[1], s[0], m * s[2], m * s[3]))
        d = self.empty((t, t, c, n, th, tw), D.float32)
        split(np.copyto, d, tiles)  # (t, t, C, N, th, tw): tile element (i, j) of every tile, channel-major
        cdt = D.float32
        v = self.matmul(_WINO_B, d.reshape(t * t, -1), cdt).reshape(t * t, c, n * th * tw)
        u = self.matmul(_WINO_G, w.reshape(o * c, 9).T, cdt).reshape(t * t, o, c)
        mm = self.matmul(u, v, cdt)  # (t*t, O, N*th*tw)
        y = self.matmul(_WINO_A, mm.reshape(t * t, -1), cdt).reshape(m, m, o, n, th, tw)
        out = self.empty((n, o, ho, wo), cdt)
        if ho == th * m and wo == tw * m:
            split(np.copyto, out.reshape(n, o, th, m, tw, m), y.transpose(3, 2, 4, 0, 5, 1))
        else:
            full = np.empty((n, o, th, m, tw, m), np.float32)
            split(np.copyto, full, y.transpose(3, 2, 4, 0, 5, 1))
            np.copyto(out, full.reshape(n, o, th * m, tw * m)[:, :, :ho, :wo])
        self._bias_act(out, None if b is None else self._f(b, cdt), silu)
        return out

    # numpy, float32: a 2-d conv at stride 1 or 2 (groups 1, more than one tap) that Winograd does not take, as one
    # GEMM a tap over the padded input itself: with spare rows below it, tap (i, j)'s input at stride 1 is a strided
    # view of the flat padded planes, (C, Ho * Wp) from (i * Wp + j) * dilation on ("wide" output rows: their last
    # Wp - Wo values fall past the row and are cropped), so no im2col copy; at stride 2 the same over the padded
    # input's four stride phases (x[2r + p, 2c + q] for p, q in 0, 1: one copy of the input, where im2col makes
    # 9/4 of it), each tap reading the phase its offset falls in. acc += w[:, :, i, j] @ view per tap, summed by
    # BLAS itself (numpy_blas.sgemm_into); bias and SiLU as the wide output is cropped. One conv on the idle 2-core
    # EPYC, ms im2col / taps / torch: 64 channels at 80x80 3.32 / 1.95 / 1.33; 32 at 160x160 6.31 / 2.42 / 1.38;
    # 128 at 40x40 1.93 / 1.63 / 1.43; 128 at 80x80 9.28 / 5.80 / 5.02 (YOLOv8s' 3x3 convs). Only while a
    # sample's wide output (O x Ho x Wp) is at most SHIFTED_MAX elements and C and O are at least SHIFTED_MIN_C: the
    # per-tap sums are passes over the output (SD's VAE decoder, 128-256 channels at 256-512 px, went 10.5 ->
    # 11.6 s without that bound; with it but its 3-channel conv_out taking the taps 9.9 -> 10.4), and a few
    # channels make each GEMM too thin.
    SHIFTED = True
    SHIFTED_MAX = 1 << 21
    SHIFTED_MIN_C = 16
    # stride 2 only up to this many input channels: wider, im2col's one GEMM of K = 9C wins (one conv, ms im2col /
    # phases / torch: 32 -> 64 at 320 px 12.5 / 9.8 / 7.5; 64 -> 128 at 160 7.7 / 6.0 / 8.2; 128 -> 256 at 80 4.9 /
    # 4.5 / 7.8; 256 -> 512 at 40 4.4 / 4.8 / 7.1)
    SHIFTED_S2_MAX_C = 128
    # and only while O is at most SHIFTED_O_RATIO x the output positions of the batch: both shifted paths copy the
    # weight into per-tap (or per-kernel-row) matrices, O x C x KH x KW elements, where im2col copies N x Ho x Wo x C
    # x KH x KW and multiplies the weight as it is (SD's UNet, 2 x 1280 -> 1280 at 8x8, one conv, ms rows / taps /
    # im2col / torch: 35.4 / 61.0 / 18.9 / 28.0; 2 x 2560 -> 1280 at 8x8 81.0 / 135.2 / 41.7 / 57.1; at 16x16, O 2.5x
    # the positions, all three within 2%; YOLOv8s' convs have O at most 1.3x theirs)
    SHIFTED_O_RATIO = 2

    def _shifted_fits(self, x, w, stride, groups, padding, dilation, out_dtype) -> bool:
        """Whether _conv2d_shifted takes this conv (see SHIFTED)."""
        if not (self.SHIFTED and self.xp is np and x.ndim == 4 and groups == 1
                and (tuple(stride) == (1, 1) or tuple(stride) == (2, 2) and x.shape[1] <= self.SHIFTED_S2_MAX_C)
                and w.shape[2] * w.shape[3] > 1 and x.dtype == out_dtype.np_dtype == np.float32):
            return False
        ho, wo = ((x.shape[2 + i] + sum(padding[i]) - dilation[i] * (w.shape[2 + i] - 1) - 1) // stride[i] + 1
                  for i in range(2))
        wq = -(-(x.shape[3] + sum(padding[1])) // stride[1])
        return (ho > 0 and wo > 0 and min(x.shape[1], w.shape[0]) >= self.SHIFTED_MIN_C
                and w.shape[0] * ho * wq <= self.SHIFTED_MAX
                and w.shape[0] <= self.SHIFTED_O_RATIO * x.shape[0] * ho * wo)

    def _conv2d_shifted(self, x, w, b, stride, padding, dilation, silu: bool = False):
        """x (N, C, H, W) float32 conv w (O, C, KH, KW) as KH * KW GEMMs over strided views of the padded input's
        stride phases (see SHIFTED); bias and SiLU as the summed wide output is cropped into the output."""
        n, c, h, wd = x.shape
        o, _, kh, kw = w.shape
        (sh, sw), (dh, dw) = stride, dilation
        hp, wp = h + sum(padding[0]), wd + sum(padding[1])
        ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
        if self.SHIFTED_ROWS and ho * wo <= self.SHIFTED_ROWS_MAX:
            return self._conv2d_rows(x, w, b, stride, padding, dilation, silu)
        wq = -(-wp // sw)  # a phase's row: padded columns q, q + sw, ...
        size = ho * wq  # the wide output of one sample
        neg = silu and self.SILU_NEG
        tap = np.negative if neg else np.ascontiguousarray  # negated for the SiLU's epilogue (_neg_silu_block)
        taps = [(tap(w[:, :, i, j]), (i * dh % sh) * sw + j * dw % sw,
                 (i * dh // sh) * wq + j * dw // sw) for i in range(kh) for j in range(kw)]  # (weight, phase, offset)
        rows = -(-(max(off for _, _, off in taps) + size) // wq)  # a phase's rows, the last tap's view inside them
        planes = self._phases(x, padding, stride, rows, wq).reshape(n, sh * sw, c, rows * wq)
        out = self.empty((n, o, ho, wo), D.float32)
        acc = np.empty((o, size), np.float32)
        bias = None if b is None else self._f(b, D.float32).reshape(o, 1, 1)
        if bias is not None and neg:
            bias = np.negative(bias)
        for s in range(n):
            for t, (wt, ph, off) in enumerate(taps):
                sgemm_into(wt, planes[s, ph, :, off:off + size], acc, 0.0 if t == 0 else 1.0)
            wide = acc.reshape(o, ho, wq)[:, :, :wo]
            if bias is None:
                split(lambda y, a: _bias_silu_rows(y, None, silu, a, neg), out[s], wide)
            else:
                split(lambda y, bb, a: _bias_silu_rows(y, bb, silu, a, neg), out[s], bias, wide)
        return out

    # numpy, float32, the convs _shifted_fits takes: one GEMM per kernel row in place of one per tap. The input is
    # copied once per tap column j (and row stride phase p) into cols[p][j * C + c, r, x] = padded[c, r * SH + p,
    # x * SW + j * DW], so that kernel row i's taps are one (O, KW * C) @ (KW * C, Ho * Wo) product over rows
    # [q, q + Ho) of its phase (q = i * DH // SH): the product lands in the output itself (no wide rows to crop) and
    # the bias and SiLU run over it in place. KW copies of the input (3 at stride 1, 1.5 at stride 2 for 3x3)
    # against one padded copy, for KH products of K = KW * C in place of KH * KW of K = C (SHIFTED_ROWS; False:
    # the per-tap sums above). Only up to SHIFTED_ROWS_MAX output positions a sample: the copies grow with the
    # input, what they save with the weights (one conv + bias + SiLU on the idle 2-core Xeon, ms rows / taps /
    # torch: 256 at 20x20 2.64 / 2.98 / 1.62; 512 -> 128 at 20 2.90 / 3.18 / 1.65; 128 at 40 2.48 / 2.52 / 1.35;
    # 128 -> 256 at 80 stride 2 4.98 / 5.16 / 7.03; but 64 at 80 3.09 / 2.82 / 1.78; 32 at 160 5.40 / 4.40 / 2.07;
    # 128 at 80 8.75 / 8.32 / 5.59; 32 -> 64 at 320 stride 2 10.58 / 9.47 / 4.19)
    SHIFTED_ROWS = True
    SHIFTED_ROWS_MAX = 40 * 40

    def _conv2d_rows(self, x, w, b, stride, padding, dilation, silu: bool = False):
        """x (N, C, H, W) float32 conv w (O, C, KH, KW) as KH GEMMs of K = KW * C over the tap-column copies of the
        input (see SHIFTED_ROWS), summed by BLAS into the output; then bias and SiLU in place."""
        n, c, h, wd = x.shape
        o, _, kh, kw = w.shape
        (sh, sw), (dh, dw), (pt, pb), (pl, pr) = stride, dilation, padding[0], padding[1]
        ho, wo = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
        taps = [((i * dh) % sh, (i * dh) // sh) for i in range(kh)]  # kernel row i: (row phase, first row in it)
        used = sorted({p for p, _ in taps})
        rows = ho + max(q for _, q in taps)
        cols = self.empty((n, len(used), kw * c, rows, wo), D.float32)
        for pi, p in enumerate(used):
            r0, r1 = max(0, -(-(pt - p) // sh)), min(rows, -(-(h + pt - p) // sh))  # rows holding input rows
            for j in range(kw):
                blk = cols[:, pi, j * c:(j + 1) * c]  # (N, C, rows, Wo)
                c0, c1 = max(0, -(-(pl - j * dw) // sw)), min(wo, -(-(wd + pl - j * dw) // sw))
                if r1 <= r0 or c1 <= c0:
                    blk[...] = 0
                    continue
                blk[:, :, :r0] = 0
                blk[:, :, r1:] = 0
                blk[:, :, r0:r1, :c0] = 0
                blk[:, :, r0:r1, c1:] = 0
                src = x[:, :, r0 * sh + p - pt::sh, c0 * sw + j * dw - pl::sw][:, :, :r1 - r0, :c1 - c0]
                for i in range(n):
                    split(np.copyto, blk[i, :, r0:r1, c0:c1], src[i])
        neg = silu and self.SILU_NEG
        ws = _row_weights(w, neg)  # (KH, O, KW * C), negated for the SiLU's epilogue (_neg_silu_block)
        out = self.empty((n, o, ho, wo), D.float32)
        for s in range(n):
            flat, of = cols[s].reshape(len(used), kw * c, rows * wo), out[s].reshape(o, ho * wo)
            for i, (p, q) in enumerate(taps):
                sgemm_into(ws[i], flat[used.index(p), :, q * wo:(q + ho) * wo], of, 0.0 if i == 0 else 1.0)
        self._bias_act(out, None if b is None else self._f(b, D.float32), silu, neg)
        return out

    def _phases(self, x, padding, stride, rows: int, wq: int):
        """x (N, C, H, W) zero-padded by padding ((top, bottom), (left, right)) and cut into its stride phases:
        (N, SH * SW, C, rows, wq), phase (p, q)'s [r, c] the padded input's [r * SH + p, c * SW + q] (zeros past
        it). At stride 1 the padded input itself (with rows - Hp spare rows below)."""
        n, c, h, wd = x.shape
        (sh, sw), (pt, _), (pl, _) = stride, padding[0], padding[1]
        if (sh, sw) == (1, 1):
            return self._pad_into(x, ((0, 0), (0, 0), (pt, rows - h - pt), (pl, wq - wd - pl)), "constant", 0)
        out = self.empty((n, sh * sw, c, rows, wq), D.float32)
        for p in range(sh):
            r0, r1 = -(-(pt - p) // sh), min(rows, -(-(h + pt - p) // sh))  # phase rows holding input rows
            for q in range(sw):
                c0, c1 = -(-(pl - q) // sw), min(wq, -(-(wd + pl - q) // sw))
                ph = out[:, p * sw + q]
                ph[:, :, :r0] = 0
                ph[:, :, r1:] = 0
                ph[:, :, r0:r1, :c0] = 0
                ph[:, :, r0:r1, c1:] = 0
                src = x[:, :, r0 * sh + p - pt::sh, c0 * sw + q - pl::sw][:, :, :r1 - r0, :c1 - c0]
                for i in range(n):
                    split(np.copyto, ph[i, :, r0:r1, c0:c1], src[i])
        return out

    def _im2col(self, src):
        """A contiguous copy of the (N, C, *K, *O) window view; on numpy into pooled memory, its C rows on
        idle cores."""
        if self.xp is not np:
            return self.xp.ascontiguousarray(src)
        cols = self.empty(src.shape, D.get(src.dtype))
        for i in range(src.shape[0]):
            split(np.copyto, cols[i], src[i])
        return cols

    def _bias_act(self, out, bias, silu: bool, neg: bool = False) -> None:
        """out (N, O, *S) contiguous += bias (O,) per channel, then SiLU in place (x / (1 + exp(-x))), in
        blocks of channel rows while they are in cache; the rows on idle cores. neg (with silu): out holds the
        negated products (_neg_silu_block)."""
        n, o = out.shape[:2]
        if bias is None and not silu:
            return
        rows = out.reshape(n * o, -1)
        if bias is None:
            split(partial(_bias_silu_rows, silu=silu, neg=neg), rows)
        else:
            bias = np.negative(bias) if neg else bias
            per_row = np.broadcast_to(bias.reshape(1, o), (n, o)).reshape(n * o, 1)  # row (sample, channel)'s bias
            split(partial(_bias_silu_rows, silu=silu, neg=neg), rows, per_row)

    # numpy: a conv whose columns (C*K, positions) exceed CONV_BLOCK elements, with C*K at most CONV_CHUNK_K
    # (few channels at a high resolution: YOLO's first stages), builds and multiplies them a band of output
    # rows at a time while OpenBLAS runs one thread, so each band is still in cache when the GEMM reads it
    # (bitwise the same result here; 30% faster for 32-64 channels at 160-320 px on one thread; with two
    # threads one piece and one GEMM: 32 -> 32 channels at 160 px 6.3 ms against 8.5 in bands, 128 -> 128
    # at 80 px 12.2 against 16.9; the whole YOLOv8s the same within noise). Wider K is GEMM-bound and goes in
    # one piece, unless its columns pass CONV_WIDE elements (SD's VAE decoder: 256 channels at 256x256 make
    # 600 MiB of columns; in bands of one output row, 256 x 2304 columns each, 16% faster on one thread; 512
    # channels at 128x128 10%; at 64x64, 19M elements, one piece stays 7% faster)
    CONV_BLOCK = 1 << 19
    CONV_CHUNK_K = 1152
    CONV_WIDE = 1 << 25

    def _conv_chunked(self, win, w2, b, out_dtype, silu: bool = False):
        """win (N, C, *O, *K) window view, w2 (O, C*K): im2col + GEMM per band of rows of the first output
        dim, straight into the pooled (N, O, *O) output. On a busy machine the bands run here, each GEMM on
        one OpenBLAS thread; on an idle one each core takes a range of bands, its GEMMs on one OpenBLAS
        thread (column copies, GEMMs and SiLU all in parallel: SD's VAE decoder convs at 256-512 px, ~15%
        faster than each band's GEMM on two threads)."""
        nd = (win.ndim - 2) // 2
        osz = win.shape[2:2 + nd]
        ck, inner = w2.shape[1], math.prod(osz[1:])
        rows = max(-(-256 // inner), self.CONV_BLOCK // (ck * inner))  # at least 256 columns per GEMM
        out = self.empty((win.shape[0], w2.shape[0], math.prod(osz)), D.get(w2.dtype))
        bias = None if b is None else self._f(b, out_dtype).reshape(-1, 1)
        with BLAS_THREADS.forced_one():
            for i in range(win.shape[0]):
                ranges(lambda lo, hi, i=i: self._conv_bands(win[i], w2, bias, out[i], silu, rows, lo, hi),
                       -(-osz[0] // rows), ck * math.prod(osz))
        out = out.reshape((win.shape[0], w2.shape[0]) + tuple(osz))
        return out if out.dtype == out_dtype.np_dtype else self._out(out, out_dtype)

    @staticmethod
    def _conv_bands(win, w2, bias, out, silu: bool, rows: int, lo: int, hi: int) -> None:
        """Bands [lo, hi) of `rows` output rows of one sample: win (C, *O, *K) -> out (O, positions)."""
        nd = (win.ndim - 1) // 2
        osz = win.shape[1:1 + nd]
        ck, inner = w2.shape[1], math.prod(osz[1:])
        perm = (0,) + tuple(range(1 + nd, 1 + 2 * nd)) + tuple(range(1, 1 + nd))  # (C, *K, *O)
        for r0 in range(lo * rows, min(osz[0], hi * rows), rows):
            r1 = min(osz[0], r0 + rows)
            cols = win[:, r0:r1].transpose(perm).reshape(ck, (r1 - r0) * inner)  # a view where it can be (1x1)
            if cols.strides[1] != cols.itemsize:
                cols = np.ascontiguousarray(cols)
            band = out[:, r0 * inner:r1 * inner]
            np.matmul(w2, cols, out=band)
            if bias is not None:
                band += bias
            if silu:  # while the band is in cache (x / (1 + exp(-x)), as unary silu)
                ConvKernels._silu_band(band)

    # numpy: at least this many columns per band of the stacked 1-d conv and the 1-d transposed conv (their
    # GEMMs' width), else about CONV_BLOCK elements of the (K*O, band) products
    CONV_BAND_MIN = 1024
    # numpy, idle machine: 1-d convs (stacked taps, im2col bands, 1x1, transposed) run their bands on every core
    # with OpenBLAS on one thread in each, so that OpenBLAS's own threads do not spin beside the pieces of the
    # elementwise ops that follow (BLAS_THREADS.SPIN_S); False: one piece, its GEMMs on OpenBLAS's threads
    # (EnCodec 24 kHz encode + decode of 10 s, in-process A/B on the idle box: 1104 -> 980 ms median of 10)
    CONV_SPLIT = True

    def _conv1d_stacked(self, x, w, b, dilation: int, silu: bool = False):
        """A stride-1 1-d conv, x (N, C, L) padded and contiguous, w (O, C, K) with O <= C, without im2col:
        per band of output columns one GEMM of the stacked taps, (K*O, C) @ x[:, band + span], then
        y[o, t] = sum_k p[k*O + o, t + k*dilation] (K shifted adds while the band is in cache). im2col
        copies the input K times; this writes K*O <= K*C rows per column instead, and reads x in place
        (EnCodec's k3 residual convs 30-45% faster, its 32 -> 1 output conv 6x)."""
        n, c, length = x.shape
        o, kk = w.shape[0], w.shape[2]
        span = dilation * (kk - 1)
        out_len = length - span
        ws = np.ascontiguousarray(w.transpose(2, 0, 1).reshape(kk * o, c))  # (K*O, C): tap k's rows at k*O
        out = self.empty((n, o, out_len), D.get(x.dtype))
        bias = None if b is None else self._f(b, D.get(x.dtype)).reshape(o, 1)
        band = max(self.CONV_BAND_MIN, self.CONV_BLOCK // (kk * o))
        pieces = numpy_threads.pieces(kk * o * out_len) if self.CONV_SPLIT else 1
        if pieces > 1:  # an idle machine: every core a range of bands, OpenBLAS on one thread in each
            band = min(band, max(self.CONV_BAND_MIN, -(-out_len // pieces)))
        n_bands = -(-out_len // band)

        def bands(i, lo, hi, piece=0):  # bands [lo, hi) of sample i, through a product buffer of their own
            prod = np.empty((kk * o, min(band, out_len) + span), x.dtype)
            for t0 in range(lo * band, min(out_len, hi * band), band):
                t1 = min(out_len, t0 + band)
                m = t1 - t0
                p = prod[:, :m + span]
                np.matmul(ws, x[i, :, t0:t1 + span], out=p)
                y = out[i, :, t0:t1]
                np.copyto(y, p[:o, :m])
                for j in range(1, kk):
                    y += p[j * o:(j + 1) * o, j * dilation:j * dilation + m]
                if bias is not None:
                    y += bias
                if silu:
                    self._silu_band(y)

        if pieces > 1 and n_bands > 1:
            with BLAS_THREADS.forced_one():
                for i in range(n):
                    ROW_THREADS.run(partial(bands, i), n_bands, pieces)
        else:
            for i in range(n):
                bands(i, 0, n_bands)
        return out


def _row_weights(w, neg: bool = False):
    """w (O, C, KH, KW) -> (KH, O, KW * C), [i, o, j * C + c] = w[o, c, i, j] (negated with neg): a block of 16 output
    channels at a time (one transposing copy of a 256 x 256 x 3 x 3 weight: 0.59 ms; in blocks: 0.26)."""
    o, c, kh, kw = w.shape
    ws = np.empty((kh, o, kw, c), w.dtype)
    for o0 in range(0, o, 16):
        if neg:
            np.negative(w[o0:o0 + 16].transpose(2, 0, 3, 1), out=ws[:, o0:o0 + 16])
        else:
            np.copyto(ws[:, o0:o0 + 16], w[o0:o0 + 16].transpose(2, 0, 3, 1))
    return ws.reshape(kh, o, kw * c)


def _bias_silu_rows(rows, bias=None, silu: bool = False, src=None, neg: bool = False) -> None:
    """rows (R, ...) += bias (R, 1, ...), then SiLU in place, a block of about 64k elements at a time; with src
    (R, ...), rows = src (+ bias) first (the copy and the add one pass). With neg (and silu) rows (or src) hold
    the negated products -y and bias is -b (see _neg_silu_block): the same result, one pass less a block."""
    step = max(1, (1 << 16) // max(1, math.prod(rows.shape[1:])))
    scratch = np.empty(min(rows.shape[0], step) * math.prod(rows.shape[1:]), rows.dtype) if neg else None
    for r0 in range(0, rows.shape[0], step):
        blk = rows[r0:r0 + step]
        if src is not None and bias is None:
            np.copyto(blk, src[r0:r0 + step])
        elif bias is not None:
            np.add(blk if src is None else src[r0:r0 + step], bias[r0:r0 + step], out=blk)
        if neg:
            _neg_silu_block(blk, scratch[:blk.size].reshape(blk.shape))
        elif silu:
            ConvKernels._silu_band(blk)


def _neg_silu_block(m, t) -> None:
    """m holds -x (a conv's negated products plus the negated bias): m = SiLU(x) = x / (1 + exp(-x)), computed as
    m / (-1 - exp(m)), bit for bit unary silu's result (negation is exact and sign-symmetric in every step: the
    products, the sums, the bias add, the quotient), in three passes (exp, subtract, divide) where x / (1 +
    exp(-x)) from x takes four (negative, exp, add, divide): SiLU over 819k float32 0.84 -> 0.72 ms (the idle
    box, one thread). t: scratch of m's shape."""
    with np.errstate(all="ignore"):  # exp(m) overflows to inf for x < -88: m / -inf = -0 / ... = x / inf, as unary's
        np.exp(m, out=t)
        np.subtract(m.dtype.type(-1.0), t, out=t)
        np.divide(m, t, out=m)


# Winograd F(2x2, 3x3)'s 1-d transforms B^T, G and A^T (points 0, 1, -1 and infinity); the 2-d ones are their
# Kronecker products, B^T d B = kron(B^T, B^T) @ d flattened (4x4 tile element (i, j) at row 4i + j)
_WINO_B = np.kron(*[np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)] * 2)  # (16, 16)
_WINO_G = np.kron(*[np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)] * 2)  # (16, 9)
_WINO_A = np.kron(*[np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)] * 2)  # (4, 16)
