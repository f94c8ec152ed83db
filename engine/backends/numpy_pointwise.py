"""Pointwise kernels with parameters or several operands (a mixin of NumpyBackend; cupy inherits it).

`pointwise(op, operands, params, out_dtype)` computes in the output's compute dtype (float32 for the
16-bit floats) and rounds once, as torch's CPU kernels do; the formulas follow torch's (quoted where
the order of operations changes the last bit). Every function here uses `self.xp`, so the same code
runs on numpy and cupy arrays. Also here: the special functions erfc and erfinv in float64, and the
binary ops numpy has no single ufunc for (torch's shifts, truncating division, xlogy).
"""
from __future__ import annotations

import math

import numpy as np

from engine import dtype as D
from engine.backends.numpy_special import _chunked

# Giles (2010), "Approximating the erfinv function": single-precision coefficients, refined by Newton
_GILES_LO = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087, -0.00125372503,
             -0.00417768164, 0.246640727, 1.50140941)
_GILES_HI = (-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773, -0.0076224613,
             0.00943887047, 1.00167406, 2.83297682)


def _dtype_of(*values) -> np.dtype:
    """numpy's result dtype from the dtypes alone (np.result_type would convert a cupy array)."""
    return np.result_type(*[v.dtype if hasattr(v, "dtype") else v for v in values])


class IntegerDivisionByZero(ZeroDivisionError, RuntimeError):
    """Integer division or remainder by zero. A ZeroDivisionError, and a RuntimeError like torch's
    (torch raises RuntimeError("ZeroDivisionError") on the CPU), so ported `except` clauses still work."""


SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


