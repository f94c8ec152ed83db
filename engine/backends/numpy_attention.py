"""Attention kernels of the numpy backend (a mixin of NumpyBackend beside numpy_nn's NnKernels; cupy inherits
them too): the attention op and scaled_dot_product_attention in float32, scores scaled, masked and
softmaxed in place in pooled buffers, in batch or query blocks that stay in cache, the blocks on
ROW_THREADS' cores while the machine is idle, and from ATTENTION_COLS query rows the scores held transposed
(max along contiguous rows, the sums one GEMM with ones).
"""
from __future__ import annotations

import math

import numpy as np

from engine import dtype as D
from engine.backends.blas_threads import BLAS_THREADS
from engine.backends.numpy_threads import ROW_THREADS


class AttentionKernels:
    def attention(self, q, k, v, mask, scale: float, out_dtype):
        """FusedOps.attention's formula on numpy in float32, without its copies: the scores are scaled
        (not at all for scale 1: x * 1 is x), masked and softmaxed in place in one pooled buffer, which
        the composition copies three times (mul, softmax, cast to the float32 it already is). The batch
        goes in blocks of whole rows of about ATTENTION_ROWS scores, each block in cache from its GEMM with
        K to its GEMM with V (BERT at batch 32: 25 MiB of scores otherwise, every pass from memory); when
        one batch row's scores exceed that, a block of query rows of one kv head at a time
        (_attention_rows). Other dtypes (and cupy) take the composition."""
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

    @property
    def attention_keys_transposed(self) -> bool:
        """Whether keys that many attention calls read (cross-attention's, computed once per audio) are best
        stored transposed, each head's (D, S) contiguous (engine.nn.attention.attention_keys): on numpy the
        one-row product q K^T is then a GEMV down contiguous rows of K^T. Not on cupy (its decode kernel reads
        K's rows)."""
        return self.xp is np

    def _attention(self, q, k, v, mask, scale: float, out_dtype):
        b, hq, L, d = q.shape
        hkv, S, dv = k.shape[1], k.shape[2], v.shape[-1]
        rep = hq // hkv
        sc = None if scale == 1.0 else np.float32(scale)
        if sc is not None and math.frexp(scale)[0] == 0.5 and q.size < b * hq * L * S:
            # a power of two scales q instead of the scores: the same bits (q * 2^k is exact, and so is the
            # product's scaling, short of overflow and subnormals), one pass over fewer elements; Whisper's
            # q * head_dim ** -0.5 before its scores is this (0.125), transformers' own order
            q, sc = np.multiply(q, sc), None
        with np.errstate(all="ignore"):
            if L == 1 and S > 0:
                return self._attention_one(q, k, v, mask, sc, out_dtype)
            return self._attention_rows(q, k, v, mask, sc, out_dtype)

    def _attention_one(self, q, k, v, mask, sc, out_dtype):
        """_attention for one query row (a decode step): every kv head's rep query rows in one batched
        product with K, the softmax's steps on the (B, Hkv, rep, S) scores in place, the product with V
        straight into the output (its (B, 1, Hq, Dv) rows are the (B, Hkv, rep, Dv) products) and the division
        by the sums after it (Dv values a row, not S: _softmax_cols' order). None of _attention_rows'
        blocks, pooled scratch or copies: they cost more than the arithmetic here (Whisper-tiny's
        cross-attention, 6 heads x 1500 keys, four a step). K may come transposed, (B, Hkv, D, S) contiguous
        seen as (B, Hkv, S, D) (attention_keys_transposed): the product with it is a contiguous GEMV."""
        b, hq, _, d = q.shape
        hkv, S, dv = k.shape[1], k.shape[2], v.shape[-1]
        rep = hq // hkv
        s = np.matmul(q.reshape(b, hkv, rep, d), k.swapaxes(-1, -2))  # (B, Hkv, rep, S)
        if sc is not None:
            s *= sc
        if mask is not None:  # (B|1, 1, 1, S)
            s += mask
        s -= np.max(s, axis=-1, keepdims=True)
        np.exp(s, out=s)
        tot = np.sum(s, axis=-1, keepdims=True)  # (B, Hkv, rep, 1)
        out = self.empty((b, 1, hq * dv), out_dtype)
        o = out.reshape(b, hkv, rep, dv)
        np.matmul(s, v, out=o)
        o /= tot
        return out

    def _attention_rows(self, q, k, v, mask, sc, out_dtype):
        """_attention's whole-row path: blocks of (batch rows, kv heads) of about ATTENTION_ROWS scores, each
        block's scores from its GEMM with K to its GEMM with V in one buffer. With ROW_THREADS the blocks
        go to the cores in contiguous runs (heads split when the batch gives fewer blocks than cores), each
        run with buffers of its own and OpenBLAS on one thread (its GEMMs run side by side).
        From ATTENTION_COLS query rows on, the scores are held transposed, (S, L) per head (_softmax_cols)."""
        b, hq, L, d = q.shape
        hkv, S, dv = k.shape[1], k.shape[2], v.shape[-1]
        rep = hq // hkv
        # (a full mask is copied transposed for the cols layout: only up to ATTENTION_WHOLE elements)
        cols = rep * L >= self.ATTENTION_COLS and S > 0 and (
            mask is None or mask.strides[-2] == 0 or L * S <= self.ATTENTION_WHOLE)
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
        # a mask of one row per batch row (padding: (B|1, 1, L, S) with stride 0 over L) that holds only zeros for
        # some batch rows: their blocks skip the add (x + 0 is x; -0 becomes +0, which softmax does not see)
        live = None if mask is None or mask.strides[-2] != 0 else mask[:, 0, 0, :].any(axis=-1)  # (B|1,)
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
                if mask is not None and (live is None or (live[b0:b1] if live.shape[0] == b else live).any()):
                    mb = mask[b0:b1] if mask.shape[0] == b else mask
                    if cols:
                        s.reshape(b1 - b0, h1 - h0, S, rep, l1 - l0)[...] += mb[:, :, :, None, l0:l1]
                    else:
                        s.reshape(b1 - b0, h1 - h0, rep, l1 - l0, S)[...] += mb[:, :, None, l0:l1]
                if cols:  # softmax's division after the product with V: Dv values a query row, not S
                    r = self._softmax_cols(s, ones)  # s = exp(s - max), r = 1 / sums: (nb, nh, rep*nl)
                    np.matmul(s.swapaxes(-1, -2), vb, out=o)  # (nb, nh, rep*nl, Dv)
                    o *= r[..., None]
                else:
                    self._softmax_rows(s)
                    np.matmul(s, vb, out=o)
                np.copyto(out[b0:b1, l0:l1, h0 * rep:h1 * rep],
                          o.reshape(b1 - b0, (h1 - h0) * rep, l1 - l0, dv).swapaxes(1, 2))

        if pieces == 1:
            run(0, len(blocks), 0)
        else:
            with BLAS_THREADS.forced_one():
                ROW_THREADS.run(run, len(blocks), pieces)
        return out.reshape(b, L, hq * dv)

    @staticmethod
    def _softmax_cols(s, ones):
        """softmax over dim -2 of float32 scores held transposed, (..., S, L), in place but for the last step:
        the max and the subtraction run along contiguous rows of L queries (numpy's max along the last dim
        costs 3x as much), the sums are one GEMM with a vector of ones; returns 1 / sum (..., L), by which
        the caller multiplies each column (as torch's softmax kernel does) or the product with V (flash
        attention's order: one pass over the scores less). The same formula as _softmax_rows up to the
        order of the sum's additions and of that multiplication (fp32 rounding)."""
        m = np.maximum.reduce(s, axis=-2, keepdims=True)  # (..., 1, L)
        s -= m
        np.exp(s, out=s)
        tot = np.matmul(ones, s)  # (..., L)
        np.divide(np.float32(1), tot, out=tot)
        return tot

    # attention: past ATTENTION_ROWS scores a batch row, _attention_rows' blocks hold one kv head's block of query
    # rows. Until session 13 one batch row's scores past ATTENTION_WHOLE went a head at a time through a loop of
    # its own (blocks of 2^18 scores, OpenBLAS's threads over each small GEMM, no transposed scores): on the
    # 2-core Xeon, one call of SD-1.5's 64x64 self-attention (2 x 8 x 4096 x 4096, D = 40) 780 ms there, 440 in
    # _attention_rows (torch 212); 32 heads x 2048 causal (D = 128) 740 -> 490 (torch 296); 8 x 8192 1770 ->
    # 1040 (torch 425)
    ATTENTION_WHOLE = 1 << 26  # the largest full mask (L x S) that the cols layout copies transposed
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
        if s.size <= AttentionKernels.SOFTMAX_PIECE or n == 0 or not s.flags.c_contiguous:
            rows(s)
            return
        flat = s.reshape(-1, n)
        step = max(1, AttentionKernels.SOFTMAX_PIECE // n)
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
        if (xp is np and mask is None and not causal and q.ndim == k.ndim == v.ndim == 4 and q.shape[0] == k.shape[0]
                == v.shape[0] and q.shape[-2] > 1 and k.shape[-2] > 0 and out_dtype.np_dtype == np.float32
                and q.dtype == k.dtype == v.dtype == np.float32 and q.shape[1] % k.shape[1] == 0):
            # no mask (diffusers' self- and cross-attention): the attention op's blocked, threaded kernels (SD 1.5's
            # 4096-token self-attention, 2 x 8 heads, D = 40, on the 2-core Xeon of session 13: 669 ms a call in
            # _sdpa_blocked, 450 there, torch 212); its (B, L, Hq * Dv) rows seen as (B, Hq, L, Dv)
            b, hq, L, _ = q.shape
            o = self.attention(q, k, v, None, scale, out_dtype)
            return o.reshape(b, L, hq, v.shape[-1]).transpose(0, 2, 1, 3)
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
