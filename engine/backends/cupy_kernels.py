"""Fused CUDA kernels for the decode step (cupy RawModule), one function each.

Every kernel here has a parity test against the unfused composition of engine ops
(tests/test_cuda_kernels.py). None calls cuBLAS or syncs with the host, so a decode step built from
them can be captured as one CUDA graph; positions and tokens are read from device memory.

Layouts: weights row-major [N, K] (torch's Linear layout), activations of batch 1 as flat vectors,
KV cache [Hkv, max_seq, D] per layer, rotary tables float32 [max_seq, D/2].
"""
from __future__ import annotations

import functools

import cupy

PRELUDE = r"""

#include <cuda_fp16.h>
#include <cuda_bf16.h>

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
"""

_SRC = PRELUDE + r"""
__device__ __forceinline__ float warp_sum(float v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}

// 8 elements of T packed in 16 bytes, unpacked to float
template <typename T>
__device__ __forceinline__ void unpack8(const uint4 &u, float *f) {
    const T *h = reinterpret_cast<const T *>(&u);
    #pragma unroll
    for (int i = 0; i < 8; i++) f[i] = to_f<T>(h[i]);
}

__device__ __forceinline__ uint4 ld_stream(const uint4 *p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}

// y[n] = sum_k W[n, k] * xin[k].  MODE 0: xin = x.  MODE 1: xin = rmsnorm(x) * nw.
// EPI 0: y (T) = acc (+ res).  EPI 1: y (float) = acc.  EPI 2 (GLU): W's rows interleave gate and up
// (row 2j = gate_j, row 2j+1 = up_j) and y[j] = silu(gate_j) * up_j, rounded as HF does step by step.
// A block of 8 warps = (8 / S) row groups x S slices of K; each warp streams 16-byte chunks of its R
// rows over its K slice, so short-N GEMVs still put enough loads in flight to fill the chip.
template <typename T, int R, int S, int MODE, int EPI>
__global__ void __launch_bounds__(256) gemv(const T *__restrict__ W, const T *__restrict__ x,
        const T *__restrict__ nw, const T *__restrict__ res, void *__restrict__ y, int N, int K, float eps) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *xs = reinterpret_cast<T *>(smem_raw);
    __shared__ float red[8 * R];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    float scale = 1.f;
    const int K8 = K >> 3;
    const uint4 *x4 = reinterpret_cast<const uint4 *>(x);
    if (MODE == 1) {
        float ss = 0.f;
        for (int k = tid; k < K8; k += blockDim.x) {
            float f[8];
            unpack8<T>(x4[k], f);
            #pragma unroll
            for (int i = 0; i < 8; i++) ss += f[i] * f[i];
        }
        ss = warp_sum(ss);
        if (lane == 0) red[warp] = ss;
        __syncthreads();
        float tot = 0.f;
        #pragma unroll
        for (int w = 0; w < 8; w++) tot += red[w];
        scale = rsqrtf(tot / K + eps);
        __syncthreads();
    }
    uint4 *xs4 = reinterpret_cast<uint4 *>(xs);
    for (int k = tid; k < K8; k += blockDim.x) {
        if (MODE == 0) xs4[k] = x4[k];
        else {
            float f[8], g[8];
            unpack8<T>(x4[k], f);
            unpack8<T>(reinterpret_cast<const uint4 *>(nw)[k], g);
            T o[8];
            #pragma unroll
            for (int i = 0; i < 8; i++) o[i] = from_f<T>(to_f<T>(from_f<T>(f[i] * scale)) * g[i]);
            xs4[k] = *reinterpret_cast<uint4 *>(o);
        }
    }
    __syncthreads();
    const int group = warp / S, slice = warp % S;
    const int row0 = (blockIdx.x * (8 / S) + group) * R;
    const int per = (K8 + S - 1) / S, k_lo = slice * per, k_hi = min(K8, k_lo + per);
    const uint4 *xv = reinterpret_cast<const uint4 *>(xs);
    float acc[R];
    const uint4 *wv[R];
    #pragma unroll
    for (int r = 0; r < R; r++) {
        acc[r] = 0.f;
        int row = min(row0 + r, N - 1);
        wv[r] = reinterpret_cast<const uint4 *>(W + (size_t)row * K);
    }
    #pragma unroll 4
    for (int k = k_lo + lane; k < k_hi; k += 32) {
        float xf[8];
        unpack8<T>(xv[k], xf);
        uint4 wr[R];
        #pragma unroll
        for (int r = 0; r < R; r++) wr[r] = ld_stream(wv[r] + k);
        #pragma unroll
        for (int r = 0; r < R; r++) {
            float wf[8];
            unpack8<T>(wr[r], wf);
            #pragma unroll
            for (int i = 0; i < 8; i++) acc[r] = fmaf(wf[i], xf[i], acc[r]);
        }
    }
    #pragma unroll
    for (int r = 0; r < R; r++) {
        float v = warp_sum(acc[r]);
        if (lane == 0) red[warp * R + r] = v;
    }
    __syncthreads();
    if (slice == 0 && lane < R) {
        const int r = lane, row = row0 + r;
        float v = 0.f;
        #pragma unroll
        for (int j = 0; j < S; j++) v += red[(warp + j) * R + r];
        if (EPI == 2) {  // lane r even holds gate_j, lane r + 1 holds up_j
            const float up = __shfl_down_sync((1u << R) - 1, v, 1);
            if ((r & 1) == 0 && row < N) {
                const float g = to_f<T>(from_f<T>(v));
                const float act = to_f<T>(from_f<T>(g / (1.f + __expf(-g))));
                reinterpret_cast<T *>(y)[row >> 1] = from_f<T>(act * to_f<T>(from_f<T>(up)));
            }
        } else if (row < N) {
            if (EPI == 1) reinterpret_cast<float *>(y)[row] = v;
            else {
                if (res != nullptr) v = to_f<T>(res[row]) + to_f<T>(from_f<T>(v));
                reinterpret_cast<T *>(y)[row] = from_f<T>(v);
            }
        }
    }
}

// Rotary embedding (HF rotate_half layout) on q and k of a fused qkv vector; writes q_out and the
// rotated k and the plain v into the caches at the position read from *pos.
template <typename T>
__global__ void rope_kv(const T *__restrict__ qkv, const int *__restrict__ pos, const float *__restrict__ cos_t,
                        const float *__restrict__ sin_t, T *__restrict__ q_out, T *__restrict__ kc, T *__restrict__ vc,
                        int Hq, int Hkv, int D, int max_seq) {
    const int half = D >> 1;
    const int p = *pos;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;  // over (Hq + Hkv) * half, then Hkv * D for v
    const int n_rot = (Hq + Hkv) * half;
    if (idx < n_rot) {
        int h = idx / half, i = idx % half;
        float c = cos_t[(size_t)p * half + i], s = sin_t[(size_t)p * half + i];
        const T *src = qkv + (size_t)h * D;
        float a = to_f<T>(src[i]), b = to_f<T>(src[i + half]);
        T ra = from_f<T>(a * c - b * s), rb = from_f<T>(b * c + a * s);
        if (h < Hq) { q_out[(size_t)h * D + i] = ra; q_out[(size_t)h * D + i + half] = rb; }
        else {
            size_t base = ((size_t)(h - Hq) * max_seq + p) * D;
            kc[base + i] = ra; kc[base + i + half] = rb;
        }
    } else if (idx < n_rot + Hkv * D) {
        int j = idx - n_rot, h = j / D, d = j % D;
        vc[((size_t)h * max_seq + p) * D + d] = qkv[(size_t)(Hq + Hkv) * D + j];
    }
}

// Single-token attention over the cache, split over chunks of positions (flash-decoding).
// grid (Hq, n_chunks), block 4 warps, chunk = 128 positions. Scores: lane i of warp w owns position
// start + 32w + i and reads its whole key row (16-byte loads), so 32 dot products run at once.
// Values: lanes split the head dim (PER = D/32 each) and walk the warp's 32 positions with the
// probabilities broadcast by shuffles. Writes per-chunk (m, l, acc[D]).
template <typename T, int PER>
__global__ void __launch_bounds__(128) attn_partial(const T *__restrict__ q, const T *__restrict__ kc,
        const T *__restrict__ vc, const int *__restrict__ pos, float *__restrict__ part, int Hq, int Hkv,
        int max_seq, int window, float scale) {
    constexpr int D = PER * 32, CHUNK = 128;
    const int h = blockIdx.x, c = blockIdx.y, n_chunks = gridDim.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int p = *pos;
    const int lo = window > 0 ? max(0, p - window + 1) : 0;
    if (c * CHUNK > p || (c + 1) * CHUNK <= lo) return;  // chunk outside the window: combine skips it
    float *out = part + ((size_t)h * n_chunks + c) * (D + 2);
    __shared__ float qs[D];
    __shared__ float sm[4], sl[4], sacc[4][D];
    for (int d = threadIdx.x; d < D; d += blockDim.x) qs[d] = to_f<T>(q[(size_t)h * D + d]) * scale;
    __syncthreads();
    const int kvh = h / (Hq / Hkv);
    const T *kb = kc + (size_t)kvh * max_seq * D, *vb = vc + (size_t)kvh * max_seq * D;
    const int base = c * CHUNK + warp * 32, t = base + lane;
    float s = -INFINITY;
    if (t >= lo && t <= p) {
        const uint4 *kr = reinterpret_cast<const uint4 *>(kb + (size_t)t * D);
        float dot = 0.f;
        #pragma unroll
        for (int j = 0; j < D / 8; j++) {
            float kf[8];
            unpack8<T>(__ldg(kr + j), kf);
            #pragma unroll
            for (int i = 0; i < 8; i++) dot = fmaf(qs[j * 8 + i], kf[i], dot);
        }
        s = dot;
    }
    const float m = warp_max(s);
    const float e = m == -INFINITY ? 0.f : __expf(s - m);
    const float l = warp_sum(e);
    float acc[PER];
    #pragma unroll
    for (int i = 0; i < PER; i++) acc[i] = 0.f;
    const int n_here = min(32, p + 1 - base);
    #pragma unroll 8
    for (int j = 0; j < 32; j++) {
        const float pj = __shfl_sync(0xffffffff, e, j);
        if (j < n_here && pj != 0.f) {
            const T *vr = vb + (size_t)(base + j) * D + lane * PER;
            #pragma unroll
            for (int i = 0; i < PER; i++) acc[i] = fmaf(pj, to_f<T>(vr[i]), acc[i]);
        }
    }
    if (lane == 0) { sm[warp] = m; sl[warp] = l; }
    #pragma unroll
    for (int i = 0; i < PER; i++) sacc[warp][lane * PER + i] = acc[i];
    __syncthreads();
    if (warp == 0) {
        float M = fmaxf(fmaxf(sm[0], sm[1]), fmaxf(sm[2], sm[3]));
        float wgt[4], L = 0.f;
        #pragma unroll
        for (int w = 0; w < 4; w++) { wgt[w] = sm[w] == -INFINITY ? 0.f : __expf(sm[w] - M); L += sl[w] * wgt[w]; }
        #pragma unroll
        for (int i = 0; i < PER; i++) {
            const int d = lane * PER + i;
            out[2 + d] = sacc[0][d] * wgt[0] + sacc[1][d] * wgt[1] + sacc[2][d] * wgt[2] + sacc[3][d] * wgt[3];
        }
        if (lane == 0) { out[0] = M; out[1] = L; }
    }
}

// Combine the chunk partials of one head: grid Hq, block D threads. Only the chunks that hold
// positions in [lo, p] are read; their maxima are reduced in parallel.
template <typename T>
__global__ void attn_combine(const float *__restrict__ part, const int *__restrict__ pos, T *__restrict__ o,
                             int D, int n_chunks, int window) {
    constexpr int CHUNK = 128;
    __shared__ float wts[1024];
    __shared__ float red[8];
    const int h = blockIdx.x, d = threadIdx.x, lane = d & 31, warp = d >> 5;
    const int p = *pos;
    const int lo = window > 0 ? max(0, p - window + 1) : 0;
    const int c0 = lo / CHUNK, c1 = min(p / CHUNK, n_chunks - 1), n = c1 - c0 + 1;
    const float *ph = part + (size_t)h * n_chunks * (D + 2);
    float m = -INFINITY;
    for (int i = d; i < n; i += blockDim.x) m = fmaxf(m, ph[(size_t)(c0 + i) * (D + 2)]);
    m = warp_max(m);
    if (lane == 0) red[warp] = m;
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) M = fmaxf(M, red[w]);
    for (int i = d; i < n; i += blockDim.x) {
        const float mc = ph[(size_t)(c0 + i) * (D + 2)];
        wts[i] = mc == -INFINITY ? 0.f : __expf(mc - M);
    }
    __syncthreads();
    float L = 0.f, a = 0.f;
    #pragma unroll 4
    for (int i = 0; i < n; i++) {
        const float *pc = ph + (size_t)(c0 + i) * (D + 2);
        L += pc[1] * wts[i];
        a += pc[2 + d] * wts[i];
    }
    o[(size_t)h * D + d] = from_f<T>(a / L);
}

// x = E[token]: one block of threads over the hidden size.
template <typename T>
__global__ void embed(const T *__restrict__ E, const int *__restrict__ tok, T *__restrict__ x, int H) {
    const size_t row = (size_t)tok[0] * H;
    for (int i = threadIdx.x + blockIdx.x * blockDim.x; i < H; i += blockDim.x * gridDim.x) x[i] = E[row + i];
}

// Greedy sampling on the device: tok = argmax(logits) (first index on ties, like torch), then
// out_tokens[*step] = tok, *step += 1, *pos += 1.  One block of 1024 threads.
__global__ void argmax_advance(const float *__restrict__ logits, int V, int *__restrict__ tok,
                               int *__restrict__ out_tokens, int *__restrict__ step, int *__restrict__ pos) {
    __shared__ float bv[32];
    __shared__ int bi[32];
    float best = -INFINITY;
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float v = logits[i];
        if (v > best || (v == best && i < idx)) { best = v; idx = i; }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffff, best, o);
        int oi = __shfl_xor_sync(0xffffffff, idx, o);
        if (ov > best || (ov == best && oi < idx)) { best = ov; idx = oi; }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { bv[warp] = best; bi[warp] = idx; }
    __syncthreads();
    if (warp == 0) {
        best = lane < (blockDim.x >> 5) ? bv[lane] : -INFINITY;
        idx = lane < (blockDim.x >> 5) ? bi[lane] : 0x7fffffff;
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffff, best, o);
            int oi = __shfl_xor_sync(0xffffffff, idx, o);
            if (ov > best || (ov == best && oi < idx)) { best = ov; idx = oi; }
        }
        if (lane == 0) {
            tok[0] = idx;
            out_tokens[*step] = idx;
            *step += 1;
            *pos += 1;
        }
    }
}
"""

