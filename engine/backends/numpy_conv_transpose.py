"""The numpy backend's transposed convolutions (a mixin of NumpyBackend beside numpy_conv's ConvKernels, whose
conv, _blas_scoped and CONV_* settings they use): a spread-out stride-1 conv, and on numpy 1-d ones as a GEMM +
col2im per band. Shared with the cupy backend (xp)."""
from __future__ import annotations

import numpy as np

from engine.backends import numpy_threads
from engine.backends.blas_threads import BLAS_THREADS
from engine.backends.numpy_threads import ROW_THREADS


class ConvTransposeKernels:
    def conv_transpose(self, x, w, b, stride, padding, output_padding, dilation, groups: int, out_dtype):
        """See _conv_transpose (its GEMMs under BLAS_THREADS)."""
        return self._blas_scoped(self._conv_transpose, x, w, b, stride, padding, output_padding, dilation, groups,
                                 out_dtype)

    def _conv_transpose(self, x, w, b, stride, padding, output_padding, dilation, groups: int, out_dtype):
        """A transposed conv is a stride-1 conv over the input spread out by `stride`, padded by
        dilation*(k-1)-padding, with each group's weight transposed and flipped spatially. On numpy a 1-d
        one with groups 1 is instead one GEMM, w^T (Cout*K, Cin) @ x (Cin, L), whose K column blocks are
        added into the output at stride `stride` (col2im): the spread input's zeros are never multiplied
        (EnCodec's decoder: stride 8 with K 16 is 8x fewer FLOPs)."""
        xp = self.xp
        x, w = self._f(x, out_dtype), self._f(w, out_dtype)
        nd = x.ndim - 2
        if xp is np and nd == 1 and groups == 1 and x.dtype == out_dtype.np_dtype == np.float32 and x.size:
            return self._conv_transpose1d_gemm(x, w, b, stride[0], padding[0], output_padding[0], dilation[0],
                                               out_dtype)
        n, cin = x.shape[:2]
        og, k = w.shape[1], w.shape[2:]
        spread = xp.zeros((n, cin) + tuple((x.shape[2 + i] - 1) * stride[i] + 1 for i in range(nd)), x.dtype)
        spread[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in stride)] = x
        pads = [(dilation[i] * (k[i] - 1) - padding[i],) * 2 for i in range(nd)]
        pads = [(lo, hi + output_padding[i]) for i, (lo, hi) in enumerate(pads)]
        crop = tuple(slice(max(0, -lo), spread.shape[2 + i] - max(0, -hi)) for i, (lo, hi) in enumerate(pads))
        spread = spread[(slice(None), slice(None)) + crop]
        pads = [(max(0, lo), max(0, hi)) for lo, hi in pads]
        cg = cin // groups
        wt = xp.swapaxes(w.reshape((groups, cg, og) + tuple(k)), 1, 2)[(Ellipsis,) + (slice(None, None, -1),) * nd]
        wt = wt.reshape((groups * og, cg) + tuple(k))
        return self.conv(spread, wt, b, (1,) * nd, pads, dilation, groups, out_dtype)

    def _conv_transpose1d_gemm(self, x, w, b, stride: int, padding: int, output_padding: int, dilation: int,
                               out_dtype):
        """conv_transpose for (N, Cin, L) float32, w (Cin, Cout, K): y[n, o, t*stride + k*dilation] +=
        sum_c x[n, c, t] w[c, o, k] over the full length (L-1)*stride + dilation*(K-1) + 1, then the
        output window [padding, padding + out_len) (zeros past the full length: output_padding). y starts
        as the bias; per band of input columns one GEMM, w^T (Cout*K, Cin) @ x[:, band], whose K rows
        blocks are added into y while they are in cache (EnCodec's decoder: 64 -> 32 channels at 120k
        samples 27 ms against 36 ms for one GEMM over the whole input, whose products fill memory; the
        weight is not copied: 8 ms of its 28 ms for 512 -> 256 channels, K 16)."""
        n, cin, length = x.shape
        cout, kk = w.shape[1], w.shape[2]
        full = (length - 1) * stride + dilation * (kk - 1) + 1
        out_len = full - 2 * padding + output_padding
        ylen = max(full, padding + out_len)
        wt = w.reshape(cin, cout * kk).T  # (Cout*K, Cin), a transposed view (BLAS reads it as it is)
        y = self.empty((n, cout, ylen), out_dtype)
        bias = None if b is None else self._f(b, out_dtype).reshape(cout, 1)
        pieces = numpy_threads.pieces(cout * kk * length) if self.CONV_SPLIT else 1
        if pieces > 1:  # an idle machine: every core a block of output channels (their rows of w^T), own bands
            pieces = min(pieces, cout)

        def channels(lo, hi, piece=0):  # output channels [lo, hi) of every sample, a band of input columns at a time
            c = hi - lo
            band = max(self.CONV_BAND_MIN, self.CONV_BLOCK // (c * kk))
            prod = np.empty((c * kk, min(band, length)), np.float32)
            w_part = wt[lo * kk:hi * kk]
            for i in range(n):
                yi = y[i, lo:hi]
                yi[...] = 0 if bias is None else bias[lo:hi]
                for t0 in range(0, length, band):
                    m = min(length, t0 + band) - t0
                    cols = prod[:, :m]
                    np.matmul(w_part, x[i, :, t0:t0 + m], out=cols)
                    cols = cols.reshape(c, kk, m)
                    for j in range(kk):
                        at = t0 * stride + j * dilation
                        yi[:, at:at + (m - 1) * stride + 1:stride] += cols[:, j]

        if pieces > 1:
            with BLAS_THREADS.forced_one():
                ROW_THREADS.run(channels, cout, pieces)
        else:
            channels(0, cout)
        if padding == 0 and ylen == out_len:
            return y
        out = self.empty((n, cout, out_len), out_dtype)
        np.copyto(out, y[:, :, padding:padding + out_len])
        return out