class PointwiseKernels:
    # ---- special functions (float64, then rounded by the caller) -----------------------------------
    def _erfc(self, x):
        """erfc without the cancellation of 1 - erf for large x: a continued fraction above 2.5."""
        xp = self.xp
        x64 = x.astype(np.float64)
        a = xp.abs(x64)
        big = xp.maximum(a, 2.5)  # the fraction is only evaluated where it converges
        k = big.copy()
        for n in range(80, 0, -1):
            k = big + (n / 2.0) / k
        tail = xp.exp(-big * big) / (math.sqrt(math.pi) * k)
        pos = xp.where(a >= 2.5, tail, 1.0 - self._erf(xp.minimum(a, 2.5)))
        return xp.where(x64 < 0, 2.0 - pos, pos).astype(x.dtype)

    def _erfinv(self, y):
        """Giles' approximation (or, deep in the tails, the asymptote of erfc), then Newton steps in
        float64: on erf(r) = |y| in the middle, on log(erfc(r)) = log(1 - |y|) for |y| >= 0.5, where
        1 - |y| is exact and the log makes the tail nearly linear."""
        xp = self.xp
        y64 = y.astype(np.float64)
        with np.errstate(all="ignore"):
            a = xp.abs(y64)
            q = 1.0 - a
            w = -xp.log(q * (1.0 + a))
            lo, hi = w - 2.5, xp.sqrt(w) - 3.0
            p_lo, p_hi = xp.zeros_like(y64), xp.zeros_like(y64)
            for c_lo, c_hi in zip(_GILES_LO, _GILES_HI):
                p_lo, p_hi = c_lo + p_lo * lo, c_hi + p_hi * hi
            r = xp.abs(xp.where(w < 5.0, p_lo, p_hi) * y64)
            deep = q < 1e-6  # erfc(r) ~ exp(-r^2) / (r sqrt(pi)): two fixed-point steps from sqrt(-log q)
            t = xp.sqrt(-xp.log(xp.where(deep, q, 0.5)))
            for _ in range(2):
                t = xp.sqrt(-xp.log(xp.where(deep, q, 0.5) * t * math.sqrt(math.pi)))
            r = xp.where(deep, t, r)
            tail = a >= 0.5
            for _ in range(4):
                g = 2.0 / math.sqrt(math.pi) * xp.exp(-r * r)
                c = self._erfc(r)
                step = xp.where(tail, (xp.log(q) - xp.log(c)) * c / g, (self._erf(r) - a) / g)  # d/dr log erfc = -g/c
                r = r - xp.where(xp.isfinite(step), step, 0.0)
            r = xp.copysign(r, y64)
            r = xp.where(a == 1.0, xp.copysign(np.inf, y64), r)
            r = xp.where(a > 1.0, np.nan, r)
        return r.astype(y.dtype)

    # ---- binary ops without a single ufunc --------------------------------------------------------------
    def _check_divisor(self, b, op: str):
        """torch raises on integer division by zero (on the CPU); a host check here, skipped inside a
        CUDA-graph capture (no host reads there)."""
        if self.capturing():
            return
        if bool(self.xp.any(self.xp.asarray(b) == 0)):
            raise IntegerDivisionByZero(f"{op}(): integer division by zero")

    def _binary_extra(self, op: str, a, b):
        xp = self.xp
        integer = _dtype_of(a, b).kind in "iub"
        if op == "div_trunc":
            if not integer:
                return xp.trunc(a / b)
            q = xp.floor_divide(a, b)
            return xp.where((xp.remainder(a, b) != 0) & ((a < 0) != (b < 0)), q + 1, q)
        if op in ("div_floor", "floor_divide", "remainder") and not integer:
            return self._floor_div_mod(a, b)[op == "remainder"]
        if op == "div_floor":
            return xp.floor_divide(a, b)
        if op == "xlogy":  # torch: nan where y is nan, else 0 where x == 0, else x * log(y)
            r = xp.where(a == 0, 0, a * xp.log(b))
            return xp.where(xp.isnan(b), b, r)
        if op in ("bitwise_left_shift", "bitwise_right_shift"):
            return self._shift(op == "bitwise_left_shift", a, b)
        if op == "pow":
            return self._int_pow(a, b)
        return getattr(xp, op)(a, b)  # hypot, logaddexp, fmod, copysign

    def _floor_div_mod(self, a, b):
        """(a // b, a % b) of floats as torch computes them, from fmod: a quotient that rounds up to an
        integer in a / b is not floored one too high (cupy's floor_divide floors a / b)."""
        xp = self.xp
        mod = xp.fmod(a, b)
        off = (mod != 0) & ((b < 0) != (mod < 0))  # fmod takes a's sign, the floor b's
        div = xp.where(off, (a - mod) / b - 1, (a - mod) / b)
        q = xp.floor(div)
        q = xp.where(div - q > 0.5, q + 1, q)
        q = xp.where(div == 0, xp.copysign(xp.zeros_like(div), a / b), q)
        return xp.where(b == 0, a / b, q), xp.where(off, mod + b, mod)

    def _shift(self, left: bool, a, b):
        """torch's shifts: a shift by a negative amount or by the bit width or more gives 0 (left) or the
        sign fill (right), where C leaves it undefined."""
        xp = self.xp
        a, b = xp.asarray(a), xp.asarray(b)
        bits = a.dtype.itemsize * 8
        bad = (b < 0) | (b >= bits)
        safe = xp.where(bad, 0, b).astype(a.dtype)
        if left:
            return xp.where(bad, a.dtype.type(0), xp.left_shift(a, safe))
        fill = xp.where(a < 0, a.dtype.type(-1) if a.dtype.kind == "i" else 0, a.dtype.type(0))
        return xp.where(bad, fill, xp.right_shift(a, safe))

    def _int_pow(self, a, b):
        """Integer powers with negative exponents, as torch: 1 for base 1, +-1 for base -1, else 0."""
        xp = self.xp
        a, b = xp.asarray(a), xp.asarray(b)
        neg = b < 0
        r = xp.power(a, xp.where(neg, 0, b).astype(_dtype_of(a, b)))
        odd = (b % 2) != 0
        special = xp.where(a == 1, 1, xp.where(a == -1, xp.where(odd, -1, 1), 0))
        return xp.where(neg, special, r)

    # ---- pointwise ops with parameters --------------------------------------------------------------------
    def pointwise(self, op: str, operands: tuple, params: tuple, out_dtype: D.DType):
        """op over `operands` (arrays or Python numbers, broadcast together) with float `params`."""
        cd = D.compute_dtype(out_dtype) if out_dtype is not D.bool_ else None
        ops = [self._c(v, cd) if cd is not None else self._c(v) for v in operands]
        if op == "elu" and params == (1.0, 1.0, 1.0) and self.xp is np and type(ops[0]) is np.ndarray \
                and ops[0].ndim and ops[0].dtype == out_dtype.np_dtype:
            out = self.empty(ops[0].shape, out_dtype)  # plain ELU in cache-sized chunks of the pooled output
            with np.errstate(all="ignore"):
                _chunked(_elu_into, ops[0], out)
            return out
        with np.errstate(all="ignore"):
            r = getattr(self, "_pw_" + op)(*ops, *params)
        return self._out(r, out_dtype)

    def _pw_leaky_relu(self, x, slope):
        return self.xp.where(x > 0, x, x * x.dtype.type(slope))

    def _pw_hardtanh(self, x, lo, hi):
        return self.xp.minimum(self.xp.maximum(x, x.dtype.type(lo)), x.dtype.type(hi))

    def _pw_elu(self, x, alpha, scale, input_scale):
        """torch's elu family: scale * (x if x > 0 else alpha * expm1(x * input_scale))."""
        t = x.dtype.type
        xp = self.xp
        if alpha == 1.0 and scale == 1.0 and input_scale == 1.0:  # plain ELU: the products by 1 are exact, skipped
            out = xp.asarray(xp.expm1(xp.minimum(x, t(0))))  # 0-d inputs give a scalar: an array again
            xp.copyto(out, x, where=x > 0)
            return out
        neg = t(alpha) * xp.expm1(xp.minimum(x, t(0)) * t(input_scale))
        return xp.where(x > 0, x * t(scale), neg * t(scale))

    def _pw_softplus(self, x, beta, threshold):
        t = x.dtype.type
        bx = x * t(beta)
        return self.xp.where(bx > t(threshold), x, self.xp.log1p(self.xp.exp(bx)) / t(beta))

    def _pw_hardswish(self, x):
        t = x.dtype.type
        return x * self.xp.minimum(self.xp.maximum(x + t(3), t(0)), t(6)) / t(6)

    def _pw_hardsigmoid(self, x):
        t = x.dtype.type
        return self.xp.minimum(self.xp.maximum(x + t(3), t(0)), t(6)) / t(6)

    def _pw_mish(self, x):
        return x * self.xp.tanh(self._pw_softplus(x, 1.0, 20.0))

    def _pw_softsign(self, x):
        return x / (1 + self.xp.abs(x))

    def _pw_logsigmoid(self, x):  # -softplus(-x), stable for both signs
        xp = self.xp
        return xp.minimum(x, x.dtype.type(0)) - xp.log1p(xp.exp(-xp.abs(x)))

    def _pw_tanhshrink(self, x):
        return x - self.xp.tanh(x)

    def _pw_hardshrink(self, x, lambd):
        return self.xp.where(self.xp.abs(x) > x.dtype.type(lambd), x, x.dtype.type(0))

    def _pw_softshrink(self, x, lambd):
        t = x.dtype.type
        return self.xp.where(x > t(lambd), x - t(lambd), self.xp.where(x < -t(lambd), x + t(lambd), t(0)))

    def _pw_threshold(self, x, threshold, value):
        return self.xp.where(x > x.dtype.type(threshold), x, x.dtype.type(value))

    def _pw_glu(self, a, b):
        return a / (1 + self.xp.exp(-b))

    def _pw_prelu(self, x, w):
        return self.xp.where(x > 0, x, w * x)

    def _pw_huber(self, x, y, delta):
        t = x.dtype.type
        d = self.xp.abs(x - y)
        return self.xp.where(d < t(delta), t(0.5) * d * d, t(delta) * (d - t(0.5) * t(delta)))

    def _pw_smooth_l1(self, x, y, beta):
        t = x.dtype.type
        d = self.xp.abs(x - y)
        if beta == 0:
            return d
        return self.xp.where(d < t(beta), t(0.5) * d * d / t(beta), d - t(0.5) * t(beta))

    def _pw_round(self, x, decimals):
        """torch's round(decimals=d): nearbyint(x * 10^d) / 10^d, or nearbyint(x / 10^-d) * 10^-d."""
        xp, t = self.xp, x.dtype.type
        if decimals >= 0:
            p = t(10.0 ** decimals)
            return xp.round(x * p) / p
        p = t(10.0 ** -decimals)
        return xp.round(x / p) * p

    def _pw_nan_to_num(self, x, nan, posinf, neginf):
        xp = self.xp
        if x.dtype.kind not in "fc":
            return x
        t = x.dtype.type  # the tensor layer passes the output dtype's limits as the defaults
        hi, lo = t(posinf), t(neginf)
        return xp.where(xp.isnan(x), t(nan), xp.where(x == np.inf, hi, xp.where(x == -np.inf, lo, x)))

    def _pw_lerp(self, start, end, weight):
        """torch: weight < 0.5 ? start + weight * (end - start) : end - (end - start) * (1 - weight)."""
        diff = end - start
        return self.xp.where(self.xp.abs(weight) < 0.5, start + weight * diff, end - diff * (1 - weight))

    def _pw_addcmul(self, x, a, b, value):
        return x + self._scalar(value, x) * a * b

    def _pw_addcdiv(self, x, a, b, value):
        return x + self._scalar(value, x) * (a / b)

    def _pw_isclose(self, a, b, rtol, atol, equal_nan):
        """torch.isclose: |a - b| <= atol + rtol * |b|, exact equality for infinities, nan by equal_nan."""
        xp = self.xp
        eq = a == b
        if _dtype_of(a, b).kind not in "fc":
            diff = xp.abs(a.astype(np.float64) - b.astype(np.float64)) if hasattr(a, "astype") else abs(a - b)
            return eq | (diff <= atol + rtol * xp.abs(xp.asarray(b, np.float64)))
        finite = xp.isfinite(a) & xp.isfinite(b)
        close = eq | (finite & (xp.abs(a - b) <= atol + rtol * xp.abs(b)))
        if equal_nan:
            close = close | (xp.isnan(a) & xp.isnan(b))
        return close

    @staticmethod
    def _scalar(v, like):
        """A Python number in the dtype of `like` (integers stay integers)."""
        return like.dtype.type(v) if hasattr(like, "dtype") else v


def _elu_into(x, out) -> None:
    """Plain ELU, x if x > 0 else expm1(x), as max(expm1(min(x, 0)), x): for x > 0 that is max(0, x) = x;
    for x <= 0, expm1(x) >= x (e^x - 1 >= x, and rounding to nearest keeps it >= the representable x), so
    it is expm1(x); nan propagates. Three fast passes (a masked copyto of x was 10x slower than expm1)."""
    np.minimum(x, x.dtype.type(0), out=out)
    np.expm1(out, out=out)
    np.maximum(out, x, out=out)