_TYPES = {"float16": "__half", "bfloat16": "__nv_bfloat16"}
# (rows per warp, warps splitting K) variants compiled; the choice per shape is gemv_config()
GEMV_VARIANTS = ((1, 1), (2, 1), (4, 1), (2, 2), (4, 2), (2, 4), (4, 4), (2, 8), (4, 8))
ATTN_CHUNK = 128  # positions per attention block (fixed by the kernel: 4 warps x 32 lanes)


def gemv_config(N: int, K: int) -> tuple:
    """(rows per warp, warps splitting K) for a GEMV shape, from suites/gpu_kernel_profile.py on the
    lent H100 (2026-11-25, every variant timed at the Llama-2-7B and Llama-3-8B shapes): two rows per
    warp always won; short outputs (N <= 4096: o_proj, down_proj) want K split over 2 warps, the
    rest over 4, which keeps enough 16-byte loads in flight to cover the chip."""
    return (2, 2) if N <= 4096 else (2, 4)


def _names():
    out = []
    for t in _TYPES.values():
        for r, sk in GEMV_VARIANTS:
            for mode in (0, 1):
                for epi in ((0, 1, 2) if r % 2 == 0 else (0, 1)):
                    out.append(f"gemv<{t},{r},{sk},{mode},{epi}>")
        out += [f"rope_kv<{t}>", f"attn_combine<{t}>", f"embed<{t}>"]
        out += [f"attn_partial<{t},{per}>" for per in (1, 2, 4, 8)]
    return out + ["argmax_advance"]


