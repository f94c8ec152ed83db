"""Prefill kernels for the LLaMA graph decoder: row-wise fused ops around cuBLAS GEMMs.

Prefill is not captured, so it may call cuBLAS (cublasGemmEx / GemmStridedBatchedEx with float32
accumulation; cupy's own matmul has no bfloat16 path). The elementwise work is fused into one launch
per step (rmsnorm rows, rotary + cache write, causal softmax, SiLU gate) so a 32-layer prefill costs
about a dozen launches per layer. Each kernel has a parity test in tests/test_cuda_kernels.py.
"""
from __future__ import annotations

import functools

import cupy
import numpy as np
from cupy_backends.cuda.libs import cublas

from engine.backends.cupy_kernels import PRELUDE, type_name

_SRC = PRELUDE + r"""
__device__ float block_sum(float v, float *red) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = 0.f;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) t += red[w];
    return t;
}
__device__ float block_max(float v, float *red) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = -INFINITY;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) t = fmaxf(t, red[w]);
    return t;
}

// y[t] = round(round(x[t] * rsqrt(mean(x[t]^2) + eps)) * w), HF LlamaRMSNorm; one block per row.
template <typename T>
__global__ void rms_rows(const T *__restrict__ x, const T *__restrict__ w, T *__restrict__ y, int H, float eps) {
    __shared__ float red[32];
    const T *xr = x + (size_t)blockIdx.x * H;
    float ss = 0.f;
    for (int i = threadIdx.x; i < H; i += blockDim.x) { float v = to_f<T>(xr[i]); ss += v * v; }
    const float scale = rsqrtf(block_sum(ss, red) / H + eps);
    for (int i = threadIdx.x; i < H; i += blockDim.x)
        y[(size_t)blockIdx.x * H + i] = from_f<T>(to_f<T>(w[i]) * to_f<T>(from_f<T>(to_f<T>(xr[i]) * scale)));
}

// qkv (T, (Hq + 2Hkv) * D) at positions p0 + t: q rotated into q_out (Hq, T, D); k rotated and v
// written to the caches (Hkv, max_seq, D). Thread per (t, head, i < D/2) for q/k, (t, h, d) for v.
template <typename T>
__global__ void rope_rows(const T *__restrict__ qkv, const float *__restrict__ cos_t, const float *__restrict__ sin_t,
                          T *__restrict__ q_out, T *__restrict__ kc, T *__restrict__ vc, int Tn, int p0, int Hq,
                          int Hkv, int D, int max_seq) {
    const int half = D >> 1, width = (Hq + 2 * Hkv) * D;
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t n_rot = (size_t)Tn * (Hq + Hkv) * half;
    if (idx < n_rot) {
        const int i = idx % half, h = (idx / half) % (Hq + Hkv), t = idx / ((size_t)half * (Hq + Hkv));
        const int p = p0 + t;
        const float c = cos_t[(size_t)p * half + i], s = sin_t[(size_t)p * half + i];
        const T *src = qkv + (size_t)t * width + (size_t)h * D;
        const float a = to_f<T>(src[i]), b = to_f<T>(src[i + half]);
        const T ra = from_f<T>(a * c - b * s), rb = from_f<T>(b * c + a * s);
        T *dst = h < Hq ? q_out + ((size_t)h * Tn + t) * D : kc + ((size_t)(h - Hq) * max_seq + p) * D;
        dst[i] = ra;
        dst[i + half] = rb;
    } else if (idx < n_rot + (size_t)Tn * Hkv * D) {
        const size_t j = idx - n_rot;
        const int d = j % D, h = (j / D) % Hkv, t = j / ((size_t)D * Hkv);
        vc[((size_t)h * max_seq + p0 + t) * D + d] = qkv[(size_t)t * width + (size_t)(Hq + Hkv) * D + (size_t)h * D + d];
    }
}

// P = softmax(S * scale) over causal (and sliding-window) positions, rounded to T. S float
// (rows, Sk); row r is query position p0 + (r % Tq) against keys 0..Sk-1. One block per row.
template <typename T>
__global__ void softmax_causal(const float *__restrict__ S, T *__restrict__ P, int Tq, int Sk, int p0, int window,
                               float scale) {
    __shared__ float red[32];
    const int r = blockIdx.x, q = p0 + r % Tq;
    const int lo = window > 0 ? max(0, q - window + 1) : 0;
    const float *sr = S + (size_t)r * Sk;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < Sk; j += blockDim.x)
        if (j >= lo && j <= q) m = fmaxf(m, sr[j] * scale);
    m = block_max(m, red);
    float l = 0.f;
    for (int j = threadIdx.x; j < Sk; j += blockDim.x)
        if (j >= lo && j <= q) l += __expf(sr[j] * scale - m);
    l = block_sum(l, red);
    for (int j = threadIdx.x; j < Sk; j += blockDim.x)
        P[(size_t)r * Sk + j] = from_f<T>(j >= lo && j <= q ? __expf(sr[j] * scale - m) / l : 0.f);
}

// act (T, I) = round(silu(gate)) * up from interleaved gate_up rows (T, 2I), HF rounding.
template <typename T>
__global__ void glu_rows(const T *__restrict__ gu, T *__restrict__ act, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float g = to_f<T>(gu[2 * i]);
        act[i] = from_f<T>(to_f<T>(from_f<T>(g / (1.f + __expf(-g)))) * to_f<T>(gu[2 * i + 1]));
    }
}
"""

_CUDA_TYPE = {"float16": 2, "bfloat16": 14, "float32": 0}
_COMPUTE_32F = 68


