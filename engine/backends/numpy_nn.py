"""Neural-network kernels of the numpy backend (a mixin of NumpyBackend; cupy inherits them too).

Everything computes in float32 (float64 stays float64) and rounds once into the output dtype.
Convolutions are im2col over a strided window view (positions innermost) followed by one batched GEMM
per group, whose result is already NCHW.
"""
from __future__ import annotations

import math

import numpy as np

from engine import dtype as D
from engine.backends.blas_threads import BLAS_THREADS
from engine.backends.numpy_errstate import _quiet
from engine.backends.numpy_threads import ROW_THREADS




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

    def _linear_split(self, x2, w, b, out_dtype, pieces):
        """x2 (M, K) @ w.T (+ b) into pooled memory, a GEMM per block of rows, the bias added in place as
        _linear does."""
        out = self.empty((x2.shape[0], w.shape[0]), out_dtype)
        bias = None if b is None else self._f(b, out_dtype)

        def run(lo, hi, piece):
            np.matmul(x2[lo:hi], w.T, out=out[lo:hi])
            if bias is not None:
                out[lo:hi] += bias

        single = BLAS_THREADS.one(0, force=True)
        try:
            ROW_THREADS.run(run, x2.shape[0], pieces)
        finally:
            if single:
                BLAS_THREADS.restore()
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
        cache) and the chunks on ROW_THREADS' cores; the sums are GEMVs with a vector of ones (3x faster
        than numpy's row reductions; fp32 sums in another order). None when a chunk holds a value outside
        +-2^64 (or nan, inf): the caller takes the general path for the whole array."""
        n = x.shape[-1]
        rows = x.size // n
        x2, out = x.reshape(rows, n), self.empty(x.shape, out_dtype)
        o2 = out.reshape(rows, n)
        w = None if weight is None else self._f(weight, out_dtype)
        b = None if bias is None else self._f(bias, out_dtype)
        lim, e, cnt, ones = x.dtype.type(2.0 ** 64), x.dtype.type(eps), np.intp(n), np.ones(n, x.dtype)
        step = max(1, self.NORM_CHUNK // n)
        bad = []

        def run(c0, c1, piece=0):  # chunks c0:c1 (the same chunks on any number of threads: the same bits)
            sq = np.empty((step, n), x.dtype)
            for r0 in range(c0 * step, min(rows, c1 * step), step):
                r1 = min(rows, r0 + step)
                xc, oc = x2[r0:r1], o2[r0:r1]
                if not (xc.max() < lim and xc.min() > -lim):
                    bad.append(r0)
                    return
                mean = np.matmul(xc, ones)[:, None]
                np.true_divide(mean, cnt, out=mean, casting="unsafe")
                np.subtract(xc, mean, out=oc)
                var = np.matmul(np.square(oc, out=sq[:r1 - r0]), ones)[:, None]
                np.true_divide(var, cnt, out=var, casting="unsafe")
                var += e
                np.sqrt(var, out=var)
                oc /= var
                if w is not None:
                    oc *= w
                if b is not None:
                    oc += b

        single = BLAS_THREADS.one(0, force=True)  # the GEMVs: OpenBLAS's threads would spin after them
        try:
            ROW_THREADS.run(run, -(-rows // step), ROW_THREADS.workers(x.size))
        finally:
            if single:
                BLAS_THREADS.restore()
        return None if bad else out

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
        mean = xp.mean(g, axis=-1, keepdims=True)
        if xp is np and x.dtype == out_dtype.np_dtype:
            out = self.empty(g.shape, out_dtype)
            xp.subtract(g, mean, out=out)
            var = xp.mean(xp.square(out), axis=-1, keepdims=True)
            out /= xp.sqrt(var + eps)
            y = out.reshape(x.shape)
            if weight is not None:
                y *= self._f(weight, out_dtype).reshape(bshape)
            if bias is not None:
                y += self._f(bias, out_dtype).reshape(bshape)
            return y
        var = xp.mean(xp.square(g - mean), axis=-1, keepdims=True)
        y = ((g - mean) / xp.sqrt(var + eps)).reshape(x.shape)
        if weight is not None:
            y = y * self._f(weight, out_dtype).reshape(bshape)
        if bias is not None:
            y = y + self._f(bias, out_dtype).reshape(bshape)
        return self._out(y, out_dtype)

    def group_norm_act(self, x, groups: int, weight, bias, eps: float, act, out_dtype):
        """FusedOps' composition, with SiLU applied in place in cache-sized chunks of the norm's output on
        numpy (the same operations: x / (1 + exp(-x)) of each rounded value)."""
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

    # ---- attention ------------------------------------------------------------------------------------
    def attention(self, q, k, v, mask, scale: float, out_dtype):
        """FusedOps.attention's formula on numpy in float32, without its copies: the scores are scaled
        (not at all for scale 1: x * 1 is x), masked and softmaxed in place in one pooled buffer, which
        the composition copies three times (mul, softmax, cast to the float32 it already is). The batch
        goes in blocks of whole rows of about ATTENTION_ROWS scores, each block in cache from its GEMM with
        K to its GEMM with V (BERT at batch 32: 25 MiB of scores otherwise, every pass from memory); when
        one batch row's scores exceed ATTENTION_WHOLE the same steps go a block of query rows of one head
        at a time. Other dtypes (and cupy) take the composition."""
        if out_dtype.np_dtype != np.float32 or self.xp is not np or not (
                q.dtype == k.dtype == v.dtype == np.float32) or (mask is not None and mask.dtype != np.float32):
            return super().attention(q, k, v, mask, scale, out_dtype)
        # the thread count by one head's product: a batched matmul is a BLAS call per head
        if BLAS_THREADS.one(q.shape[2] * q.shape[3] * k.shape[2]):
            try:
                return self._attention(q, k, v, mask, scale, out_dtype)
            finally:
                BLAS_THREADS.restore()
        return self._attention(q, k, v, mask, scale, out_dtype)

    def _attention(self, q, k, v, mask, scale: float, out_dtype):
        b, hq, L, d = q.shape
        hkv, S, dv = k.shape[1], k.shape[2], v.shape[-1]
        rep = hq // hkv
        sc = None if scale == 1.0 else np.float32(scale)
        with np.errstate(all="ignore"):
            if hq * L * S <= self.ATTENTION_WHOLE or S == 0:
                return self._attention_rows(q, k, v, mask, sc, out_dtype)
            out = self.empty((b, L, hq, dv), out_dtype)
            n = max(1, min(L, self.ATTENTION_BLOCK // S))
            buf = np.empty((n, S), np.float32)
            for bi in range(b):
                for hk in range(hkv):
                    kt = np.ascontiguousarray(k[bi, hk].T)  # (D, S): read by every row block of rep heads
                    vh = np.ascontiguousarray(v[bi, hk])
                    for r in range(rep):
                        h = hk * rep + r
                        qh = np.ascontiguousarray(q[bi, h])
                        mh = None if mask is None else mask[min(bi, mask.shape[0] - 1), 0]
                        for r0 in range(0, L, n):
                            r1 = min(L, r0 + n)
                            s = buf[:r1 - r0]
                            np.matmul(qh[r0:r1], kt, out=s)
                            if sc is not None:
                                s *= sc
                            if mh is not None:
                                s += mh[r0:r1]
                            self._softmax_rows(s)
                            out[bi, r0:r1, h] = s @ vh
            return out.reshape(b, L, hq * dv)

    def _attention_rows(self, q, k, v, mask, sc, out_dtype):
        """_attention's whole-row path: blocks of (batch rows, kv heads) of about ATTENTION_ROWS scores, each
        block's scores from its GEMM with K to its GEMM with V in one buffer. With ROW_THREADS the blocks
        go to the cores in contiguous runs (heads split when the batch gives fewer blocks than cores), each
        run with buffers of its own and OpenBLAS on one thread (its GEMMs run side by side).
        From ATTENTION_COLS query rows on, the scores are held transposed, (S, L) per head (_softmax_cols)."""
        b, hq, L, d = q.shape
        hkv, S, dv = k.shape[1], k.shape[2], v.shape[-1]
        rep = hq // hkv
        cols = rep * L >= self.ATTENTION_COLS and S > 0
        out = self.empty((b, L, hq, dv), out_dtype)
        per_row = hq * L * S  # scores of one batch row
        nb, nh, nl = max(1, min(b, self.ATTENTION_ROWS // max(1, per_row))), hkv, L
        if per_row > self.ATTENTION_ROWS:  # one kv head's rep heads and a block of queries a block
            nh, nl = 1, max(1, min(L, self.ATTENTION_ROWS // max(1, rep * S)))
        pieces = ROW_THREADS.workers(b * per_row)
        if pieces > 1 and -(-b // nb) * -(-L // nl) < pieces:  # too few blocks for the cores: split the heads
            nh = max(1, -(-hkv // pieces))
        blocks = [(b0, min(b, b0 + nb), h0, min(hkv, h0 + nh), l0, min(L, l0 + nl))
                  for b0 in range(0, b, nb) for h0 in range(0, hkv, nh) for l0 in range(0, L, nl)]
        pieces = min(pieces, len(blocks))
        bufs = [(self.empty((nb, nh) + ((S, rep * nl) if cols else (rep * nl, S)), out_dtype),
                 self.empty((nb, nh, rep * nl, dv), out_dtype)) for _ in range(pieces)]
        if mask is not None and cols:  # (B|1, 1, S, L): a view when the mask is one row per batch row (padding)
            mask = mask.swapaxes(-1, -2) if mask.strides[-2] == 0 else np.ascontiguousarray(mask.swapaxes(-1, -2))
        ones = np.ones(S, np.float32)

        def run(lo, hi, piece):
            s_buf, o_buf = bufs[piece]
            for b0, b1, h0, h1, l0, l1 in blocks[lo:hi]:
                n = rep * (l1 - l0)  # query rows of the block per kv head
                o = o_buf[:b1 - b0, :h1 - h0, :n]
                s = s_buf[:b1 - b0, :h1 - h0, :, :n] if cols else s_buf[:b1 - b0, :h1 - h0, :n]
                qg = q[b0:b1, h0 * rep:h1 * rep, l0:l1].reshape(o.shape[:3] + (d,))  # a view when rep is 1
                kb, vb = k[b0:b1, h0:h1], v[b0:b1, h0:h1]
                if cols:
                    np.matmul(kb, qg.swapaxes(-1, -2), out=s)  # (nb, nh, S, rep*nl)
                else:
                    np.matmul(qg, kb.swapaxes(-1, -2), out=s)  # (nb, nh, rep*nl, S)
                if sc is not None:
                    s *= sc
                if mask is not None:
                    mb = mask[b0:b1] if mask.shape[0] == b else mask
                    if cols:
                        s.reshape(b1 - b0, h1 - h0, S, rep, l1 - l0)[...] += mb[:, :, :, None, l0:l1]
                    else:
                        s.reshape(b1 - b0, h1 - h0, rep, l1 - l0, S)[...] += mb[:, :, None, l0:l1]
                if cols:
                    self._softmax_cols(s, ones)
                    np.matmul(s.swapaxes(-1, -2), vb, out=o)  # (nb, nh, rep*nl, Dv)
                else:
                    self._softmax_rows(s)
                    np.matmul(s, vb, out=o)
                np.copyto(out[b0:b1, l0:l1, h0 * rep:h1 * rep],
                          o.reshape(b1 - b0, (h1 - h0) * rep, l1 - l0, dv).swapaxes(1, 2))

        if pieces == 1:
            run(0, len(blocks), 0)
        else:
            single = BLAS_THREADS.one(0, force=True)
            try:
                ROW_THREADS.run(run, len(blocks), pieces)
            finally:
                if single:
                    BLAS_THREADS.restore()
        return out.reshape(b, L, hq * dv)

    @staticmethod
    def _softmax_cols(s, ones) -> None:
        """softmax over dim -2 of float32 scores held transposed, (..., S, L), in place: the max and the
        subtraction run along contiguous rows of L queries (numpy's max along the last dim costs 3x as
        much), the sums are one GEMM with a vector of ones, and each column is multiplied by 1 / sum (as
        torch's softmax kernel does). The same formula as _softmax_rows up to the order of the sum's
        additions (fp32 rounding)."""
        m = np.maximum.reduce(s, axis=-2, keepdims=True)  # (..., 1, L)
        s -= m
        np.exp(s, out=s)
        tot = np.matmul(ones, s)  # (..., L)
        np.divide(np.float32(1), tot, out=tot)
        s *= tot[..., None, :]

    # attention: all scores in one buffer up to ATTENTION_WHOLE elements (256 MiB of float32: Whisper's encoder,
    # 6 x 1500 x 1500, is 54 MiB), beyond that row blocks of about ATTENTION_BLOCK scores per head. Blocks of
    # 128-256 rows are as fast as one pass with one BLAS thread, but with OpenBLAS's threads on a loaded
    # 2-core machine their many small GEMMs were 3x slower than a few large ones (Whisper's encoder)
    ATTENTION_WHOLE = 1 << 26
    ATTENTION_BLOCK = 1 << 18
    ATTENTION_ROWS = 1 << 18  # scores per batch block of the whole-row path (1 MiB of float32: in L2)
    ATTENTION_COLS = 16  # query rows (of a kv head) from which the scores are held transposed (_softmax_cols)

    SOFTMAX_PIECE = 1 << 17  # scores per piece of _softmax_rows: its five passes run in L2 (20% faster)

    @staticmethod
    def _softmax_rows(s) -> None:
        """softmax over the last dim of a float32 array in place (softmax()'s steps: x - max, exp, / sum),
        a piece of rows at a time (each row's steps are its own: the same bits in any split)."""
        def rows(x):
            x -= np.max(x, axis=-1, keepdims=True)
            np.exp(x, out=x)
            x /= np.sum(x, axis=-1, keepdims=True)
        n = s.shape[-1]
        if s.size <= NnKernels.SOFTMAX_PIECE or n == 0 or not s.flags.c_contiguous:
            rows(s)
            return
        flat = s.reshape(-1, n)
        step = max(1, NnKernels.SOFTMAX_PIECE // n)
        for lo in range(0, flat.shape[0], step):
            rows(flat[lo:lo + step])

    # the blocked path: when all scores exceed SDPA_FULL_SCORES elements (4 MiB of float32) and one
    # head's (L, S) scores exceed SDPA_HEAD_SCORES (so the Python loop over heads is amortised); its
    # query-row blocks hold about SDPA_BLOCK scores (2 MiB: they stay in cache)
    SDPA_FULL_SCORES = 1 << 20
    SDPA_HEAD_SCORES = 1 << 18
    SDPA_BLOCK = 1 << 19

    def sdpa(self, q, k, v, mask, causal: bool, scale: float, out_dtype):
        """q (..., Hq, L, E), k/v (..., Hkv, S, E); Hq a multiple of Hkv (GQA by repeating k/v).
        mask: bool (True keeps) or additive float, broadcastable to (..., Hq, L, S).
        On numpy, long sequences go through _sdpa_blocked: the same per-row math over blocks of query
        rows, so the (..., L, S) score matrix never exists whole (SD 1.5's 4096-token self-attention:
        1 GiB of scores otherwise)."""
        xp = self.xp
        q, k, v = self._f(q, out_dtype), self._f(k, out_dtype), self._f(v, out_dtype)
        rep = q.shape[-3] // k.shape[-3] if q.ndim >= 3 else 1
        if rep > 1:
            k = xp.repeat(k, rep, axis=-3)
            v = xp.repeat(v, rep, axis=-3)
        L, S = q.shape[-2], k.shape[-2]
        if xp is np and L > 1 and S > 0 and q.ndim >= 2:
            lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2],
                                       *(() if mask is None else (mask.shape[:-2],)))
            if math.prod(lead) * L * S > self.SDPA_FULL_SCORES and L * S >= self.SDPA_HEAD_SCORES:
                return self._sdpa_blocked(q, k, v, mask, causal, scale, out_dtype, lead)
        # the backend's matmul (not `@`): on cupy its capture-safe kernel inside a CUDA graph, where cuBLAS is refused
        s = self.matmul(q, xp.swapaxes(k, -1, -2), D.get(q.dtype)) * q.dtype.type(scale)
        L, S = s.shape[-2:]
        if causal:
            s = xp.where(xp.tril(xp.ones((L, S), dtype=bool)), s, -np.inf)
        if mask is not None:
            s = xp.where(mask, s, -np.inf) if mask.dtype == np.bool_ else s + self._f(mask, out_dtype)
        m = xp.max(s, axis=-1, keepdims=True) if S else xp.zeros(s.shape[:-1] + (1,), s.dtype)
        m = xp.where(xp.isfinite(m), m, 0)
        with np.errstate(all="ignore"):
            e = xp.exp(s - m)
            tot = xp.sum(e, axis=-1, keepdims=True)
            p = e / xp.where(tot == 0, 1, tot)  # a fully masked row attends to nothing: output 0, as torch
        return self._out(self.matmul(p, v, D.get(p.dtype)), out_dtype)

    def _sdpa_blocked(self, q, k, v, mask, causal: bool, scale: float, out_dtype, lead):
        """sdpa's formula row block by row block, for every index of the leading dims: scores
        (n, S) = q_rows @ k^T * scale, causal/mask applied, softmax along S as above (max, exp, sum,
        divide), then @ v into the output rows. Each row sees the same operations as in the one-pass
        path but the normalisation, which divides the (n, E) output rows rather than the (n, S)
        probabilities (as flash attention does): results agree to fp32 rounding."""
        L, S, E = q.shape[-2], k.shape[-2], v.shape[-1]
        dt = q.dtype
        q = np.broadcast_to(q, lead + q.shape[-2:])
        kt = np.swapaxes(np.broadcast_to(k, lead + k.shape[-2:]), -1, -2)
        v = np.broadcast_to(v, lead + v.shape[-2:])
        if mask is not None:
            mask = np.broadcast_to(mask if mask.dtype == np.bool_ else self._f(mask, out_dtype), lead + (L, S))
        out = self.empty(lead + (L, E), D.get(dt))
        n = max(1, min(L, self.SDPA_BLOCK // S))
        cols = np.arange(S)
        sc = dt.type(scale)
        with np.errstate(all="ignore"):
            for idx in np.ndindex(*lead):
                qi, vi, oi = q[idx], v[idx], out[idx]
                kti = np.ascontiguousarray(kt[idx])  # (E, S): one copy per head, read by every row block
                mi = mask[idx] if mask is not None else None
                for r0 in range(0, L, n):
                    r1 = min(L, r0 + n)
                    s = np.matmul(qi[r0:r1], kti)  # (n, S)
                    s *= sc
                    if causal:
                        np.copyto(s, -np.inf, where=cols[None, :] > np.arange(r0, r1)[:, None])
                    if mi is not None:
                        if mi.dtype == np.bool_:
                            np.copyto(s, -np.inf, where=~mi[r0:r1])
                        else:
                            s += mi[r0:r1]
                    m = s.max(axis=-1, keepdims=True)
                    m[~np.isfinite(m)] = 0
                    s -= m
                    np.exp(s, out=s)
                    tot = s.sum(axis=-1, keepdims=True)
                    tot[tot == 0] = 1  # a fully masked row attends to nothing: output 0, as torch
                    o = oi[r0:r1]
                    np.matmul(s, vi, out=o)
                    o /= tot  # (e @ v) / sum: n x E divisions instead of n x S (flash attention's order)
        return out if D.get(dt) == out_dtype else self._out(out, out_dtype)
