"""One-launch elementwise ops for 16-bit floats on CUDA (cupy ElementwiseKernel).

The reference path (numpy backend code over cupy arrays) casts each 16-bit operand to float32, runs
the op and casts back: three launches and two temporaries per op. Here the same float32 arithmetic
runs in one kernel that reads the 16-bit values and rounds once into the output, so results are the
same bit for bit (tests/test_ops*.py run every row on CUDA) at a third of the launches.
"""
from __future__ import annotations

import functools

import cupy
import ml_dtypes
import numpy as np

# the numpy backend's formulas (engine/backends/numpy_backend.py _unary), in float32
UNARY = {
    "neg": "-x", "abs": "fabsf(x)", "exp": "expf(x)", "log": "logf(x)", "sqrt": "sqrtf(x)",
    "rsqrt": "1.0f / sqrtf(x)", "sin": "sinf(x)", "cos": "cosf(x)", "tanh": "tanhf(x)",
    "sigmoid": "1.0f / (1.0f + expf(-x))", "silu": "x / (1.0f + expf(-x))", "reciprocal": "1.0f / x",
    "square": "x * x", "relu": "(x > 0.0f ? x : (x != x ? x : 0.0f))",
    "gelu": "__fmul_rn(__fmul_rn(0.5f, x), __fadd_rn(1.0f, erff(__fdiv_rn(x, 1.4142135623730951f))))",
    "gelu_tanh": "__fmul_rn(__fmul_rn(0.5f, x), __fadd_rn(1.0f, tanhf(__fmul_rn(0.7978845608028654f, "
                 "__fadd_rn(x, __fmul_rn(__fmul_rn(__fmul_rn(0.044715f, x), x), x))))))",
}
BINARY = {"add": "a + b", "sub": "a - b", "mul": "a * b", "div": "a / b"}
COMPARE = {"eq": "a == b", "ne": "a != b", "lt": "a < b", "le": "a <= b", "gt": "a > b", "ge": "a >= b"}
_16 = {np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)}  # dtype objects: dtype.name is slow on the hot path
_OK = _16 | {np.dtype(np.float32)}


@functools.lru_cache(maxsize=None)
def _unary_kernel(op: str):
    # -fmad=false keeps float32 ops from contracting into FMAs the reference computes in two steps
    return cupy.ElementwiseKernel("X x0", "Y y", f"float x = (float)x0; y = (Y)({UNARY[op]});",
                                  f"engine_unary_{op}", options=("-fmad=false",))


@functools.lru_cache(maxsize=None)
def _binary_kernel(op: str, a_scalar: bool, b_scalar: bool):
    expr = BINARY.get(op) or COMPARE[op]
    params = ", ".join(("float32 " if sc else f"{t} ") + n for sc, t, n in ((a_scalar, "A", "a0"), (b_scalar, "B", "b0")))
    return cupy.ElementwiseKernel(params, "Y y", f"float a = (float)a0; float b = (float)b0; y = (Y)({expr});",
                                  f"engine_binary_{op}", options=("-fmad=false",))


def unary(op: str, x, out):
    """out = op(x) computed in float32 from 16-bit x; False when this op has no kernel here."""
    if op not in UNARY or not (isinstance(x, cupy.ndarray) and x.dtype in _16):
        return False
    _unary_kernel(op)(x, out)
    return True


def binary(op: str, a, b, out):
    """out = a op b in float32 (16-bit array operands; Python scalars as float32); False otherwise."""
    if op not in BINARY and op not in COMPARE:
        return False
    sa, sb = not isinstance(a, cupy.ndarray), not isinstance(b, cupy.ndarray)
    da, db = (None if sa else a.dtype), (None if sb else b.dtype)  # one of them 16-bit, both float
    if (sa and sb) or not (da in _16 or db in _16) or not (sa or da in _OK) or not (sb or db in _OK):
        return False
    _binary_kernel(op, sa, sb)(np.float32(a) if sa else a, np.float32(b) if sb else b, out)
    return True
