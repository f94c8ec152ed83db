"""Neural-network kernels of the numpy backend (a mixin of NumpyBackend; cupy inherits them too).

Everything computes in float32 (float64 stays float64) and rounds once into the output dtype.
Convolutions are im2col over a strided window view followed by one GEMM per group.
"""
from __future__ import annotations

import numpy as np

from engine import dtype as D


class NnKernels:
    def _f(self, x, out_dtype):
        return self._c(x, D.compute_dtype(out_dtype))

    # ---- linear ---------------------------------------------------------------------------------------
    def linear(self, x, w, b, out_dtype):
        """x @ w.T + b in the compute dtype, rounded once (torch's fused addmm does the same). Rows of
        every leading dim go through one GEMM, so the weight is read once."""
        lead, k = x.shape[:-1], x.shape[-1]
        x2, w = self._f(x, out_dtype).reshape(-1, k), self._f(w, out_dtype)
        if b is None and x2.dtype == out_dtype.np_dtype:  # straight into pooled memory
            out = self.empty((x2.shape[0], w.shape[0]), out_dtype)
            self.xp.matmul(x2, w.T, out=out)
            return out.reshape(lead + (w.shape[0],))
        y = self.xp.matmul(x2, w.T)
        if b is not None:
            y = y + self._f(b, out_dtype)
        return self._out(y.reshape(lead + (w.shape[0],)), out_dtype)

    # ---- normalisation and softmax --------------------------------------------------------------
    def softmax(self, x, dim: int, log: bool, out_dtype):
        xp = self.xp
        if x.ndim == 0:  # cupy refuses axis=0 on a 0-d array
            return self.softmax(x.reshape(1), 0, log, out_dtype).reshape(())
        x = self._f(x, out_dtype)
        m = xp.max(x, axis=dim, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0)
        with np.errstate(all="ignore"):
            z = x - m
            e = xp.exp(z)
            s = xp.sum(e, axis=dim, keepdims=True)
            r = z - xp.log(s) if log else e / s
        return self._out(r, out_dtype)

    def layer_norm(self, x, nd: int, weight, bias, eps: float, out_dtype):
        xp = self.xp
        x = self._f(x, out_dtype)
        axes = tuple(range(x.ndim - nd, x.ndim))
        mean = xp.mean(x, axis=axes, keepdims=True)
        var = xp.mean(xp.square(x - mean), axis=axes, keepdims=True)
        y = (x - mean) / xp.sqrt(var + eps)
        if weight is not None:
            y = y * self._f(weight, out_dtype)
        if bias is not None:
            y = y + self._f(bias, out_dtype)
        return self._out(y, out_dtype)

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
        xp = self.xp
        x = self._f(x, out_dtype)
        n, c = x.shape[:2]
        g = x.reshape(n, groups, -1)
        mean = xp.mean(g, axis=-1, keepdims=True)
        var = xp.mean(xp.square(g - mean), axis=-1, keepdims=True)
        y = ((g - mean) / xp.sqrt(var + eps)).reshape(x.shape)
        bshape = (1, c) + (1,) * (x.ndim - 2)
        if weight is not None:
            y = y * self._f(weight, out_dtype).reshape(bshape)
        if bias is not None:
            y = y + self._f(bias, out_dtype).reshape(bshape)
        return self._out(y, out_dtype)

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

    # ---- convolution ------------------------------------------------------------------------------
    def _windows(self, x, k, stride, dilation):
        """(N, C, H, W) -> strided view (N, C, Ho, Wo, kh, kw); no copy."""
        n, c, h, w = x.shape
        ho = (h - dilation[0] * (k[0] - 1) - 1) // stride[0] + 1
        wo = (w - dilation[1] * (k[1] - 1) - 1) // stride[1] + 1
        s = x.strides
        return self.xp.lib.stride_tricks.as_strided(
            x, (n, c, ho, wo, k[0], k[1]),
            (s[0], s[1], s[2] * stride[0], s[3] * stride[1], s[2] * dilation[0], s[3] * dilation[1]))

    def conv2d(self, x, w, b, stride, padding, dilation, groups: int, out_dtype):
        """x (N, C, H, W), w (O, C/groups, kh, kw); padding is ((top, bottom), (left, right))."""
        xp = self.xp
        x, w = self._f(x, out_dtype), self._f(w, out_dtype)
        x = xp.ascontiguousarray(xp.pad(x, ((0, 0), (0, 0)) + tuple(padding)))
        n, c = x.shape[:2]
        o, cg, kh, kw = w.shape
        win = self._windows(x, (kh, kw), stride, dilation)
        ho, wo = win.shape[2:4]
        og = o // groups
        out = xp.empty((n, groups, og, ho, wo), x.dtype)
        for g in range(groups):
            cols = win[:, g * cg:(g + 1) * cg].transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, cg * kh * kw)
            wg = w[g * og:(g + 1) * og].reshape(og, cg * kh * kw)
            out[:, g] = (cols @ wg.T).reshape(n, ho, wo, og).transpose(0, 3, 1, 2)
        out = out.reshape(n, o, ho, wo)
        if b is not None:
            out = out + self._f(b, out_dtype).reshape(1, o, 1, 1)
        return self._out(out, out_dtype)

    def conv_transpose2d(self, x, w, b, stride, padding, output_padding, dilation, groups: int, out_dtype):
        """A transposed conv is a stride-1 conv over the input spread out by `stride`, padded by
        dilation*(k-1)-padding, with each group's weight transposed and flipped spatially."""
        xp = self.xp
        x, w = self._f(x, out_dtype), self._f(w, out_dtype)
        n, cin, h, wd = x.shape
        _, og, kh, kw = w.shape
        spread = xp.zeros((n, cin, (h - 1) * stride[0] + 1, (wd - 1) * stride[1] + 1), x.dtype)
        spread[:, :, ::stride[0], ::stride[1]] = x
        pads = []
        for i, k in enumerate((kh, kw)):
            p = dilation[i] * (k - 1) - padding[i]
            pads.append((p, p + output_padding[i]))
        crop = [(max(0, -lo), max(0, -hi)) for lo, hi in pads]
        pads = [(max(0, lo), max(0, hi)) for lo, hi in pads]
        spread = spread[:, :, crop[0][0]:spread.shape[2] - crop[0][1], crop[1][0]:spread.shape[3] - crop[1][1]]
        cg = cin // groups
        wt = w.reshape(groups, cg, og, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
        wt = wt.reshape(groups * og, cg, kh, kw)
        return self.conv2d(spread, wt, b, (1, 1), pads, dilation, groups, out_dtype)

    # ---- pooling and resampling ------------------------------------------------------------------
    def max_pool2d(self, x, k, stride, padding, dilation, ceil_mode: bool, out_dtype):
        xp = self.xp
        x = self._f(x, out_dtype)
        pads = [self._pool_pads(x.shape[2 + i], k[i], stride[i], padding[i], dilation[i], ceil_mode) for i in (0, 1)]
        fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
        x = xp.pad(x, ((0, 0), (0, 0)) + tuple(pads), constant_values=fill)
        win = self._windows(xp.ascontiguousarray(x), k, stride, dilation)
        return self._out(win.max(axis=(4, 5)), out_dtype)

    def avg_pool2d(self, x, k, stride, padding, ceil_mode: bool, count_include_pad: bool, divisor, out_dtype):
        xp = self.xp
        x = self._f(x, out_dtype)
        h, w = x.shape[2:]
        pads = [self._pool_pads(x.shape[2 + i], k[i], stride[i], padding[i], 1, ceil_mode) for i in (0, 1)]
        xp_ = xp.ascontiguousarray(xp.pad(x, ((0, 0), (0, 0)) + tuple(pads)))
        s = self._windows(xp_, k, stride, (1, 1)).sum(axis=(4, 5))
        if divisor:
            return self._out(s / divisor, out_dtype)
        # the divisor: torch counts the window clipped to the input plus `padding` when
        # count_include_pad, else clipped to the input; never the extra padding ceil_mode adds
        region = xp.zeros((1, 1) + xp_.shape[2:], x.dtype)
        if count_include_pad:
            region[:, :, :h + 2 * padding[0], :w + 2 * padding[1]] = 1
        else:
            region[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w] = 1
        cnt = self._windows(region, k, stride, (1, 1)).sum(axis=(4, 5))
        return self._out(s / cnt, out_dtype)

    @staticmethod
    def _pool_pads(size, k, s, p, d, ceil_mode):
        eff = d * (k - 1) + 1
        if ceil_mode:
            out = -(-(size + 2 * p - eff) // s) + 1
            if (out - 1) * s >= size + p:  # the last window must start inside the input or left pad
                out -= 1
        else:
            out = (size + 2 * p - eff) // s + 1
        need = (out - 1) * s + eff - size - p
        return (p, max(p, need))

    def adaptive_avg_pool2d(self, x, out_hw, out_dtype):
        xp = self.xp
        x = self._f(x, out_dtype)
        h, w = x.shape[-2:]
        oh, ow = out_hw
        out = xp.empty(x.shape[:-2] + (oh, ow), x.dtype)
        for i in range(oh):
            h0, h1 = (i * h) // oh, -(-((i + 1) * h) // oh)
            for j in range(ow):
                w0, w1 = (j * w) // ow, -(-((j + 1) * w) // ow)
                out[..., i, j] = x[..., h0:h1, w0:w1].mean(axis=(-2, -1))
        return self._out(out, out_dtype)

    def interpolate(self, x, size, scales, mode: str, align_corners, out_dtype):
        """nearest and bilinear over the trailing 2 dims (nearest also over 1 trailing dim)."""
        xp = self.xp
        x = self._f(x, out_dtype)
        nsp = len(size)
        in_sizes = x.shape[-nsp:]
        if mode == "nearest":
            for i in range(nsp):
                scale = 1.0 / scales[i] if scales[i] else in_sizes[i] / size[i]
                idx = xp.minimum(xp.floor(xp.arange(size[i]) * np.float32(scale)).astype(np.int64), in_sizes[i] - 1)
                x = xp.take(x, idx, axis=x.ndim - nsp + i)
            return self._out(x, out_dtype)
        if mode != "bilinear" or nsp != 2:
            raise ValueError(f"interpolate: mode {mode!r} with {nsp} spatial dims is not supported "
                             "(nearest: 1 or 2 dims; bilinear: 2 dims)")
        for i in range(2):
            axis = x.ndim - 2 + i
            n_in, n_out = in_sizes[i], size[i]
            d = xp.arange(n_out, dtype=np.float64)
            if align_corners:
                src = d * ((n_in - 1) / (n_out - 1)) if n_out > 1 else d * 0
            else:
                scale = 1.0 / scales[i] if scales[i] else n_in / n_out
                src = xp.maximum((d + 0.5) * scale - 0.5, 0)
            i0 = xp.minimum(xp.floor(src).astype(np.int64), n_in - 1)
            i1 = xp.minimum(i0 + 1, n_in - 1)
            frac = (src - i0).astype(x.dtype)
            shape = [1] * x.ndim
            shape[axis] = n_out
            frac = frac.reshape(shape)
            x = xp.take(x, i0, axis=axis) * (1 - frac) + xp.take(x, i1, axis=axis) * frac
        return self._out(x, out_dtype)

    # ---- attention ------------------------------------------------------------------------------------
    def sdpa(self, q, k, v, mask, causal: bool, scale: float, out_dtype):
        """q (..., Hq, L, E), k/v (..., Hkv, S, E); Hq a multiple of Hkv (GQA by repeating k/v).
        mask: bool (True keeps) or additive float, broadcastable to (..., Hq, L, S)."""
        xp = self.xp
        q, k, v = self._f(q, out_dtype), self._f(k, out_dtype), self._f(v, out_dtype)
        rep = q.shape[-3] // k.shape[-3] if q.ndim >= 3 else 1
        if rep > 1:
            k = xp.repeat(k, rep, axis=-3)
            v = xp.repeat(v, rep, axis=-3)
        s = (q @ xp.swapaxes(k, -1, -2)) * q.dtype.type(scale)
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
        return self._out(p @ v, out_dtype)
