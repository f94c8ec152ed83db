"""Pooling and resampling kernels of the numpy backend, in 1, 2 or 3 spatial dims (a mixin of
NumpyBackend; cupy inherits it). Index and weight arithmetic follows torch's CPU kernels (coordinates
in the compute dtype, the last spatial dim interpolated first), so float results round like torch's.
uint8 linear and cubic resampling reproduce torch's separable fixed-point path (int16 weights).
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from engine import dtype as D


def _cubic1(x, a):
    return ((a + 2) * x - (a + 3)) * x * x + 1


def _cubic2(x, a):
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a


def _window_max(xp, a, k, stride, dilation, osz):
    """The max of every window of a padded (N, C, *S) array, one spatial dim at a time: per dim k - 1
    elementwise maxima of strided slices (whole-array passes, not a reduction over 5-element windows; maxima
    propagate NaN, as torch's pooling does)."""
    for d in range(len(k)):
        def tap(j, d=d, a=a):
            start = j * dilation[d]
            return a[(slice(None),) * (2 + d) + (slice(start, start + (osz[d] - 1) * stride[d] + 1, stride[d]),)]
        out = tap(0).copy()
        for j in range(1, k[d]):
            xp.maximum(out, tap(j), out=out)
        a = out
    return a


def _unravel(flat, dims: tuple) -> tuple:
    """unravel_index for indices known to lie in range (window positions): cupy's checks them with
    two host reads, which a CUDA-graph capture refuses."""
    coords = []
    for d in reversed(dims):
        coords.append(flat % d)
        flat = flat // d
    return tuple(reversed(coords))


class PoolKernels:
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

    def _plane_index(self, kc, osz, sizes, stride, pads, dilation):
        """Flat index into the input plane of each window's chosen element (kernel coords kc)."""
        xp, nd = self.xp, len(osz)
        idx = 0
        for i in range(nd):
            o = xp.arange(osz[i]).reshape((1, 1) + (1,) * i + (osz[i],) + (1,) * (nd - i - 1))
            idx = idx * sizes[i] + (o * stride[i] - pads[i][0] + kc[i] * dilation[i])
        return idx

    def max_pool(self, x, k, stride, padding, dilation, ceil_mode: bool, out_dtype, indices: bool = True):
        """(values, int64 indices into each flattened input plane), torch's return_indices; without indices,
        on numpy (values, None): the windows' maxima alone, by _window_max (YOLOv8's SPPF, a 5x5 stride-1 pool of 256
        channels at 20x20 three times per detect: 12.7 ms each with the argmax, its padding check and the index
        planes, 1.5 ms without, on the idle 2-core EPYC)."""
        xp = self.xp
        x = self._c(x)
        nd, sizes = len(k), x.shape[2:]
        pads = [self._pool_pads(sizes[i], k[i], stride[i], padding[i], dilation[i], ceil_mode) for i in range(nd)]
        fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
        padw = ((0, 0), (0, 0)) + tuple(pads)
        padded = xp.ascontiguousarray(xp.pad(x, padw, constant_values=fill))
        win = self._windows(padded, k, stride, dilation)
        osz = win.shape[2:2 + nd]
        if not indices and xp is np:  # numpy only: the cupy path stays the one its CUDA tests last ran (session 11)
            return self._out(_window_max(xp, padded, k, stride, dilation, osz), out_dtype), None
        flat = win.reshape(x.shape[:2] + osz + (math.prod(k),))
        arg = xp.argmax(flat, axis=-1)
        # a window whose real values all equal the fill (-inf, or the integer minimum) may point into the
        # padding: take its first real element instead, as torch's scan does
        valid = self._windows(xp.pad(xp.ones((1, 1) + sizes, np.int8), padw), k, stride, dilation)
        valid = valid.reshape((1, 1) + osz + (math.prod(k),))
        first = xp.argmax(valid, axis=-1)
        ok = xp.take_along_axis(xp.broadcast_to(valid, flat.shape), arg[..., None], axis=-1)[..., 0] > 0
        arg = xp.where(ok, arg, first)
        vals = xp.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]
        idx = self._plane_index(_unravel(arg, tuple(k)), osz, sizes, stride, pads, dilation)
        return self._out(vals, out_dtype), self._out(idx, D.int64)

    def avg_pool(self, x, k, stride, padding, ceil_mode: bool, count_include_pad: bool, divisor, out_dtype):
        """Window sums over the divisor torch uses: the window clipped to input + padding when
        count_include_pad, else to the input; never the extra padding ceil_mode adds. Integer inputs
        divide with truncation, as torch does."""
        xp = self.xp
        integer = not out_dtype.is_floating_point
        x = self._c(x, np.dtype(np.int64) if integer else D.compute_dtype(out_dtype))
        nd, sizes = len(k), x.shape[2:]
        pads = [self._pool_pads(sizes[i], k[i], stride[i], padding[i], 1, ceil_mode) for i in range(nd)]
        padded = xp.ascontiguousarray(xp.pad(x, ((0, 0), (0, 0)) + tuple(pads)))
        axes = tuple(range(-nd, 0))
        s = self._windows(padded, k, stride, (1,) * nd).sum(axis=axes)
        if divisor:
            cnt = divisor
        else:
            region = xp.zeros((1, 1) + padded.shape[2:], x.dtype)
            if count_include_pad:
                region[(0, 0) + tuple(slice(0, sizes[i] + 2 * padding[i]) for i in range(nd))] = 1
            else:
                region[(0, 0) + tuple(slice(padding[i], padding[i] + sizes[i]) for i in range(nd))] = 1
            cnt = self._windows(region, k, stride, (1,) * nd).sum(axis=axes)
        if integer:
            q = xp.floor_divide(s, cnt)
            r = xp.where((xp.remainder(s, cnt) != 0) & ((s < 0) != (xp.asarray(cnt) < 0)), q + 1, q)
        else:
            r = s / cnt
        return self._out(r, out_dtype)

    def adaptive_pool(self, x, out_size, kind: str, out_dtype):
        """kind 'avg' or 'max' over torch's adaptive windows [floor(i*n/o), ceil((i+1)*n/o)); returns
        (values, indices into each flattened input plane, or None for 'avg')."""
        xp = self.xp
        x = self._c(x, D.compute_dtype(out_dtype)) if kind == "avg" else self._c(x)
        nd, sizes = len(out_size), x.shape[2:]
        lead = x.shape[:2]
        out = xp.empty(lead + tuple(out_size), x.dtype)
        idx = xp.empty(lead + tuple(out_size), np.int64) if kind == "max" else None
        for cell in itertools.product(*[range(o) for o in out_size]):
            lo = [(j * n) // o for j, n, o in zip(cell, sizes, out_size)]
            hi = [-(-((j + 1) * n) // o) for j, n, o in zip(cell, sizes, out_size)]
            region = x[(slice(None), slice(None)) + tuple(slice(a, b) for a, b in zip(lo, hi))]
            at = (slice(None), slice(None)) + cell
            if kind == "avg":
                out[at] = region.mean(axis=tuple(range(2, 2 + nd)))
                continue
            flat = region.reshape(lead + (-1,))
            arg = xp.argmax(flat, axis=-1)
            out[at] = xp.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]
            coords = xp.unravel_index(arg, tuple(b - a for a, b in zip(lo, hi)))
            flat_idx = 0
            for i in range(nd):
                flat_idx = flat_idx * sizes[i] + coords[i] + lo[i]
            idx[at] = flat_idx
        return self._out(out, out_dtype), (None if idx is None else self._out(idx, D.int64))

    # ---- resampling ----------------------------------------------------------------------------------
    @staticmethod
    def _scale(n_in, n_out, align_corners, given, t):
        """torch's area_pixel_compute_scale in the coordinate dtype t."""
        if align_corners:
            return t((n_in - 1) / (n_out - 1)) if n_out > 1 else t(0)
        return t(1.0 / given) if given else t(n_in) / t(n_out)

    def interpolate(self, x, size, scales, mode: str, align_corners, out_dtype):
        """nearest, nearest-exact, linear (any of 1-3 dims) and bicubic (2 dims) over the trailing
        len(size) dims, one dim at a time from the last."""
        xp = self.xp
        if x.dtype == np.uint8 and mode not in ("nearest", "nearest-exact"):
            return self._interp_uint8(x, size, scales, mode, align_corners, out_dtype)
        x = self._f(x, out_dtype)
        t = (np.dtype(np.float64) if x.dtype == np.float64 else np.dtype(np.float32)).type
        nsp = len(size)
        for i in reversed(range(nsp)):
            axis, n_in, n_out = x.ndim - nsp + i, x.shape[x.ndim - nsp + i], size[i]
            dst = xp.arange(n_out, dtype=t)
            if mode in ("nearest", "nearest-exact"):
                scale = self._scale(n_in, n_out, False, scales[i], np.float32)
                d32 = dst.astype(np.float32)
                src = xp.floor((d32 + np.float32(0.5)) * scale if mode == "nearest-exact" else d32 * scale)
                x = self._take_pooled(x, xp.minimum(src.astype(np.int64), n_in - 1), axis)
                continue
            scale = self._scale(n_in, n_out, align_corners, scales[i], t)
            shape = [1] * x.ndim
            shape[axis] = n_out
            if mode == "bicubic":
                src = scale * dst if align_corners else scale * (dst + t(0.5)) - t(0.5)
                i0 = xp.minimum(xp.floor(src).astype(np.int64), n_in - 1)
                lam = xp.clip(src - i0.astype(t), t(0), t(1))
                a = t(-0.75)
                ws = [_cubic2(lam + t(1), a), _cubic1(lam, a), _cubic1(t(1) - lam, a), _cubic2(t(2) - lam, a)]
                acc = None
                for j, w in enumerate(ws):
                    term = xp.take(x, xp.clip(i0 - 1 + j, 0, n_in - 1), axis=axis) * w.reshape(shape)
                    acc = term if acc is None else acc + term
                x = acc
                continue
            src = scale * dst if align_corners else xp.maximum(scale * (dst + t(0.5)) - t(0.5), t(0))
            i0 = src.astype(np.int64)
            i1 = i0 + (i0 < n_in - 1)
            l1 = xp.clip(src - i0.astype(t), t(0), t(1))
            l0 = t(1) - l1
            a, b = self._take_pooled(x, i0, axis), self._take_pooled(x, i1, axis)  # of x's dtype, which is t's
            a *= l0.reshape(shape)  # x[i0] * l0 + x[i1] * l1 in place: two temporaries a dim, not five
            b *= l1.reshape(shape)
            a += b
            x = a
        pooled = xp is np and mode != "bicubic"  # the takes' pooled arrays (bicubic sums fresh ones)
        return x if pooled and x.dtype == out_dtype.np_dtype else self._out(x, out_dtype)

    def _take_pooled(self, x, index, axis: int):
        """xp.take(x, index, axis) into pooled memory: the letterbox's 6 MB passes, fresh arrays each call, faulted
        in ~2500 new pages per YOLOv8s detect (the whole rest of the model ~1800)."""
        if self.xp is not np:  # cupy: its own take (the CUDA path as it was; not measured here)
            return self.xp.take(x, index, axis=axis)
        out = self.empty(x.shape[:axis] + index.shape + x.shape[axis + 1:], D.get(x.dtype))
        np.take(x, index, axis=axis, out=out, mode="clip")  # "clip": unbuffered (numpy buffers out= under "raise")
        return out

    def _interp_uint8(self, x, size, scales, mode, align_corners, out_dtype):
        """torch's uint8 path (separable_upsample_generic_Nd_kernel_impl, antialias=False): one pass per
        resized dim, last first, with uint8 results between passes. Weights come from the float path's
        index and lambda, out-of-range taps folded onto the edge, then rounded to int16 at the largest
        precision that fits; each output is (sum + half) >> precision, clamped to 0..255."""
        xp = self.xp
        taps = 4 if mode == "bicubic" else 2
        support = taps // 2
        nsp = len(size)
        x = x.astype(np.int64)
        for i in reversed(range(nsp)):
            axis, n_in, n_out = x.ndim - nsp + i, x.shape[x.ndim - nsp + i], size[i]
            if n_in == n_out:
                continue
            scale = self._scale(n_in, n_out, align_corners, scales[i], float)
            xmin, weights = np.zeros(n_out, np.int64), np.zeros((n_out, taps))
            for o in range(n_out):  # host loop over one dim's output positions: the weights are data
                src = scale * o if align_corners else scale * (o + 0.5) - 0.5
                if taps == 2 and src < 0:
                    src = 0.0
                idx = min(int(math.floor(src)), n_in - 1)
                lam = min(max(src - idx, 0.0), 1.0)
                lo = idx - support + 1
                xmin[o] = max(lo, 0)
                n = min(max(min(idx + support + 1, n_in) - xmin[o], 0), taps)
                w_at = 0
                for j in range(taps):
                    t = abs(j + 1 - support - lam)
                    w = (max(0.0, 1.0 - t) if taps == 2 else
                         (_cubic1(t, -0.75) if t < 1 else (_cubic2(t, -0.75) if t < 2 else 0.0)))
                    if lo + j <= 0:
                        w_at = 0
                    elif lo + j >= n_in - 1:
                        w_at = n - 1
                    weights[o, w_at] += w
                    w_at += 1
            prec = 0
            while prec < 22 and int(0.5 + weights.max() * (1 << (prec + 1))) < (1 << 15):
                prec += 1
            w16 = np.where(weights < 0, -0.5 + weights * (1 << prec), 0.5 + weights * (1 << prec)).astype(np.int64)
            shape = [1] * x.ndim
            shape[axis] = n_out
            acc = xp.full(x.shape[:axis] + (n_out,) + x.shape[axis + 1:], 1 << (prec - 1), np.int64)
            for j in range(taps):
                src_idx = xp.asarray(np.minimum(xmin + j, n_in - 1))
                acc = acc + xp.take(x, src_idx, axis=axis) * xp.asarray(w16[:, j]).reshape(shape)
            x = xp.clip(acc >> prec, 0, 255)
        return self._out(x, out_dtype)
