"""erf in float64 and float32 (GELU's), and unary chains written in place into a pooled output, for
the numpy backend (engine/backends/numpy_backend.py): each the same formula as the reference op, in
cache-sized chunks."""
from __future__ import annotations

import math

import numpy as np

from engine.backends.numpy_threads import ROW_THREADS, ranges


def _erf_fits():
    """Chebyshev fits (degree 14, 64 nodes per piece) of erf(x) / x over x^2 in [0, 1], and of the
    slowly varying erfc(x) exp(x^2) over [1, 2], [2, 3.5], [3.5, 6], to the C library's math.erf /
    math.erfc; fitted once at import (about a millisecond). Relative error about 1e-15 over the line
    (tests/test_ops.py checks it against math.erf on a dense grid)."""
    from numpy.polynomial import chebyshev as C

    def fit(f, lo, hi, n=64):
        t = np.cos(np.pi * (np.arange(n) + 0.5) / n)  # Chebyshev nodes in [-1, 1]
        return C.chebfit(t, [f((hi + lo) / 2 + (hi - lo) / 2 * v) for v in t], 14)
    small = fit(lambda t: math.erf(math.sqrt(t)) / math.sqrt(t) if t > 0 else 2 / math.sqrt(math.pi), 0.0, 1.0)
    tails = [(lo, hi, fit(lambda x: math.erfc(x) * math.exp(x * x), lo, hi)) for lo, hi in ((1.0, 2.0), (2.0, 3.5),
                                                                                          (3.5, 6.0))]
    return small, tails


_ERF_SMALL, _ERF_TAILS = _erf_fits()


def _erf_f64(x, chunk: int = 1 << 16):
    """erf in float64 from numpy alone: x * p(x^2) below |x| = 1, 1 - exp(-x^2) q(x) up to 6 (the
    fits of _erf_fits), 1 beyond (erfc(6) is below half an ulp of 1); the sign restored last. Large
    arrays go in chunks that stay in cache (3x faster for a BERT-base GELU than one pass)."""
    x = np.asarray(x)
    if x.size > chunk:
        flat, out = x.reshape(-1), np.empty(x.size, np.float64)
        for s in range(0, x.size, chunk):
            out[s:s + chunk] = _erf_f64(flat[s:s + chunk], chunk)
        return out.reshape(x.shape)
    from numpy.polynomial.chebyshev import chebval
    x = x.astype(np.float64, copy=False)
    a = np.abs(x)
    out = np.ones_like(a)
    sel = a < 1.0
    z = a[sel]
    out[sel] = z * chebval(2.0 * z * z - 1.0, _ERF_SMALL)
    for lo, hi, c in _ERF_TAILS:
        sel = (a >= lo) & (a < hi)
        z = a[sel]
        out[sel] = 1.0 - np.exp(-z * z) * chebval((2.0 * z - (lo + hi)) / (hi - lo), c)
    out[np.isnan(a)] = np.nan
    return np.copysign(out, x)


# erf(x) / x = P(x^2) / Q(x^2) on |x| <= 4 (erf(4) = 1 - 1.5e-8 rounds to 1 in float32): a (6, 6) rational
# fitted to math.erf by Sanathanan-Koerner iteration (weighted least squares for relative error on 400
# Chebyshev nodes of [0, 4]). Evaluated in float64, its error is below 1.7e-8, so the float32 result is
# the correctly rounded erf or its neighbour (at most 1 ulp off; tests/test_ops.py checks this against
# math.erf on a dense grid). For float32 inputs, about 6x faster than _erf_f64's pieces.
_ERF32_P = (1.1283791674793193, 0.16650074472993412, 0.05084586158065998, 0.0029339034636108076,
            0.0003032690250804615, -4.3446920482454774e-07, -4.5574708844690315e-08)
_ERF32_Q = (1.0, 0.48089080317143434, 0.10535769448609288, 0.013440392001363618, 0.0010323661073647985,
            4.026583458413907e-05, -6.361248951568942e-07)
_CHUNK32 = 32768  # float32 elements per chunk: its float64 temporaries (256 KiB each) stay in L2


def _erf_rational(z, out) -> None:
    """out[...] = erf(z) for a float32 chunk z (float64 inside, rounded once into out)."""
    x = z.astype(np.float64)
    np.clip(x, -4.0, 4.0, out=x)
    s = x * x
    p = s * _ERF32_P[-1]
    p += _ERF32_P[-2]
    for c in _ERF32_P[-3::-1]:
        p *= s
        p += c
    q = s * _ERF32_Q[-1]
    q += _ERF32_Q[-2]
    for c in _ERF32_Q[-3::-1]:
        q *= s
        q += c
    p *= x
    p /= q
    np.copyto(out, p, casting="unsafe")
    if np.isnan(z).any():  # clip keeps nan; say so explicitly (erf(nan) = nan)
        out[np.isnan(z)] = np.nan