@functools.lru_cache(maxsize=None)
def module():
    return cupy.RawModule(code=_SRC, options=("-std=c++17",), name_expressions=_names())


def kernel(name: str, dtype: str | None = None):
    """A compiled kernel: kernel("gemv", "float16") style names with template arguments filled in."""
    return module().get_function(name)


def type_name(dtype) -> str:
    name = getattr(dtype, "name", str(dtype))
    if name not in _TYPES:
        raise TypeError(f"fused CUDA kernels support float16 and bfloat16, got {name}")
    return _TYPES[name]


def _opt(a):
    """An optional array argument: a null pointer when absent."""
    return cupy.uint64(0) if a is None else a


def gemv(W, x, out, *, mode: int = 0, norm_weight=None, residual=None, eps: float = 1e-6, glu: bool = False,
         rows: int | None = None, k_split: int | None = None, stream=None):
    """out = W @ xin (+ residual). W [N, K] row-major, x [K]. mode 0: xin = x; 1: xin = rmsnorm(x) *
    norm_weight. out float32: raw sums (logits). glu: W's rows interleave gate and up (see
    interleave_glu) and out [N/2] = silu(gate) * up."""
    N, K = W.shape
    if K % 8:
        raise ValueError(f"gemv: K={K} must be a multiple of 8 (16-byte loads)")
    if x.shape[-1] != K or (mode == 1 and norm_weight is None):
        raise ValueError(f"gemv: x of shape {x.shape} (mode {mode}) does not fit W {W.shape}")
    epi = 2 if glu else (1 if out.dtype == cupy.float32 else 0)
    if out.shape[0] != (N // 2 if glu else N):
        raise ValueError(f"gemv: out of shape {out.shape} does not fit W {W.shape} (glu={glu})")
    t = type_name(W.dtype)
    if rows is None or k_split is None:
        rows, k_split = gemv_config(N, K)
    if glu and rows % 2:
        raise ValueError("gemv: glu needs an even number of rows per warp")
    fn = kernel(f"gemv<{t},{rows},{k_split},{mode},{epi}>")
    warps = 8
    grid = (-(-N // ((warps // k_split) * rows)),)
    smem = K * W.dtype.itemsize
    if smem > 48 * 1024:
        fn.max_dynamic_shared_size_bytes = smem
    fn(grid, (32 * warps,), (W, x, _opt(norm_weight), _opt(residual), out,
                             cupy.int32(N), cupy.int32(K), cupy.float32(eps)), shared_mem=smem, stream=stream)


def interleave_glu(gate, up):
    """[I, H] gate and up -> [2I, H] with rows gate_0, up_0, gate_1, up_1, ... for gemv(glu=True)."""
    return cupy.ascontiguousarray(cupy.stack([gate, up], axis=1).reshape(2 * gate.shape[0], gate.shape[1]))


def rope_kv(qkv, pos, cos_t, sin_t, q_out, k_cache, v_cache, n_heads: int, n_kv: int, head_dim: int):
    max_seq = k_cache.shape[1]
    n = (n_heads + n_kv) * (head_dim // 2) + n_kv * head_dim
    fn = kernel(f"rope_kv<{type_name(qkv.dtype)}>")
    fn(((n + 255) // 256,), (256,), (qkv, pos, cos_t, sin_t, q_out, k_cache, v_cache, cupy.int32(n_heads),
                                    cupy.int32(n_kv), cupy.int32(head_dim), cupy.int32(max_seq)))


def attention(q, k_cache, v_cache, pos, part, out, n_heads: int, n_kv: int, head_dim: int, chunk: int = ATTN_CHUNK,
              window: int = 0, scale: float | None = None):
    """out[Hq*D] = softmax(q k^T * scale) v over cache positions 0..*pos (or the last `window`)."""
    if head_dim not in (32, 64, 128, 256):
        raise ValueError(f"attention kernel supports head_dim 32, 64, 128 or 256, got {head_dim}")
    if chunk != ATTN_CHUNK:
        raise ValueError(f"attention kernel works in chunks of {ATTN_CHUNK} positions, got {chunk}")
    max_seq = k_cache.shape[1]
    n_chunks = -(-max_seq // chunk)
    scale = head_dim ** -0.5 if scale is None else scale
    t = type_name(q.dtype)
    kernel(f"attn_partial<{t},{head_dim // 32}>")((n_heads, n_chunks), (128,), (
        q, k_cache, v_cache, pos, part, cupy.int32(n_heads), cupy.int32(n_kv),
        cupy.int32(max_seq), cupy.int32(window), cupy.float32(scale)))
    if n_chunks > 1024:
        raise ValueError(f"attention: {max_seq} positions need more than 1024 chunks")
    kernel(f"attn_combine<{t}>")((n_heads,), (head_dim,), (part, pos, out, cupy.int32(head_dim), cupy.int32(n_chunks),
                                                        cupy.int32(window)))


def embed(E, tok, x):
    kernel(f"embed<{type_name(E.dtype)}>")((8,), (512,), (E, tok, x, cupy.int32(E.shape[1])))


def argmax_advance(logits, tok, out_tokens, step, pos):
    kernel("argmax_advance")((1,), (1024,), (logits, cupy.int32(logits.shape[0]), tok, out_tokens, step, pos))
