"""cuBLASLt through NVIDIA's nvmath-python for the few-row products of batch decode (LT_CONFIG rows
of 16-bit x) and, inside a capture, every 16-bit product (linear's, and matmul's batched ones: the
attention a captured prefill or forward runs where the flash kernel does not take the head size). cupy refuses its own cuBLAS inside a CUDA-graph capture; a planned nvmath Matmul launches
inside one and replays correctly (measured on the H200: DESIGN.md's anchors). Optional: without
nvmath-python (`pip install nvmath-python`), `available()` is False and the GEMV kernels of
cupy_kernels serve every row count.

One planned Matmul per problem shape (rows, N, K, dtype, strides); each call points it at its operands
(reset_operands) and launches on the current stream. Planning and the first launch (which takes its
workspace from cupy's allocator, the engine's pool) happen in the eager warm-up steps before a capture,
so a capture records launches only. out = x2 @ W.T in float32 accumulation, rounded once to out's dtype.
"""
from __future__ import annotations

import os

import cupy

from engine.backends import cupy_kernels as K

try:  # an optional dependency: its absence only means the GEMV kernels serve every row count
    from nvmath.linalg import advanced as _lt
except Exception as e:  # noqa: BLE001  (ImportError, or a CUDA library it could not load)
    _lt, _WHY = None, f"nvmath-python is not usable here ({type(e).__name__}: {e}); pip install nvmath-python"
else:
    _WHY = ""

LT_CONFIG = {"min_rows": 4, "max_rows": 16, "enabled": True}  # rows served by cuBLASLt (bench/kernel_profile.py --rows)
# inside a capture (and the eager rehearsal before it, which plans the products) every row count from min_rows:
# cupy's cuBLAS is refused there, and cuBLASLt's tensor cores beat the plain tiled kernel (a captured forward);
# ENGINE_LT_IN_CAPTURE=0 leaves those rows to the tiled kernel (for an A/B run)
LT_CONFIG["in_capture"] = os.environ.get("ENGINE_LT_IN_CAPTURE", "1").strip() not in ("0", "false", "off", "no")
_PLANS: dict = {}  # problem shape -> planned Matmul


def available() -> bool:
    return _lt is not None and LT_CONFIG["enabled"]


def why_not() -> str:
    return _WHY or ("cuBLASLt disabled (cupy_lt.LT_CONFIG['enabled'])" if not LT_CONFIG["enabled"] else "")


def takes(x2, W, capturing: bool = False) -> bool:
    """Whether linear() serves x2 (m, K) @ W (N, K).T: nvmath present, 16-bit, m in the configured rows
    (any m from min_rows when capturing and LT_CONFIG["in_capture"]), row-major unit-stride operands."""
    m = x2.shape[0] if x2.ndim == 2 else 0
    rows = LT_CONFIG["min_rows"] <= m and (m <= LT_CONFIG["max_rows"] or (capturing and LT_CONFIG["in_capture"]))
    return (available() and rows and W.ndim == 2 and x2.dtype == W.dtype and W.dtype.itemsize == 2
            and x2.shape[1] == W.shape[1] and x2.strides[1] == x2.itemsize and W.flags.c_contiguous and W.shape[0] > 0)


def linear(x2, W, out, bias=None):
    """out (m, N) = x2 (m, K) @ W.T (+ bias (N,), added in float32 before the one rounding: out is
    preloaded with it and cuBLASLt's beta is 1). Check takes() first; out row-major (m, N)."""
    key = (x2.dtype.str, x2.shape, x2.strides, W.shape, out.strides, bias is not None)
    if bias is not None and not K.bias_fill(out, bias, -1):
        out[...] = bias
    stream = cupy.cuda.get_current_stream()
    mm = _PLANS.get(key)
    if mm is None:
        if stream.is_capturing():
            raise RuntimeError(f"cuBLASLt: the product {x2.shape} @ {W.shape[::-1]} was not planned before the "
                               "capture (run the step eagerly first)")
        mm = _lt.Matmul(x2, W.T, c=out, beta=1.0 if bias is not None else 0.0, options={"inplace": True}, stream=stream)
        mm.plan(stream=stream)
        _PLANS[key] = mm
    else:
        mm.reset_operands(a=x2, b=W.T, c=out, stream=stream)
    mm.execute(stream=stream)
    return out


def matmul(a3, b3, out):
    """out (batch, M, N) = a3 (batch, M, K) @ b3 (batch, K, N), 16-bit, float32 accumulation, one rounding;
    None where cuBLASLt does not serve it (no nvmath, another dtype, a layout nvmath refuses, or a product
    first met inside a capture): then the caller's own kernel. Planned on first use, as linear()."""
    if not (available() and a3.dtype == b3.dtype == out.dtype and a3.dtype.itemsize == 2 and out.flags.c_contiguous):
        return None
    key = ("matmul", a3.dtype.str, a3.shape, a3.strides, b3.shape, b3.strides)
    stream = cupy.cuda.get_current_stream()
    if key not in _PLANS:
        if stream.is_capturing():
            return None
        try:
            mm = _lt.Matmul(a3, b3, c=out, beta=0.0, options={"inplace": True}, stream=stream)
            mm.plan(stream=stream)
        except Exception:  # noqa: BLE001  (a layout or shape nvmath does not take: the caller's kernel, always)
            mm = None
        _PLANS[key] = mm
    mm = _PLANS[key]
    if mm is None:
        return None
    mm.reset_operands(a=a3, b=b3, c=out, stream=stream)
    mm.execute(stream=stream)
    return out