def _erf_f32(x, out=None):
    """erf of a float32 array through _erf_rational in cache-sized chunks. out: a C-contiguous float32
    array of x's shape to write into."""
    flat = np.ascontiguousarray(x).reshape(-1)
    res = out if out is not None else np.empty(np.shape(x), np.float32)
    out = res.reshape(-1)
    with np.errstate(all="ignore"):
        for i in range(0, flat.size, _CHUNK32):
            _erf_rational(flat[i:i + _CHUNK32], out[i:i + _CHUNK32])
    return res


# GELU for float32, x Phi(x) written as x / (1 + exp(e)) with e = -logit(Phi(x)) = -x P(x^2): P a degree-6
# polynomial in x^2 fitted to log(Phi / (1 - Phi)) / x on [0, 5.5] (weighted least squares, iterated toward the
# smallest largest error of the GELU itself; logit(Phi) is odd, so one fit serves both signs). Beyond
# |x| = 5.5 the argument is clipped and e gains (t - x), so exp(e) runs to 0 (gelu = x) or to inf (gelu = -0):
# e = t (1 - P(t^2)) - x with t = clip(x), the 1 folded into P's constant. Evaluated in float32 (19 passes
# over cache-sized chunks, against _erf_f32's 30 in float64: about 3x faster); largest error against the
# exact GELU about 6e-7 over [-12, 12] (half an ulp of 12 is 4.8e-7), and as the formula written with
# erf, gelu(-inf) is nan. tests/test_ops.py checks it against math.erf on a dense grid.
_GELU32_X = np.float32(5.5)
_GELU32_C = tuple(np.float32(c) for c in (1.0 - 1.595768435076929, -0.07266856080438065, 6.62558401175528e-05,
                                          0.00011048149533919174, -7.938376766780539e-06, 2.669025540674477e-07,
                                          -3.611453262653922e-09))


def _gelu_f32_into(x, out, t=None, s=None) -> None:
    """out[...] = gelu(x) (the fit above) for float32 x and out of one shape (out must not be x); t, s:
    scratch arrays of that shape (new ones without)."""
    t = np.clip(x, -_GELU32_X, _GELU32_X, out=t)
    s = np.multiply(t, t, out=s)
    c = _GELU32_C
    np.multiply(s, c[-1], out=out)
    out += c[-2]
    for k in c[-3::-1]:
        out *= s
        out += k
    out *= t
    out -= x
    np.exp(out, out=out)
    out += np.float32(1.0)
    np.divide(x, out, out=out)


_GELU_CHUNK = 1 << 16  # float32 elements per chunk: x, out and two scratch arrays (256 KiB each) stay in L2


def _gelu_f32(x, out=None):
    """gelu of a float32 array into out (C-contiguous, x's shape) or a new array: _gelu_f32_into over
    cache-sized chunks, its scratch arrays allocated once per piece (pieces on ROW_THREADS' cores)."""
    res = out if out is not None else np.empty(np.shape(x), np.float32)
    flat, of = np.ascontiguousarray(x).reshape(-1), res.reshape(-1)

    def run(lo, hi):
        n = min(hi - lo, _GELU_CHUNK)
        t, s = np.empty(n, np.float32), np.empty(n, np.float32)
        for i in range(lo, hi, _GELU_CHUNK):
            xc = flat[i:min(hi, i + _GELU_CHUNK)]
            _gelu_f32_into(xc, of[i:i + xc.size], t[:xc.size], s[:xc.size])

    with np.errstate(all="ignore"):  # exp overflows to inf on purpose (gelu = -0 there)
        ranges(run, flat.size, flat.size, _GELU_CHUNK, ROW_THREADS.MIN_ELEMENTS)
    return res


def _silu_into(x, out) -> None:  # x / (1 + exp(-x)), as _unary's formula, in place in out
    np.negative(x, out=out)
    np.exp(out, out=out)
    out += x.dtype.type(1.0)
    np.divide(x, out, out=out)


def _sigmoid_into(x, out) -> None:  # 1 / (1 + exp(-x))
    np.negative(x, out=out)
    np.exp(out, out=out)
    out += x.dtype.type(1.0)
    np.divide(x.dtype.type(1.0), out, out=out)


def _round_into(x, out) -> None:  # half to even, as _unary's xp.round
    np.round(x, out=out)


# unary ops written straight into pooled output (no fresh result array: a 3.7 MB one faulted in ~900 new pages on
# each YOLOv8s letterbox)
_IN_PLACE = {"silu": _silu_into, "sigmoid": _sigmoid_into, "round": _round_into}
_CHUNK = 1 << 16  # elements per chunk of an in-place chain: its passes stay in L2


def _chunked(fn, x, out) -> None:
    """fn(x_chunk, out_chunk) over cache-sized pieces of a C-ordered x (views when contiguous)."""
    if out.size <= _CHUNK:
        fn(x, out)
        return
    xf = np.ascontiguousarray(x).reshape(-1)
    of = out.reshape(-1)

    def run(lo, hi):
        for i in range(lo, hi, _CHUNK):
            fn(xf[i:min(hi, i + _CHUNK)], of[i:min(hi, i + _CHUNK)])
    ranges(run, xf.size, xf.size, _CHUNK, ROW_THREADS.MIN_ELEMENTS)
