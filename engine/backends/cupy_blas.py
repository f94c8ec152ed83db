"""cuBLAS for 16-bit matrix products (cupy's own matmul has no bfloat16 path and rounds fp16 per call
differently): cublasGemmEx / GemmStridedBatchedEx with float32 accumulation, rounded once into the
output, as torch's CUDA matmul does. cupy refuses cuBLAS inside a CUDA-graph capture, so these run
eagerly only (prefill, large batches); decode shapes go to the GEMV kernels of cupy_kernels.
"""
from __future__ import annotations

import math

import cupy
import numpy as np
from cupy_backends.cuda.libs import cublas

_CUDA_TYPE = {"float16": 2, "bfloat16": 14, "float32": 0}
_COMPUTE_32F = 68
_ONE, _ZERO = np.ones(1, np.float32), np.zeros(1, np.float32)
# their host addresses, read once (ndarray.ctypes.data builds a ctypes object: microseconds per call)
_ONE_PTR, _ZERO_PTR = _ONE.ctypes.data, _ZERO.ctypes.data
_TYPE_OF: dict = {}  # numpy dtype -> cudaDataType (dtype.name is slow on the launch path)


def _cuda_type(dtype) -> int:
    t = _TYPE_OF.get(dtype)
    if t is None:
        t = _TYPE_OF[dtype] = _CUDA_TYPE[dtype.name]
    return t


def _handle():
    h = cupy.cuda.device.get_cublas_handle()
    cublas.setPointerMode(h, cublas.CUBLAS_POINTER_MODE_HOST)
    return h


def linear(x2, W, out, bias=None):
    """out (T, N) = x2 (T, K) @ W (N, K).T (+ bias, in float32 before the one rounding when out is
    16-bit: the bias rides on cuBLAS's beta with C preloaded)."""
    T_, K = x2.shape
    N = W.shape[0]
    x2 = cupy.ascontiguousarray(x2)
    W = cupy.ascontiguousarray(W)
    beta = _ZERO_PTR
    if bias is not None:  # C = broadcast bias, D = A B + 1 * C, accumulated in float32, one rounding
        out[...] = bias
        beta = _ONE_PTR
    cublas.gemmEx(_handle(), cublas.CUBLAS_OP_T, cublas.CUBLAS_OP_N, N, T_, K, _ONE_PTR,
                  W.data.ptr, _cuda_type(W.dtype), K, x2.data.ptr, _cuda_type(x2.dtype), K,
                  beta, out.data.ptr, _cuda_type(out.dtype), N, _COMPUTE_32F, -1)
    return out


def _operand(x):
    """(op, leading dimension) of a matrix operand whose last two dims are row- or column-major; None
    when neither is unit-stride."""
    isz = x.itemsize
    if x.strides[-1] == isz and x.strides[-2] >= max(1, x.shape[-1]) * isz:
        return cublas.CUBLAS_OP_N, x.strides[-2] // isz
    if x.strides[-2] == isz and x.strides[-1] >= max(1, x.shape[-2]) * isz:
        return cublas.CUBLAS_OP_T, x.strides[-1] // isz
    return None


def _batch_stride(x, batch_shape):
    """The element stride between consecutive matrices when x's batch dims collapse into one (0 when
    x has no batch dims: one matrix for every batch); None when they do not collapse."""
    nb = x.ndim - 2
    if nb == 0:
        return 0
    if tuple(x.shape[:nb]) != tuple(batch_shape):
        return None
    step = x.strides[nb - 1]
    expect = step
    for d in range(nb - 1, -1, -1):
        if x.shape[d] != 1 and x.strides[d] != expect:
            return None
        expect *= x.shape[d]
    return step // x.itemsize


def matmul_ok(a, b) -> bool:
    return a.ndim >= 2 and b.ndim >= 2 and _operand(a) is not None and _operand(b) is not None


def matmul(a, b, out):
    """out (..., M, N) = a (..., M, K) @ b (..., K, N) with float32 accumulation; batch dims equal (or b
    one matrix) and collapsible. Returns None when the operands do not fit (the caller falls back)."""
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    batch_shape = out.shape[:-2]
    batch = math.prod(batch_shape)
    sa, sb = _batch_stride(a, batch_shape), _batch_stride(b, batch_shape)
    oa, ob = _operand(a), _operand(b)
    if sa is None or sb is None or oa is None or ob is None or (a.ndim == 2 and batch > 1):
        return None
    dt = _cuda_type(a.dtype)
    # row-major C = A B is column-major C^T = B^T A^T: cuBLAS's A is b, its B is a
    cublas.gemmStridedBatchedEx(_handle(), ob[0], oa[0], N, M, K, _ONE_PTR, b.data.ptr, dt, ob[1], sb,
                                a.data.ptr, dt, oa[1], sa, _ZERO_PTR, out.data.ptr,
                                _cuda_type(out.dtype), N, M * N, batch, _COMPUTE_32F, -1)
    return out
