"""Neural-network kernels of the numpy backend (a mixin of NumpyBackend; cupy inherits them too): linear,
the LSTM recurrence, softmax, the norms. Attention is numpy_attention's AttentionKernels, convolutions
numpy_conv's ConvKernels.

Everything computes in float32 (float64 stays float64) and rounds once into the output dtype.
"""
from __future__ import annotations

import math
from functools import partial

import numpy as np

from engine import dtype as D
from engine.backends.blas_threads import BLAS_THREADS
from engine.backends.numpy_errstate import _quiet
from engine.backends.numpy_threads import ROW_THREADS, split

_vecdot = getattr(np, "vecdot", None)  # numpy >= 2.0: row dot products in one pass



class NnKernels:
    def _f(self, x, out_dtype):
        return self._c(x, D.compute_dtype(out_dtype))

    # ---- linear ---------------------------------------------------------------------------------------
    def linear(self, x, w, b, out_dtype):
        """x @ w.T + b in the compute dtype, rounded once (torch's fused addmm does the same). Rows of
        every leading dim go through one GEMM, so the weight is read once."""
        lead, k = x.shape[:-1], x.shape[-1]
        m, n = math.prod(lead), w.shape[0]
        if self.xp is np and m >= self.LINEAR_SPLIT_ROWS and (b is None or b.dtype == np.float32) \
                and x.dtype == w.dtype == out_dtype.np_dtype == np.float32:
            pieces = ROW_THREADS.workers(m * n)
            if pieces > 1:
                return self._linear_split(x.reshape(m, k), w, b, out_dtype, pieces).reshape(lead + (n,))
        if self.xp is np and BLAS_THREADS.one(math.prod(x.shape) * w.shape[0]):
            try:
                return self._linear(x, w, b, out_dtype, lead, k)
            finally:
                BLAS_THREADS.restore()
        return self._linear(x, w, b, out_dtype, lead, k)

    def _linear(self, x, w, b, out_dtype, lead, k):
        x2, w = self._f(x, out_dtype).reshape(-1, k), self._f(w, out_dtype)
        if b is None and x2.dtype == out_dtype.np_dtype:  # straight into pooled memory
            out = self.empty((x2.shape[0], w.shape[0]), out_dtype)
            self.xp.matmul(x2, w.T, out=out)
            return out.reshape(lead + (w.shape[0],))
        if x2.dtype == out_dtype.np_dtype:  # the bias added in place, in pooled memory (same rounding)
            out = self.empty((x2.shape[0], w.shape[0]), out_dtype)
            self.xp.matmul(x2, w.T, out=out)
            out += self._f(b, out_dtype)
            return out.reshape(lead + (w.shape[0],))
        y = self.xp.matmul(x2, w.T)
        if b is not None:
            y = y + self._f(b, out_dtype)
        return self._out(y.reshape(lead + (w.shape[0],)), out_dtype)

    # float32 products of at least LINEAR_SPLIT_ROWS rows are cut into blocks of rows on ROW_THREADS' cores,
    # OpenBLAS on one thread in each: OpenBLAS's own threads spin for about 0.1 s after every product and took
    # the second core from the threaded elementwise work that follows (BERT at batch 32 on 2 cores, per forward:
    # GELU 148 -> 94 ms, attention 170 -> 82 ms with the split, no faster on two threads without it). Fewer
    # rows keep OpenBLAS's threads (a split of their columns was not measured faster on the shared machine)
    LINEAR_SPLIT_ROWS = 256

    # OpenBLAS reads a weight stored input-major, a C-contiguous (in, out) array seen as its (out, in) transpose,
    # faster than torch's (out, in) rows: float32 GEMMs of 128 rows (BERT at batch 1: 128 x 384 x 384, 1152,
    # 1536 and 128 x 1536 x 384) took 10-20% less time on this 2-core machine (engine.nn.linear.input_major)
    LINEAR_INPUT_MAJOR = True

    def _linear_split(self, x2, w, b, out_dtype, pieces):
        """x2 (M, K) @ w.T (+ b) into pooled memory, a GEMM per block of rows, the bias added in place as
        _linear does."""
        out = self.empty((x2.shape[0], w.shape[0]), out_dtype)
        bias = None if b is None else self._f(b, out_dtype)

        def run(lo, hi, piece):
            np.matmul(x2[lo:hi], w.T, out=out[lo:hi])
            if bias is not None:
                out[lo:hi] += bias

        with BLAS_THREADS.forced_one():
            ROW_THREADS.run(run, x2.shape[0], pieces)
        return out

    # ---- recurrence ------------------------------------------------------------------------------
    def lstm_recurrence(self, xw, h, c, w_hh, b_hh, w_hr, reverse: bool, out_dtype):
        """FusedOps.lstm_recurrence as one loop over the raw arrays (float32/float64): the same ops in the
        same order (h W_hh^T then + b_hh, then + xw[t]; sigmoid as 1 / (1 + exp(-x)); f c + i g), so the
        result equals the composition bit for bit, without a pooled allocation or a dispatch per op.
        16-bit dtypes take the composition (it rounds after every op), and so does cupy (its linear is its
        own GEMM/GEMV kernels, which the composition uses)."""
        if out_dtype.np_dtype not in (np.float32, np.float64) or self.xp is not np:
            return super().lstm_recurrence(xw, h, c, w_hh, b_hh, w_hr, reverse, out_dtype)
        xp = self.xp
        n_steps, hid = xw.shape[0], c.shape[-1]
        whT = self._f(w_hh, out_dtype).T
        b = None if b_hh is None else self._f(b_hh, out_dtype)
        hrT = None if w_hr is None else self._f(w_hr, out_dtype).T
        xw, h, c = self._f(xw, out_dtype), self._f(h, out_dtype), self._f(c, out_dtype)
        out = self.empty((n_steps,) + h.shape, out_dtype)
        one = out.dtype.type(1)
        single = BLAS_THREADS.one(math.prod(h.shape) * whT.shape[1])  # each step's h W_hh^T is small
        try:
            h, c = self._lstm_loop(xp, xw, h, c, whT, b, hrT, reverse, out, one, hid, n_steps)
        finally:
            if single:
                BLAS_THREADS.restore()
        if not BLAS_THREADS.single():  # its GEMVs ran on OpenBLAS's threads, which spin a while now
            BLAS_THREADS.threaded()
        return out, self._out(h, out_dtype), self._out(c, out_dtype)

    def _lstm_loop(self, xp, xw, h, c, whT, b, hrT, reverse, out, one, hid, n_steps):
        """Every step's ops write into buffers made once (no allocation in the loop); h is out[t] itself
        (or the projection's input buffer), which the next step's GEMV reads."""
        n = c.shape[0]
        g = np.empty((n, 4 * hid), out.dtype)  # gates
        s = np.empty_like(g)  # sigmoid of every gate (g's own is not used)
        tg = np.empty((n, hid), out.dtype)  # tanh(g), then sigmoid(i) tanh(g)
        c = np.array(c, out.dtype, order="C")  # the cell state, updated in place
        th = np.empty_like(c)  # tanh(c)
        hp = None if hrT is None else np.empty((n, hid), out.dtype)  # the projection's input
        si, sf, so, gg = s[:, :hid], s[:, hid:2 * hid], s[:, 3 * hid:], g[:, 2 * hid:3 * hid]
        with np.errstate(over="ignore"):
            for t in (range(n_steps - 1, -1, -1) if reverse else range(n_steps)):
                np.matmul(h, whT, out=g)
                if b is not None:
                    g += b
                np.add(xw[t], g, out=g)
                np.negative(g, out=s)
                np.exp(s, out=s)
                s += one
                np.divide(one, s, out=s)
                np.tanh(gg, out=tg)
                np.multiply(sf, c, out=c)  # c = sigmoid(f) c + sigmoid(i) tanh(g)
                np.multiply(si, tg, out=tg)
                c += tg
                np.tanh(c, out=th)
                if hrT is None:
                    h = out[t]
                    np.multiply(so, th, out=h)  # h = sigmoid(o) tanh(c)
                else:
                    np.multiply(so, th, out=hp)
                    h = out[t]
                    np.matmul(hp, hrT, out=h)
        return h, c

    # ---- normalisation and softmax --------------------------------------------------------------
    def softmax(self, x, dim: int, log: bool, out_dtype):
        """torch's formula: exp(x - max) / sum, so a row holding +inf gives nan (as torch does) and a
        fully -inf row gives nan; an empty dim gives an empty result."""
        xp = self.xp
        if x.ndim == 0:  # cupy refuses axis=0 on a 0-d array
            return self.softmax(x.reshape(1), 0, log, out_dtype).reshape(())
        x = self._f(x, out_dtype)
        if x.size == 0:
            return self._out(x, out_dtype)
        with np.errstate(all="ignore"):
            if xp is np and x.dtype == out_dtype.np_dtype:  # the same steps, in place in the output
                out = self.empty(x.shape, out_dtype)
                np.subtract(x, np.max(x, axis=dim, keepdims=True), out=out)
                if log:
                    out -= np.log(np.sum(np.exp(out), axis=dim, keepdims=True))
                else:
                    np.exp(out, out=out)
                    out /= np.sum(out, axis=dim, keepdims=True)
                return out
            z = x - xp.max(x, axis=dim, keepdims=True)
            e = xp.exp(z)
            s = xp.sum(e, axis=dim, keepdims=True)
            r = z - xp.log(s) if log else e / s
        return self._out(r, out_dtype)

    def layer_norm(self, x, nd: int, weight, bias, eps: float, out_dtype):
        """Rows whose values reach 2^64 are first scaled by a power of two (exact), so the variance does
        not overflow; torch's float32 kernel returns nan for rows of ~1e38 where float64 is finite.
        When no row needs that (the usual case), the same formula runs in place in the output."""
        xp = self.xp
        x = self._f(x, out_dtype)
        axes = tuple(range(x.ndim - nd, x.ndim))
        if x.size == 0:
            return self._out(x, out_dtype)
        if xp is np and x.dtype == out_dtype.np_dtype:
            if nd == 1 and x.flags.c_contiguous:  # the usual case: rows of the last dim, chunk by chunk
                out = _quiet(self._layer_norm_rows, x, weight, bias, eps, out_dtype)
                if out is not None:
                    return out
            else:
                # no row to scale when every value lies strictly within +-2^64 (two whole-array reductions;
                # nan and inf fail the test and take the general path, which treats them as before)
                lim = x.dtype.type(2.0 ** 64)
                if x.max() < lim and x.min() > -lim:
                    return _quiet(self._layer_norm_plain, x, axes, weight, bias, eps, out_dtype)
        with np.errstate(all="ignore"):
            big = xp.maximum(xp.max(x, axis=axes, keepdims=True), -xp.min(x, axis=axes, keepdims=True))  # max |x|
            scaled = xp.isfinite(big) & (big >= 2.0 ** 64)  # such rows are brought to about 2^40
            if xp is np and x.dtype == out_dtype.np_dtype and not scaled.any():
                return self._layer_norm_plain(x, axes, weight, bias, eps, out_dtype)
            shift = xp.where(scaled, xp.floor(xp.log2(big)) - 40, 0).astype(x.dtype)
            scale = xp.exp2(-shift)
            xs = x * scale
            mean = xp.mean(xs, axis=axes, keepdims=True)
            var = xp.mean(xp.square(xs - mean), axis=axes, keepdims=True)
            den = xp.sqrt(var + x.dtype.type(eps) * scale * scale)  # eps may underflow for scaled rows
            y = xp.where(scaled & (den == 0), x.dtype.type(0), (xs - mean) / den)
        if weight is not None:
            y = y * self._f(weight, out_dtype)
        if bias is not None:
            y = y + self._f(bias, out_dtype)
        return self._out(y, out_dtype)

    NORM_CHUNK = 1 << 17  # elements per chunk of _layer_norm_rows: its passes stay in L2 (1 << 13: 3x slower)

    def _layer_norm_rows(self, x, weight, bias, eps: float, out_dtype):
        """_layer_norm_plain's formula over the last dim of a C-contiguous x, a chunk of rows at a time (in
        cache) and the chunks on ROW_THREADS' cores; the mean's sums are GEMVs with a vector of ones (3x
        faster than numpy's row reductions), the squares' sums row dot products (np.vecdot: one pass, no
        squares written); fp32 sums in another order. None when a chunk's mean or variance is not finite
        (inf or nan in it, or a sum that overflowed: rows of ~2^64 and more): the caller takes the general
        path, which scales such rows, for the whole array. A row that overflows nothing gets the values
        the scaled formula gives (scaling by a power of two is exact), so no pass looks for large values."""
        n = x.shape[-1]
        rows = x.size // n
        x2, out = x.reshape(rows, n), self.empty(x.shape, out_dtype)
        o2 = out.reshape(rows, n)
        w = None if weight is None else self._f(weight, out_dtype)
        b = None if bias is None else self._f(bias, out_dtype)
        e, ones = x.dtype.type(eps), np.ones(n, x.dtype)
        if x.size <= self.NORM_SMALL:  # one chunk on this thread: none of the threads' set-up
            return out if self._layer_norm_chunk(x2, o2, ones, w, b, e) else None
        step = max(1, self.NORM_CHUNK // n)
        bad = []

        def run(c0, c1, piece=0):  # chunks c0:c1 (the same chunks on any number of threads: the same bits)
            sq = None if _vecdot is not None else np.empty((step, n), x.dtype)
            for r0 in range(c0 * step, min(rows, c1 * step), step):
                r1 = min(rows, r0 + step)
                if not self._layer_norm_chunk(x2[r0:r1], o2[r0:r1], ones, w, b, e, sq):
                    bad.append(r0)
                    return

        with BLAS_THREADS.forced_one():  # the GEMVs: OpenBLAS's threads would spin after them
            ROW_THREADS.run(run, -(-rows // step), ROW_THREADS.workers(x.size))
        return None if bad else out

    # _layer_norm_rows of at most NORM_SMALL elements runs as one chunk on the calling thread, with no thread
    # count set around it: OpenBLAS runs GEMVs under 9216 multiply-adds on one thread anyway (its own
    # threshold), so the bits are those of the threaded path. A decode step's rows (1 x 384): 13 norms a step
    # in Whisper-tiny
    NORM_SMALL = 4096

    @staticmethod
    def _layer_norm_chunk(xc, oc, ones, w, b, e, sq=None) -> bool:
        """_layer_norm_rows' steps on rows xc into oc; False (oc unfinished) when a mean or variance is not
        finite."""
        n = np.intp(xc.shape[-1])  # the sums / n in float64, rounded to float32 (a numpy int scalar promotes)
        mean = np.matmul(xc, ones)[:, None]
        np.true_divide(mean, n, out=mean, casting="unsafe")
        np.subtract(xc, mean, out=oc)
        if _vecdot is not None:
            var = _vecdot(oc, oc)[:, None]
        else:  # numpy < 2.0
            var = np.matmul(np.square(oc, out=sq[:xc.shape[0]] if sq is not None else None), ones)[:, None]
        np.true_divide(var, n, out=var, casting="unsafe")
        if not (np.isfinite(mean).all() and np.isfinite(var).all()):
            return False
        var += e
        np.sqrt(var, out=var)
        oc /= var
        if w is not None:
            oc *= w
        if b is not None:
            oc += b
        return True

    def _layer_norm_plain(self, x, axes, weight, bias, eps: float, out_dtype):
        """(x - mean) / sqrt(var + eps) [* w] [+ b] in place in the pooled output: np.mean's own steps (a sum,
        then a division by the count as an intp, which numpy does in float64 and rounds) without its
        Python wrapper, so the result equals np.mean's bit for bit."""
        n = np.intp(math.prod(x.shape[a] for a in axes))
        out = self.empty(x.shape, out_dtype)
        mean = np.add.reduce(x, axis=axes, keepdims=True)
        np.true_divide(mean, n, out=mean, casting="unsafe")
        np.subtract(x, mean, out=out)
        var = np.add.reduce(np.square(out), axis=axes, keepdims=True)
        np.true_divide(var, n, out=var, casting="unsafe")
        var += x.dtype.type(eps)
        np.sqrt(var, out=var)
        out /= var
        if weight is not None:
            out *= self._f(weight, out_dtype)
        if bias is not None:
            out += self._f(bias, out_dtype)
        return out

    def rms_norm(self, x, nd: int, weight, eps: float, out_dtype, style: str = "torch"):
        """style "torch": x / sqrt(mean(x^2) + eps) * w in float32, rounded once (F.rms_norm).
        "llama" (transformers' LlamaRMSNorm and kin): x * rsqrt(mean(x^2) + eps) rounded to the output
        dtype first, then times w in that dtype. "gemma": x * rsqrt(...) * (1 + w), rounded once."""
        xp = self.xp
        x = self._f(x, out_dtype)
        axes = tuple(range(x.ndim - nd, x.ndim))
        if style == "llama" and xp is np and x.dtype == out_dtype.np_dtype == np.float32 and (
                weight is None or weight.dtype == np.float32):
            return self._rms_norm_llama_f32(x, axes, weight, eps, out_dtype)
        if style == "torch":
            y = x / xp.sqrt(xp.mean(xp.square(x), axis=axes, keepdims=True) + eps)
            if weight is not None:
                y = y * self._f(weight, out_dtype)
            return self._out(y, out_dtype)
        n = x.dtype.type(np.prod([x.shape[a] for a in axes]))
        r = x.dtype.type(1.0) / xp.sqrt(xp.sum(xp.square(x), axis=axes, keepdims=True) / n + x.dtype.type(eps))
        if style == "gemma":
            return self._out(x * r * (self._f(weight, out_dtype) + x.dtype.type(1.0)), out_dtype)
        if style != "llama":
            raise ValueError(f"rms_norm: unknown style {style!r} (torch, llama, gemma)")
        y = self._out(x * r, out_dtype)
        return y if weight is None else self.binary("mul", weight, y, out_dtype, out_dtype)

    def _rms_norm_llama_f32(self, x, axes: tuple, weight, eps: float, out_dtype):
        """rms_norm's "llama" style for float32 on numpy: the same operations in the same order (so the same
        bits), the statistic's steps in place on its (..., 1) array and the two products straight into one
        pooled output, where the general path makes a copy for the rounding (a no-op in float32) and two more
        arrays (a decode step's norm: 2.5x faster)."""
        n = np.float32(math.prod(x.shape[a] for a in axes))
        r = np.add.reduce(np.square(x), axis=axes, keepdims=True)  # xp.sum's reduction
        r /= n
        r += np.float32(eps)
        np.sqrt(r, out=r)
        np.divide(np.float32(1.0), r, out=r)
        out = self.empty(x.shape, out_dtype)
        np.multiply(x, r, out=out)
        if weight is not None:
            np.multiply(weight, out, out=out)  # binary("mul", weight, y)'s operand order
        return out

    def rotary(self, x, cos, sin_signed, out_dtype):
        """FusedOps.rotary's products and sum for float32 on numpy, written into one pooled output: x * cos,
        then each half's product with the other half of x times sin_signed added in place (the composition's
        swapped copy, two products and a sum as separate arrays; the same rounding, element by element)."""
        if self.xp is not np or not (x.dtype == cos.dtype == sin_signed.dtype == out_dtype.np_dtype == np.float32):
            return super().rotary(x, cos, sin_signed, out_dtype)
        rot, d = cos.shape[-1], x.shape[-1]
        half = rot // 2
        c, s = cos[:, None], sin_signed[:, None]  # (B|1, 1, L, rot): broadcast over heads
        out = self.empty(np.broadcast_shapes(x.shape[:-1] + (rot,), c.shape)[:-1] + (d,), out_dtype)
        o = out[..., :rot]
        np.multiply(x[..., :rot], c, out=o)
        t = np.multiply(x[..., half:rot], s[..., :half])  # swap_halves(x) * sin_signed, first half
        o[..., :half] += t
        np.multiply(x[..., :half], s[..., half:], out=t)  # second half
        o[..., half:] += t
        if rot < d:
            out[..., rot:] = x[..., rot:]
        return out

    def group_norm(self, x, groups: int, weight, bias, eps: float, out_dtype):
        """(x - mean) / sqrt(var + eps) per (sample, group), then the per-channel affine; on numpy in
        place in the output (the same operations in the same order)."""
        xp = self.xp
        x = self._f(x, out_dtype)
        n, c = x.shape[:2]
        if x.size == 0:
            return self._out(x, out_dtype)
        g = x.reshape(n, groups, -1)
        bshape = (1, c) + (1,) * (x.ndim - 2)
        if xp is np and x.dtype == out_dtype.np_dtype:
            return self._group_norm_np(x, g, weight, bias, eps, out_dtype, silu=False)
        mean = xp.mean(g, axis=-1, keepdims=True)
        var = xp.mean(xp.square(g - mean), axis=-1, keepdims=True)
        y = ((g - mean) / xp.sqrt(var + eps)).reshape(x.shape)
        if weight is not None:
            y = y * self._f(weight, out_dtype).reshape(bshape)
        if bias is not None:
            y = y + self._f(bias, out_dtype).reshape(bshape)
        return self._out(y, out_dtype)

    def _group_norm_np(self, x, g, weight, bias, eps: float, out_dtype, silu: bool):
        """group_norm on numpy for x of the output dtype, g = x as (N, groups, -1): one (sample, group) row at a
        time, each row's passes (mean, x - mean, variance, scale, affine, SiLU) while it is in cache, the rows
        on idle cores; per row the same operations in the same order as over the whole array."""
        n, groups, cpg = g.shape[0], g.shape[1], x.shape[1] // g.shape[1]
        out = self.empty(g.shape, out_dtype)
        aff = [None if t is None else  # per row (sample, group): its channels' values, (N * groups, cpg, 1)
               np.broadcast_to(self._f(t, out_dtype).reshape(1, groups, cpg), (n, groups, cpg)).reshape(-1, cpg, 1)
               for t in (weight, bias)]
        fn = partial(_group_norm_rows, eps=eps, silu=silu, cpg=cpg, affine=tuple(a is not None for a in aff))
        _quiet(split, fn, g.reshape(n * groups, -1), out.reshape(n * groups, -1), *(a for a in aff if a is not None))
        return out.reshape(x.shape)

    def group_norm_act(self, x, groups: int, weight, bias, eps: float, act, out_dtype):
        """FusedOps' composition, with SiLU applied in place in cache-sized chunks of the norm's output on
        numpy (the same operations: x / (1 + exp(-x)) of each rounded value)."""
        if act == "silu" and self.xp is np and x.size and self._f(x, out_dtype).dtype == out_dtype.np_dtype:
            x = self._f(x, out_dtype)
            return self._group_norm_np(x, x.reshape(x.shape[0], groups, -1), weight, bias, eps, out_dtype, silu=True)
        y = self.group_norm(x, groups, weight, bias, eps, out_dtype)
        if act is None:
            return y
        if act != "silu" or self.xp is not np or y.dtype != D.compute_dtype(out_dtype) or not y.flags.c_contiguous:
            return self.unary(act, y, out_dtype)
        self._silu_inplace(y)
        return y

    def batch_norm(self, x, mean, var, weight, bias, eps: float, out_dtype):
        xp = self.xp
        x = self._f(x, out_dtype)
        bshape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        y = (x - self._f(mean, out_dtype).reshape(bshape)) / xp.sqrt(self._f(var, out_dtype).reshape(bshape) + eps)
        if weight is not None:
            y = y * self._f(weight, out_dtype).reshape(bshape)
        if bias is not None:
            y = y + self._f(bias, out_dtype).reshape(bshape)
        return self._out(y, out_dtype)


def _group_norm_rows(g, out, *affine_rows, eps: float, silu: bool, cpg: int, affine: tuple) -> None:
    """GroupNorm of rows g (R, cpg * S) into out, one row at a time: (x - mean) / sqrt(var + eps), then the
    per-channel weight (R, cpg, 1) and bias, then SiLU (x / (1 + exp(-x))), all in place in out."""
    it = iter(affine_rows)
    w, b = (next(it) if affine[0] else None), (next(it) if affine[1] else None)
    for r in range(g.shape[0]):
        row, dst = g[r], out[r]
        np.subtract(row, np.mean(row, keepdims=True), out=dst)
        var = np.mean(np.square(dst), keepdims=True)
        dst /= np.sqrt(var + eps)
        d = dst.reshape(cpg, -1)
        if w is not None:
            d *= w[r]
        if b is not None:
            d += b[r]
        if silu:
            t = np.negative(dst)
            np.exp(t, out=t)
            t += dst.dtype.type(1.0)
            np.divide(dst, t, out=dst)