@functools.lru_cache(maxsize=None)
def _module():
    names = [f"{k}<{t}>" for t in ("__half", "__nv_bfloat16") for k in ("rms_rows", "rope_rows", "softmax_causal",
                                                                          "glu_rows")]
    return cupy.RawModule(code=_SRC, options=("-std=c++17",), name_expressions=names)


def _k(name, dtype):
    return _module().get_function(f"{name}<{type_name(dtype)}>")


def rms_rows(x, w, eps):
    T_, H = x.shape
    y = cupy.empty_like(x)
    _k("rms_rows", x.dtype)((T_,), (256,), (x, w, y, cupy.int32(H), cupy.float32(eps)))
    return y


def rope_rows(qkv, cos_t, sin_t, k_cache, v_cache, p0, n_heads, n_kv, head_dim):
    """Returns q rotated, (Hq, T, D); writes k (rotated) and v into the caches at p0..p0+T-1."""
    T_ = qkv.shape[0]
    q = cupy.empty((n_heads, T_, head_dim), qkv.dtype)
    n = T_ * (n_heads + n_kv) * (head_dim // 2) + T_ * n_kv * head_dim
    _k("rope_rows", qkv.dtype)(((n + 255) // 256,), (256,), (
        qkv, cos_t, sin_t, q, k_cache, v_cache, cupy.int32(T_), cupy.int32(p0), cupy.int32(n_heads),
        cupy.int32(n_kv), cupy.int32(head_dim), cupy.int32(k_cache.shape[1])))
    return q


def softmax_causal(S, Tq, p0, window, scale, dtype):
    rows, Sk = S.shape[-2] * int(np.prod(S.shape[:-2])), S.shape[-1]
    P = cupy.empty(S.shape, dtype)
    _k("softmax_causal", dtype)((rows,), (128,), (S, P, cupy.int32(Tq), cupy.int32(Sk), cupy.int32(p0),
                                                   cupy.int32(window), cupy.float32(scale)))
    return P


def glu_rows(gu):
    T_, two_i = gu.shape
    act = cupy.empty((T_, two_i // 2), gu.dtype)
    n = act.size
    _k("glu_rows", gu.dtype)(((n + 255) // 256,), (256,), (gu, act, cupy.uint64(n)))
    return act


def _handle():
    h = cupy.cuda.device.get_cublas_handle()
    cublas.setPointerMode(h, cublas.CUBLAS_POINTER_MODE_HOST)
    return h


_ONE, _ZERO = np.ones(1, np.float32), np.zeros(1, np.float32)


def linear(x, W, out=None, accumulate=False, out_dtype=None):
    """out (T, N) = x (T, K) @ W (N, K).T, or out += that when accumulate (the residual add rides on
    cuBLAS's beta = 1). float32 accumulation."""
    T_, K = x.shape
    N = W.shape[0]
    if W.shape[1] != K:
        raise ValueError(f"linear: x {x.shape} and W {W.shape} do not fit")
    x = cupy.ascontiguousarray(x)
    if out is None:
        out = cupy.empty((T_, N), out_dtype or x.dtype)
    beta = _ONE if accumulate else _ZERO
    cublas.gemmEx(_handle(), cublas.CUBLAS_OP_T, cublas.CUBLAS_OP_N, N, T_, K, _ONE.ctypes.data,
                  W.data.ptr, _CUDA_TYPE[W.dtype.name], K, x.data.ptr, _CUDA_TYPE[x.dtype.name], K,
                  beta.ctypes.data, out.data.ptr, _CUDA_TYPE[out.dtype.name], N, _COMPUTE_32F, -1)
    return out


def attention(q, k_cache, v_cache, p0, window, scale):
    """Causal attention of T new queries against cache positions 0..p0+T-1.
    q (Hq, T, D); caches (Hkv, max_seq, D). Returns (T, Hq * D) in q's dtype."""
    Hq, T_, D = q.shape
    Hkv, max_seq, _ = k_cache.shape
    rep, Sk = Hq // Hkv, p0 + T_
    dt = _CUDA_TYPE[q.dtype.name]
    # scores (Hkv, rep*T, Sk) = q grouped by kv head @ k^T, batched over kv heads
    S = cupy.empty((Hkv, rep * T_, Sk), cupy.float32)
    cublas.gemmStridedBatchedEx(_handle(), cublas.CUBLAS_OP_T, cublas.CUBLAS_OP_N, Sk, rep * T_, D, _ONE.ctypes.data,
                                k_cache.data.ptr, dt, D, max_seq * D, q.data.ptr, dt, D, rep * T_ * D,
                                _ZERO.ctypes.data, S.data.ptr, 0, Sk, rep * T_ * Sk, Hkv, _COMPUTE_32F, -1)
    P = softmax_causal(S, T_, p0, window, scale, q.dtype)
    O = cupy.empty((Hkv, rep * T_, D), q.dtype)  # = (Hq, T, D)
    cublas.gemmStridedBatchedEx(_handle(), cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_N, D, rep * T_, Sk, _ONE.ctypes.data,
                                v_cache.data.ptr, dt, D, max_seq * D, P.data.ptr, dt, Sk, rep * T_ * Sk,
                                _ZERO.ctypes.data, O.data.ptr, dt, D, rep * T_ * D, Hkv, _COMPUTE_32F, -1)
    return cupy.ascontiguousarray(O.reshape(Hq, T_, D).transpose(1, 0, 2)).reshape(T_, Hq * D)
