"""CUDA kernels of the cupy backend (cupy RawModule), one launcher each.

Each kernel is the fast path of one backend op for the shapes it takes (the backend falls back to the
plain composition otherwise) and has a parity test against that composition (tests/test_fused.py).
None calls cuBLAS or reads the device from the host, so every one can run inside a captured CUDA
graph. Rounding follows the composition op by op (16-bit values round to T after each op the
composition rounds after; float32 ops use the _rn intrinsics, so nothing is contracted into an FMA
that the composition computes in two steps), which makes a fused launch equal the eager ops it
replaces bit for bit where the reduction order is the same.

  gemv       y[m] = x[m] @ W.T (+ b) for m < 8 rows, with optional rms_norm prologue (the norm of each
             x row, styles llama / gemma / torch), GLU epilogue over two weights (act(gate) * up) and
             residual epilogue; 16-byte loads, rows x K-split warps per block (gemv_config)
  rms_norm   one block per row, the same prologue code as gemv
  rotary     HF rotate_half rotary on (B, H, L, D) strided views
  attention  one query row per (batch, head) over a KV cache, split over chunks of 128 positions
             (flash-decoding), additive mask; a chunk whose mask hides every position is skipped
Layouts: weights row-major [N, K] (torch's Linear layout); element strides are passed for views.
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
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
// the value after rounding to T, as a float
template <typename T> __device__ __forceinline__ float rnd(float v) { return to_f<T>(from_f<T>(v)); }

// 16 bytes of T as floats: 8 halves / bf16s or 4 floats
template <typename T> struct Vec { static constexpr int N = 16 / sizeof(T); };
template <typename T>
__device__ __forceinline__ void unpack(const uint4 &u, float *f) {
    const T *h = reinterpret_cast<const T *>(&u);
    #pragma unroll
    for (int i = 0; i < Vec<T>::N; i++) f[i] = to_f<T>(h[i]);
}
template <typename T>
__device__ __forceinline__ uint4 pack(const float *f) {
    uint4 u;
    T *h = reinterpret_cast<T *>(&u);
    #pragma unroll
    for (int i = 0; i < Vec<T>::N; i++) h[i] = from_f<T>(f[i]);
    return u;
}

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
"""

_SRC = PRELUDE + r"""
__device__ __forceinline__ uint4 ld_stream(const uint4 *p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}

// ---- activations, exactly as the eager kernels compute them in float32 (engine/backends/numpy_backend.py)
__device__ __forceinline__ float act_fn(float x, int act) {
    if (act == 1) return __fdiv_rn(x, __fadd_rn(1.f, expf(-x)));  // silu: x / (1 + exp(-x))
    if (act == 2) {  // gelu_tanh: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x * x * x)))
        const float c3 = __fmul_rn(__fmul_rn(__fmul_rn(0.044715f, x), x), x);
        const float t = tanhf(__fmul_rn(0.7978845608028654f, __fadd_rn(x, c3)));
        return __fmul_rn(__fmul_rn(0.5f, x), __fadd_rn(1.f, t));
    }
    // gelu: 0.5 * x * (1 + erf(x / sqrt(2)))
    return __fmul_rn(__fmul_rn(0.5f, x), __fadd_rn(1.f, erff(__fdiv_rn(x, 1.4142135623730951f))));
}

// ---- rms_norm: the row statistic over a block of 256 threads (one order everywhere it is used) ----
template <typename T>
__device__ float row_sumsq(const T *__restrict__ x, int K, float *red) {
    constexpr int V = Vec<T>::N;
    const uint4 *x4 = reinterpret_cast<const uint4 *>(x);
    float ss = 0.f;
    for (int k = threadIdx.x; k < K / V; k += 256) {
        float f[V];
        unpack<T>(x4[k], f);
        #pragma unroll
        for (int i = 0; i < V; i++) ss = __fadd_rn(ss, __fmul_rn(f[i], f[i]));
    }
    ss = warp_sum(ss);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
    __syncthreads();
    float tot = 0.f;
    #pragma unroll
    for (int w = 0; w < 8; w++) tot = __fadd_rn(tot, red[w]);
    return tot;
}

// style 1 llama: round(w * round(x * r)); 2 gemma: round(x * r * (1 + w)); 3 torch: round(x / s * w),
// with r = 1 / sqrt(mean + eps), s = sqrt(mean + eps)
template <typename T>
__device__ __forceinline__ float norm_apply(float f, float r, float s, float w, int style) {
    if (style == 1) return rnd<T>(__fmul_rn(w, rnd<T>(__fmul_rn(f, r))));
    if (style == 2) return rnd<T>(__fmul_rn(__fmul_rn(f, r), __fadd_rn(w, 1.f)));
    return rnd<T>(__fmul_rn(__fdiv_rn(f, s), w));
}

template <typename T>
__device__ void norm_row(const T *__restrict__ x, const T *__restrict__ nw, T *__restrict__ out, int K, float eps,
                         int style, float *red) {
    constexpr int V = Vec<T>::N;
    const float tot = row_sumsq<T>(x, K, red);
    const float s = __fsqrt_rn(__fadd_rn(__fdiv_rn(tot, (float)K), eps));
    const float r = __fdiv_rn(1.f, s);
    const uint4 *x4 = reinterpret_cast<const uint4 *>(x), *w4 = reinterpret_cast<const uint4 *>(nw);
    uint4 *o4 = reinterpret_cast<uint4 *>(out);
    for (int k = threadIdx.x; k < K / V; k += 256) {
        float f[V], g[V];
        unpack<T>(x4[k], f);
        if (nw != nullptr) unpack<T>(w4[k], g);
        #pragma unroll
        for (int i = 0; i < V; i++) f[i] = norm_apply<T>(f[i], r, s, nw != nullptr ? g[i] : 1.f, style);
        o4[k] = pack<T>(f);
    }
}

template <typename T>
__global__ void __launch_bounds__(256) rms_norm_rows(const T *__restrict__ x, long x_row, const T *__restrict__ nw,
                                                     T *__restrict__ y, int K, float eps, int style) {
    __shared__ float red[8];
    norm_row<T>(x + (size_t)blockIdx.x * x_row, nw, y + (size_t)blockIdx.x * K, K, eps, style, red);
}

// ---- GEMV for up to M rows of x --------------------------------------------------------------------------------
// y[m, n] = sum_k W[n, k] * xin[m, k] for m < rows. xin = x, or rms_norm(x) (style != 0), staged in
// shared memory as T. A block of 8 warps = (8 / S) row groups x S slices of K; each warp streams 16-byte
// chunks of its R rows over its K slice. GLU (W2 != null): virtual rows 2j = W[j] (gate) and 2j+1 =
// W2[j] (up); y[m, j] = round(round(act(round(gate + b))) * round(up + b2)). Else y = round(acc + b),
// then round(res + y) with a residual.
template <typename T, int R, int S, int M, int U>
__global__ void __launch_bounds__(256) gemv(const T *__restrict__ W, const T *__restrict__ W2,
        const T *__restrict__ x, long x_row, const T *__restrict__ nw, float eps, int style,
        const T *__restrict__ bias, const T *__restrict__ bias2, const T *__restrict__ res, long res_row,
        T *__restrict__ y, long y_row, int N, int K, int rows, int act,
        const unsigned long long *__restrict__ Wt, const unsigned long long *__restrict__ W2t,
        const long long *__restrict__ ids, int x_div, long y_prob,
        const T *__restrict__ Wb, const T *__restrict__ Wc, const T *__restrict__ biasb,
        const T *__restrict__ biasc, int n0, int n1) {
    constexpr int V = Vec<T>::N;
    if (Wt != nullptr) {  // routed experts: problem blockIdx.y reads the weights of expert ids[problem]
        const long long e = ids[blockIdx.y];
        W = reinterpret_cast<const T *>(Wt[e]);
        if (W2t != nullptr) W2 = reinterpret_cast<const T *>(W2t[e]);
        x += (size_t)(blockIdx.y / x_div) * x_row;
        y += (size_t)blockIdx.y * y_prob;
    }
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *xs = reinterpret_cast<T *>(smem_raw);
    __shared__ float red[8 * M * R];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int KV = K / V;
    for (int m = 0; m < rows; m++) {
        const T *xr = x + (size_t)m * x_row;
        if (style == 0) {
            const uint4 *x4 = reinterpret_cast<const uint4 *>(xr);
            uint4 *d4 = reinterpret_cast<uint4 *>(xs + (size_t)m * K);
            for (int k = tid; k < KV; k += 256) d4[k] = x4[k];
        } else {
            norm_row<T>(xr, nw, xs + (size_t)m * K, K, eps, style, red);
            __syncthreads();
        }
    }
    __syncthreads();
    const int group = warp / S, slice = warp % S;
    const int row0 = (blockIdx.x * (8 / S) + group) * R;
    const int per = (KV + S - 1) / S, k_lo = slice * per, k_hi = min(KV, k_lo + per);
    float acc[M][R];
    const uint4 *wv[R];
    #pragma unroll
    for (int r = 0; r < R; r++) {
        #pragma unroll
        for (int m = 0; m < M; m++) acc[m][r] = 0.f;
        const int row = min(row0 + r, N - 1);
        const T *base;
        if (W2 != nullptr) base = ((row & 1) ? W2 : W) + (size_t)(row >> 1) * K;
        else if (Wb == nullptr || row < n0) base = W + (size_t)row * K;  // segments: [W; Wb; Wc] by rows
        else if (row < n0 + n1) base = Wb + (size_t)(row - n0) * K;
        else base = Wc + (size_t)(row - n0 - n1) * K;
        wv[r] = reinterpret_cast<const uint4 *>(base);
    }
    const uint4 *xv = reinterpret_cast<const uint4 *>(xs);
    #pragma unroll U
    for (int k = k_lo + lane; k < k_hi; k += 32) {
        uint4 wr[R];
        #pragma unroll
        for (int r = 0; r < R; r++) wr[r] = ld_stream(wv[r] + k);
        float wf[R][V];
        #pragma unroll
        for (int r = 0; r < R; r++) unpack<T>(wr[r], wf[r]);
        #pragma unroll
        for (int m = 0; m < M; m++) {
            if (m < rows) {
                float xf[V];
                unpack<T>(xv[(size_t)m * KV + k], xf);
                #pragma unroll
                for (int r = 0; r < R; r++) {
                    #pragma unroll
                    for (int i = 0; i < V; i++) acc[m][r] = fmaf(wf[r][i], xf[i], acc[m][r]);
                }
            }
        }
    }
    #pragma unroll
    for (int m = 0; m < M; m++) {
        #pragma unroll
        for (int r = 0; r < R; r++) {
            const float v = warp_sum(acc[m][r]);
            if (lane == 0) red[(warp * M + m) * R + r] = v;
        }
    }
    __syncthreads();
    if (slice != 0) return;
    const int m = lane / R, r = lane % R, row = row0 + r;
    float v = 0.f;
    if (lane < M * R) {
        #pragma unroll
        for (int j = 0; j < S; j++) v = __fadd_rn(v, red[((warp + j) * M + m) * R + r]);
    }
    if (W2 != nullptr) {  // lane with r even holds gate_j, lane + 1 holds up_j
        const float up = __shfl_down_sync(0xffffffff, v, 1);
        if (lane < M * R && (r & 1) == 0 && m < rows && row < N) {
            const int j = row >> 1;
            const float g = rnd<T>(bias != nullptr ? __fadd_rn(v, to_f<T>(bias[j])) : v);
            const float u = rnd<T>(bias2 != nullptr ? __fadd_rn(up, to_f<T>(bias2[j])) : up);
            float o = rnd<T>(__fmul_rn(rnd<T>(act_fn(g, act)), u));
            if (res != nullptr) o = __fadd_rn(to_f<T>(res[(size_t)m * res_row + j]), o);
            y[(size_t)m * y_row + j] = from_f<T>(o);
        }
    } else if (lane < M * R && m < rows && row < N) {
        const T *bp = bias;
        int br = row;
        if (Wb != nullptr && row >= n0) {
            if (row < n0 + n1) { bp = biasb; br = row - n0; } else { bp = biasc; br = row - n0 - n1; }
        }
        float o = rnd<T>(bp != nullptr ? __fadd_rn(v, to_f<T>(bp[br])) : v);
        if (res != nullptr) o = __fadd_rn(to_f<T>(res[(size_t)m * res_row + row]), o);
        y[(size_t)m * y_row + row] = from_f<T>(o);
    }
}

// ---- attention rows for prefill: p = round(softmax_f32(round(round(s * scale) + mask))) ---------------------------
// s (rows, S) scores in T (rows = B * Hkv * rep * L, as GQA groups the query heads of a kv head); mask (B|1, 1, L, S)
// additive in T with element strides (mb, ml, ms) or null. One block of 256 threads per row.
template <typename T>
__global__ void __launch_bounds__(256) softmax_mask_rows(const T *__restrict__ s, const T *__restrict__ mask, long mb,
        long ml, long ms, T *__restrict__ p, int S, int L, int per_batch, float scale) {
    __shared__ float red[8];
    const size_t row = blockIdx.x;
    const int b = (int)(row / per_batch), l = (int)(row % L);
    const T *sr = s + row * S;
    const T *mr = mask != nullptr ? mask + b * mb + (long)l * ml : nullptr;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < S; j += 256) {
        float v = rnd<T>(__fmul_rn(to_f<T>(sr[j]), scale));
        if (mr != nullptr) v = rnd<T>(__fadd_rn(v, to_f<T>(mr[(long)j * ms])));
        m = fmaxf(m, v);
    }
    m = warp_max(m);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < 8; w++) M = fmaxf(M, red[w]);
    if (!(M > -INFINITY && M < INFINITY)) M = 0.f;  // as the reference: a non-finite max subtracts 0
    __syncthreads();
    float z = 0.f;
    for (int j = threadIdx.x; j < S; j += 256) {
        float v = rnd<T>(__fmul_rn(to_f<T>(sr[j]), scale));
        if (mr != nullptr) v = rnd<T>(__fadd_rn(v, to_f<T>(mr[(long)j * ms])));
        z += expf(v - M);
    }
    z = warp_sum(z);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = z;
    __syncthreads();
    float Z = 0.f;
    for (int w = 0; w < 8; w++) Z += red[w];
    for (int j = threadIdx.x; j < S; j += 256) {
        float v = rnd<T>(__fmul_rn(to_f<T>(sr[j]), scale));
        if (mr != nullptr) v = rnd<T>(__fadd_rn(v, to_f<T>(mr[(long)j * ms])));
        p[row * S + j] = from_f<T>(expf(v - M) / Z);
    }
}

// ---- batched GEMM without cuBLAS (what runs inside a capture where cuBLAS cannot) -------------------------------
// C[b, m, n] = sum_k A[b, m, k] B[b, k, n] (+ bias[n]) in float32, rounded once to T; element strides for A
// and B, C contiguous (batch, M, N). 64 x 64 tiles, 256 threads, 4 x 4 outputs per thread.
template <typename T>
__global__ void __launch_bounds__(256) gemm_tiled(const T *__restrict__ A, long sab, long sam, long sak,
        const T *__restrict__ B, long sbb, long sbk, long sbn, const T *__restrict__ bias, T *__restrict__ C,
        int M, int N, int K) {
    __shared__ float As[16][65], Bs[16][65];
    const int b = blockIdx.z, m0 = blockIdx.y * 64, n0 = blockIdx.x * 64;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const T *a = A + b * sab, *bb = B + b * sbb;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += 16) {
        for (int i = threadIdx.x; i < 16 * 64; i += 256) {
            const int kk = i / 64, mm = i % 64;
            const int m = m0 + mm, n = n0 + mm, k = k0 + kk;
            As[kk][mm] = (m < M && k < K) ? to_f<T>(a[m * sam + k * sak]) : 0.f;
            Bs[kk][mm] = (n < N && k < K) ? to_f<T>(bb[k * sbk + n * sbn]) : 0.f;
        }
        __syncthreads();
        #pragma unroll
        for (int kk = 0; kk < 16; kk++) {
            float av[4], bv[4];
            #pragma unroll
            for (int i = 0; i < 4; i++) { av[i] = As[kk][ty + 16 * i]; bv[i] = Bs[kk][tx + 16 * i]; }
            #pragma unroll
            for (int i = 0; i < 4; i++)
                #pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
    #pragma unroll
    for (int i = 0; i < 4; i++)
        #pragma unroll
        for (int j = 0; j < 4; j++) {
            const int m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
            if (m < M && n < N) {
                const float v = bias != nullptr ? __fadd_rn(acc[i][j], to_f<T>(bias[n])) : acc[i][j];
                C[((size_t)b * M + m) * N + n] = from_f<T>(v);
            }
        }
}

// ---- mixture of experts: out[t] = sum over its k slots, in ascending expert order, of round(y[slot] * w[slot])
template <typename T>
__global__ void moe_combine(const T *__restrict__ y, const float *__restrict__ w, const long long *__restrict__ ids,
                            T *__restrict__ out, int H, int k) {
    const int t = blockIdx.x;
    int order[8];
    for (int j = 0; j < k; j++) order[j] = j;
    for (int a = 1; a < k; a++)  // insertion sort of the slots by expert id (k <= 8)
        for (int b = a; b > 0 && ids[(size_t)t * k + order[b]] < ids[(size_t)t * k + order[b - 1]]; b--) {
            const int tmp = order[b]; order[b] = order[b - 1]; order[b - 1] = tmp;
        }
    for (int i = threadIdx.x; i < H; i += blockDim.x) {
        float acc = 0.f;
        for (int j = 0; j < k; j++) {
            const int s = t * k + order[j];
            acc = rnd<T>(__fadd_rn(acc, rnd<T>(__fmul_rn(to_f<T>(y[(size_t)s * H + i]), w[s]))));
        }
        out[(size_t)t * H + i] = from_f<T>(acc);
    }
}

// ---- rotary (transformers' rotate_half) -------------------------------------------------------------------------
// x (B, H, L, D) with element strides (sb, sh, sl, 1); cos/sin (B|1, L, rot) with strides (cb, cl, 1)
// (cb 0: shared by the batch); out contiguous (B, H, L, D). out[i] = round(round(x_i c_i) + round(x_sw s_i))
// for i < rot (x_sw: the other half), x_i past rot. One block per (b, h, l).
template <typename T>
__global__ void rotary(const T *__restrict__ x, long sb, long sh, long sl, const T *__restrict__ cos_t,
                       const T *__restrict__ sin_t, long cb, long cl, T *__restrict__ out, int H, int L, int D,
                       int rot) {
    const int l = blockIdx.x % L, h = (blockIdx.x / L) % H, b = blockIdx.x / (L * H);
    const T *xr = x + b * sb + h * sh + l * sl;
    const T *c = cos_t + b * cb + l * cl, *s = sin_t + b * cb + l * cl;
    T *o = out + (size_t)blockIdx.x * D;
    const int half = rot >> 1;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        if (i < rot) {
            const float xi = to_f<T>(xr[i]), xs = to_f<T>(xr[i < half ? i + half : i - half]);
            o[i] = from_f<T>(__fadd_rn(rnd<T>(__fmul_rn(xi, to_f<T>(c[i]))), rnd<T>(__fmul_rn(xs, to_f<T>(s[i])))));
        } else {
            o[i] = xr[i];
        }
    }
}

// ---- decode attention: one query row per (b, h) over S cached positions ------------------------------------------
// Scores follow transformers' eager rounding: s = round(round(round(q.k) * scale) + mask) (float32 when T
// is float32); a position whose mask is <= -1e4 contributes exp(.) = 0 exactly and is skipped. Grid
// (B * Hq, n_chunks), 4 warps; lane i of warp w owns position c*128 + 32w + i for the scores, then
// lanes split the head dim (PER = D / 32 each) for the values. Partials: (m, l, acc[D]) per chunk.
template <typename T, int PER>
__global__ void __launch_bounds__(128) attn_partial(const T *__restrict__ q, long qb, long qh,
        const T *__restrict__ k, long kb, long kh, long ks, const T *__restrict__ v, long vb, long vh, long vs,
        const T *__restrict__ mask, long mb, long ms, float *__restrict__ part, int Hq, int Hkv, int S,
        float scale) {
    constexpr int D = PER * 32, CHUNK = 128, V = Vec<T>::N;
    const int bh = blockIdx.x, c = blockIdx.y, n_chunks = gridDim.y;
    const int b = bh / Hq, h = bh % Hq, kvh = h / (Hq / Hkv);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float *out = part + ((size_t)bh * n_chunks + c) * (D + 2);
    __shared__ float qs[D];
    __shared__ float sm[4], sl[4], sacc[4][D];
    __shared__ int any_live;
    const T *qr = q + b * qb + h * qh;
    for (int d = threadIdx.x; d < D; d += blockDim.x) qs[d] = to_f<T>(qr[d]);
    if (threadIdx.x == 0) any_live = 0;
    __syncthreads();
    const int t = c * CHUNK + warp * 32 + lane;
    float mval = 0.f;
    bool live = t < S;
    if (live && mask != nullptr) {
        mval = to_f<T>(mask[b * mb + (long)t * ms]);
        live = mval > -1e4f;
    }
    if (live) any_live = 1;
    __syncthreads();
    if (!any_live) {  // every position of the chunk is masked or past the end
        if (threadIdx.x == 0) { out[0] = -INFINITY; out[1] = 0.f; }
        for (int d = threadIdx.x; d < D; d += blockDim.x) out[2 + d] = 0.f;
        return;
    }
    const T *kbase = k + b * kb + kvh * kh, *vbase = v + b * vb + kvh * vh;
    float s = -INFINITY;
    if (live) {
        const uint4 *kr = reinterpret_cast<const uint4 *>(kbase + (long)t * ks);
        float dot = 0.f;
        #pragma unroll
        for (int j = 0; j < D / V; j++) {
            float kf[V];
            unpack<T>(kr[j], kf);
            #pragma unroll
            for (int i = 0; i < V; i++) dot = fmaf(qs[j * V + i], kf[i], dot);
        }
        s = rnd<T>(__fmul_rn(rnd<T>(dot), scale));
        if (mask != nullptr) s = rnd<T>(__fadd_rn(s, mval));
    }
    const float m = warp_max(s);
    const float e = m == -INFINITY ? 0.f : expf(s - m);
    const float l = warp_sum(e);
    float acc[PER];
    #pragma unroll
    for (int i = 0; i < PER; i++) acc[i] = 0.f;
    const int base = c * CHUNK + warp * 32;
    #pragma unroll 4
    for (int j = 0; j < 32; j++) {
        const float pj = __shfl_sync(0xffffffff, e, j);
        if (pj != 0.f) {
            const T *vr = vbase + (long)(base + j) * vs + lane * PER;
            #pragma unroll
            for (int i = 0; i < PER; i++) acc[i] = fmaf(pj, to_f<T>(vr[i]), acc[i]);
        }
    }
    if (lane == 0) { sm[warp] = m; sl[warp] = l; }
    #pragma unroll
    for (int i = 0; i < PER; i++) sacc[warp][lane * PER + i] = acc[i];
    __syncthreads();
    if (warp == 0) {
        const float M = fmaxf(fmaxf(sm[0], sm[1]), fmaxf(sm[2], sm[3]));
        float wgt[4], L = 0.f;
        #pragma unroll
        for (int w = 0; w < 4; w++) { wgt[w] = sm[w] == -INFINITY ? 0.f : expf(sm[w] - M); L += sl[w] * wgt[w]; }
        #pragma unroll
        for (int i = 0; i < PER; i++) {
            const int d = lane * PER + i;
            out[2 + d] = sacc[0][d] * wgt[0] + sacc[1][d] * wgt[1] + sacc[2][d] * wgt[2] + sacc[3][d] * wgt[3];
        }
        if (lane == 0) { out[0] = M; out[1] = L; }
    }
}

// Combine the chunk partials of one (b, h): grid B * Hq, block D threads; o (B, 1, Hq * D) contiguous.
template <typename T>
__global__ void attn_combine(const float *__restrict__ part, T *__restrict__ o, int D, int n_chunks) {
    __shared__ float red[8];
    const int bh = blockIdx.x, d = threadIdx.x, lane = d & 31, warp = d >> 5, nw = (blockDim.x + 31) >> 5;
    const float *ph = part + (size_t)bh * n_chunks * (D + 2);
    float m = -INFINITY;
    for (int i = d; i < n_chunks; i += blockDim.x) m = fmaxf(m, ph[(size_t)i * (D + 2)]);
    m = warp_max(m);
    if (lane == 0) red[warp] = m;
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < nw; w++) M = fmaxf(M, red[w]);
    float L = 0.f, a = 0.f;
    for (int i = 0; i < n_chunks; i++) {
        const float *pc = ph + (size_t)i * (D + 2);
        const float wt = pc[0] == -INFINITY ? 0.f : expf(pc[0] - M);
        L += pc[1] * wt;
        a += pc[2 + d] * wt;
    }
    o[(size_t)bh * D + d] = from_f<T>(L > 0.f ? a / L : 0.f);
}

// ---- choosing tokens: engine/sampling.py's steps for one row per block (1024 threads) ---------------------------
// x = logits (float32) with the repetition penalty, / temperature; top-k keeps x >= the k-th largest; top-p
// keeps x whose strictly larger values hold less than p of the mass; then a draw by inverse CDF in index
// order with u = uniform(seed, counter, row). Thresholds are found by binary search over the order-keeping
// 32-bit keys of the floats, with fixed-order block reductions (the same answer every run).
__device__ __forceinline__ unsigned int fkey(float f) {
    const unsigned int u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
// fixed-order block reductions over 1024 threads (32 warps)
__device__ float bsum(float v, float *red) {
    v = warp_sum(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float t = 0.f;
    for (int w = 0; w < 32; w++) t += red[w];
    return t;
}
__device__ int bcount(int v, int *red) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    int t = 0;
    for (int w = 0; w < 32; w++) t += red[w];
    return t;
}

template <typename T>
__global__ void __launch_bounds__(1024) sample_rows(const T *__restrict__ logits, long l_row,
        const bool *__restrict__ seen, float penalty, float temperature, int top_k, float top_p,
        unsigned long long seed, const long long *__restrict__ counter, float *__restrict__ scratch,
        long long *__restrict__ out, int V) {
    __shared__ float redf[32];
    __shared__ int redi[32];
    __shared__ float best_v[32];
    __shared__ int best_i[32];
    const int row = blockIdx.x, tid = threadIdx.x;
    const T *lr = logits + (size_t)row * l_row;
    float *x = scratch + (size_t)row * V;
    for (int i = tid; i < V; i += 1024) {
        float v = to_f<T>(lr[i]);
        if (seen != nullptr && seen[(size_t)row * V + i]) v = v < 0.f ? __fmul_rn(v, penalty) : __fdiv_rn(v, penalty);
        if (temperature > 0.f) v = __fdiv_rn(v, temperature);
        x[i] = v;
    }
    __syncthreads();
    if (temperature == 0.f) {  // greedy: the first index of the largest value, as argmax
        float bv = -INFINITY;
        int bi = 0x7fffffff;
        for (int i = tid; i < V; i += 1024) {
            const float v = x[i];
            if (v > bv || (v == bv && i < bi)) { bv = v; bi = i; }
        }
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffff, bv, o);
            const int oi = __shfl_xor_sync(0xffffffff, bi, o);
            if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
        }
        if ((tid & 31) == 0) { best_v[tid >> 5] = bv; best_i[tid >> 5] = bi; }
        __syncthreads();
        if (tid == 0) {
            for (int w = 1; w < 32; w++)
                if (best_v[w] > bv || (best_v[w] == bv && best_i[w] < bi)) { bv = best_v[w]; bi = best_i[w]; }
            out[row] = bi == 0x7fffffff ? 0 : bi;
        }
        return;
    }
    unsigned int kmin = 0u;  // keep x with fkey(x) >= kmin
    if (top_k > 0 && top_k < V) {  // the largest key K with count(key >= K) >= k
        unsigned int lo = 0u, hi = 0xffffffffu;
        while (lo < hi) {
            const unsigned int mid = lo + (unsigned int)(((unsigned long long)hi - lo + 1) >> 1);
            int c = 0;
            for (int i = tid; i < V; i += 1024) c += fkey(x[i]) >= mid;
            if (bcount(c, redi) >= top_k) lo = mid; else hi = mid - 1;
        }
        kmin = lo;
    }
    float m = -INFINITY;
    for (int i = tid; i < V; i += 1024) if (fkey(x[i]) >= kmin) m = fmaxf(m, x[i]);
    m = warp_max(m);
    __syncthreads();
    if ((tid & 31) == 0) redf[tid >> 5] = m;
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < 32; w++) M = fmaxf(M, redf[w]);
    for (int i = tid; i < V; i += 1024) {  // scratch now holds exp(x - M) of the kept tokens
        const float v = x[i];
        x[i] = fkey(v) >= kmin ? expf(v - M) : 0.f;
    }
    __syncthreads();
    float Z = 0.f;
    for (int i = tid; i < V; i += 1024) Z += x[i];
    Z = bsum(Z, redf);
    if (top_p < 1.f) {  // the smallest key K whose strictly larger kept values hold < p of the mass
        // keys of the probabilities' logits are not kept in scratch: compare through the logits again
        unsigned int lo = kmin, hi = 0xffffffffu;
        while (lo < hi) {
            const unsigned int mid = lo + ((hi - lo) >> 1);
            float sgt = 0.f;
            for (int i = tid; i < V; i += 1024) {
                float v = to_f<T>(lr[i]);
                if (seen != nullptr && seen[(size_t)row * V + i]) v = v < 0.f ? __fmul_rn(v, penalty) : __fdiv_rn(v, penalty);
                v = __fdiv_rn(v, temperature);
                if (fkey(v) > mid) sgt += x[i];
            }
            if (bsum(sgt, redf) < top_p * Z) hi = mid; else lo = mid + 1;
        }
        const unsigned int pmin = lo;
        float Z2 = 0.f;
        for (int i = tid; i < V; i += 1024) {
            float v = to_f<T>(lr[i]);
            if (seen != nullptr && seen[(size_t)row * V + i]) v = v < 0.f ? __fmul_rn(v, penalty) : __fdiv_rn(v, penalty);
            v = __fdiv_rn(v, temperature);
            if (fkey(v) < pmin) x[i] = 0.f;
            Z2 += x[i];
        }
        Z = bsum(Z2, redf);
    }
    // inverse CDF in index order: thread t owns the contiguous range [t*C, (t+1)*C)
    const unsigned long long s = mix64(seed);
    const unsigned long long r = mix64(s ^ mix64(((unsigned long long)counter[0] << 32) + (unsigned long long)row));
    const double u = (double)(r >> 11) * (1.0 / 9007199254740992.0);
    const float target = (float)(u * (double)Z);
    const int C = (V + 1023) / 1024, lo_i = tid * C, hi_i = min(V, lo_i + C);
    float local = 0.f;
    for (int i = lo_i; i < hi_i; i++) local += x[i];
    // exclusive scan of the 1024 local sums, in thread order
    __shared__ float part[1024];
    part[tid] = local;
    __syncthreads();
    if (tid < 32) {  // warp 0 scans 32 chunks of 32
        float acc = 0.f;
        for (int j = 0; j < 32; j++) acc += part[tid * 32 + j];
        redf[tid] = acc;
    }
    __syncthreads();
    float before = 0.f;
    for (int w = 0; w < (tid >> 5); w++) before += redf[w];
    for (int j = (tid & ~31); j < tid; j++) before += part[j];
    __shared__ int chosen;
    if (tid == 0) chosen = V - 1;
    __syncthreads();
    // the first index whose inclusive prefix reaches target (as (cumsum < u).sum() on the host)
    if (lo_i < hi_i && before + local >= target && (tid == 0 || before < target)) {
        float acc = before;
        int pick = hi_i - 1;
        for (int i = lo_i; i < hi_i; i++) {
            acc += x[i];
            if (acc >= target) { pick = i; break; }
        }
        atomicMin(&chosen, pick);
    }
    __syncthreads();
    if (tid == 0) out[row] = chosen;
}
"""

TYPES = {"float16": "__half", "bfloat16": "__nv_bfloat16", "float32": "float"}
ATTN_CHUNK = 128  # positions per attention block (fixed by the kernel: 4 warps x 32 lanes)
MAX_ROWS = 8  # gemv takes at most this many rows of x (decode batches); more rows go to cuBLAS
SMEM_LIMIT = 227 * 1024  # dynamic shared memory per block on sm_80 and sm_90 (opt-in above 48 KiB)


def _bundle(expr: str) -> tuple:
    """The instantiations compiled together with `expr` (one NVRTC run each: a model's decode needs
    only a few bundles per dtype, so the first step compiles in seconds, and cupy keeps them on disk)."""
    name, _, args = expr.partition("<")
    t = args.split(",")[0].rstrip(">")
    u = GEMV_CONFIG["unroll"]
    if name == "gemv" and expr in {f"gemv<{t},{r},{k},{m},{u}>" for r, k in _DEFAULT_RS for m in (1, 2, 4, 8)}:
        return tuple(f"gemv<{t},{r},{k},{m},{u}>" for r, k in _DEFAULT_RS for m in (1, 2, 4, 8))
    if name in ("attn_partial", "attn_combine"):
        return tuple(f"attn_partial<{t},{per}>" for per in (1, 2, 3, 4, 8)) + (f"attn_combine<{t}>",)
    misc = ("rms_norm_rows", "rotary", "moe_combine", "sample_rows", "gemm_tiled", "softmax_mask_rows")
    if name in misc:
        return tuple(f"{n}<{t}>" for n in misc)
    return (expr,)


@functools.lru_cache(maxsize=None)
def _module(bundle: tuple):
    return cupy.RawModule(code=_SRC, options=("-std=c++17",), name_expressions=list(bundle))


_FNS: dict = {}


def _fn(expr: str):
    """A kernel instantiation, compiled with its bundle on first use."""
    f = _FNS.get(expr)
    if f is None:
        f = _FNS[expr] = _module(_bundle(expr)).get_function(expr)
    return f


_BY_DTYPE = {}  # numpy dtype -> C type (dtype.name is slow on the launch path)


def type_name(dtype) -> str:
    t = _BY_DTYPE.get(dtype)
    if t is None:
        name = getattr(dtype, "name", str(dtype))
        if name not in TYPES:
            raise TypeError(f"CUDA kernels support float16, bfloat16 and float32, got {name}")
        t = _BY_DTYPE[dtype] = TYPES[name]
    return t


def _kernel_dtype(dtype) -> bool:
    try:
        type_name(dtype)
        return True
    except TypeError:
        return False


def _opt(a):
    """An optional array argument: a null pointer when absent."""
    return _NULL if a is None else a


def _vec(dtype) -> int:
    return 16 // dtype.itemsize


def _aligned(a) -> bool:
    return a.data.ptr % 16 == 0


# ---- gemv ----------------------------------------------------------------------------------------------------
# (rows per warp, warps splitting K): from bench/kernel_profile.py on the H200 (graph replays, Llama-2-7B
# shapes, measurements/h200/): four rows per warp always won; K split over 2 warps for K <= 8192 and
# over 4 for longer rows (down_proj) keeps enough 16-byte loads in flight; unroll mattered by < 2%.
GEMV_VARIANTS = ((2, 1), (2, 2), (4, 2), (2, 4), (4, 4), (2, 8))
GEMV_CONFIG = {"short_k": (4, 2), "long_k": (4, 4), "unroll": 4}
_DEFAULT_RS = (GEMV_CONFIG["short_k"], GEMV_CONFIG["long_k"])


def gemv_config(N: int, K: int) -> tuple:
    """By K alone, so every GEMV over the same K sums each row in the same order (grouped and batched
    launches then equal separate ones bit for bit)."""
    return GEMV_CONFIG["short_k"] if K <= 8192 else GEMV_CONFIG["long_k"]


NORM_STYLES = {None: 0, "llama": 1, "gemma": 2, "torch": 3}
ACTS = {"silu": 1, "gelu_tanh": 2, "gelu": 3}


def gemv_ok(x2, W, W2=None) -> bool:
    """Whether gemv takes these operands: at most MAX_ROWS rows, 16-byte aligned contiguous rows."""
    if x2.ndim != 2 or W.ndim != 2 or not 0 < x2.shape[0] <= MAX_ROWS or x2.dtype != W.dtype:
        return False
    if not _kernel_dtype(W.dtype) or x2.shape[1] != W.shape[1] or W.shape[0] == 0:
        return False
    v = _vec(W.dtype)
    K = W.shape[1]
    ws = [W] + ([W2] if W2 is not None else [])
    if K % v or any(not w.flags.c_contiguous or not _aligned(w) for w in ws):
        return False
    if x2.strides[1] != x2.itemsize or x2.strides[0] % 16 or not _aligned(x2):
        return False
    return x2.shape[0] * K * W.dtype.itemsize <= SMEM_LIMIT - 8 * 1024


_GEMV_LAUNCH: dict = {}  # launch plan by shape: kernel, grid, shared memory and the scalar arguments
_NULL = cupy.uint64(0)


def gemv(x2, W, out, bias=None, W2=None, bias2=None, act=None, norm=None, residual=None,
         rows_k=None, unroll=None, segments=None):
    """out (m, N) = x2 (m, K) @ W.T (+ bias) [GLU: act(.) * (x2 @ W2.T + bias2), out (m, N)];
    norm = (weight, eps, style) applies rms_norm to each x row first; residual (m, N) is added last;
    segments [(W_b, bias_b), (W_c, bias_c)] stack more weights under W (out holds each one's rows).
    Check gemv_ok first. The launch plan of a shape is kept, so a call costs little host time."""
    m, K = x2.shape
    nw, eps, style = norm or (None, 0.0, None)
    segs = tuple(w.shape[0] for w, _ in segments) if segments else ()
    isz = W.dtype.itemsize
    res_row = residual.strides[0] // isz if residual is not None else 0
    key = (W.dtype, m, W.shape[0], K, W2 is not None, segs, rows_k, unroll, act, style, eps,
           x2.strides[0], out.strides[0], res_row)
    plan = _GEMV_LAUNCH.get(key)
    if plan is None:
        N = W.shape[0]
        n_virtual = 2 * N if W2 is not None else N + sum(segs)
        R, S = rows_k or gemv_config(n_virtual, K)
        U = unroll or GEMV_CONFIG["unroll"]
        M = 1 if m == 1 else 2 if m <= 2 else 4 if m <= 4 else 8
        fn = _fn(f"gemv<{type_name(W.dtype)},{R},{S},{M},{U}>")
        smem = M * K * isz
        if smem > 44 * 1024:  # with the static shared memory, past the 48 KiB a launch gets unasked
            fn.max_dynamic_shared_size_bytes = smem
        i32, i64 = cupy.int32, cupy.int64
        scalars = (i64(x2.strides[0] // isz), cupy.float32(eps), i32(NORM_STYLES[style]), i64(res_row),
                   i64(out.strides[0] // isz), i32(n_virtual), i32(K), i32(m), i32(ACTS.get(act, 0)), i32(1), i64(0),
                   i32(N), i32(segs[0] if segs else 0))
        plan = _GEMV_LAUNCH[key] = (fn, (-(-n_virtual // ((8 // S) * R)),), smem, scalars)
    fn, grid, smem, sc = plan
    wb, bb = segments[0] if segments else (None, None)
    wc, bc = segments[1] if segments and len(segments) > 1 else (None, None)
    o = _opt
    fn(grid, (256,), (W, o(W2), x2, sc[0], o(nw), sc[1], sc[2], o(bias), o(bias2), o(residual), sc[3], out, sc[4],
                      sc[5], sc[6], sc[7], sc[8], _NULL, _NULL, _NULL, sc[9], sc[10], o(wb), o(wc), o(bb), o(bc),
                      sc[11], sc[12]), shared_mem=smem)


def gemv_routed(x2, table, ids, x_div: int, out, table2=None, act=None, n: int = 0, k_dim: int = 0):
    """Problem p (one per element of ids) computes out[p] = x2[p // x_div] @ W_e.T with W_e = the
    weight table[ids[p]] (n x k_dim each), or the GLU act(W_e x) * (W2_e x) with table2."""
    P = ids.size
    dt = out.dtype
    t = type_name(dt)
    n_virtual = 2 * n if table2 is not None else n
    R, S = gemv_config(n_virtual, k_dim)
    fn = _fn(f"gemv<{t},{R},{S},1,{GEMV_CONFIG['unroll']}>")
    smem = k_dim * dt.itemsize
    if smem > 44 * 1024:  # with the static shared memory, past the 48 KiB a launch gets unasked
        fn.max_dynamic_shared_size_bytes = smem
    isz = dt.itemsize
    grid = (-(-n_virtual // ((8 // S) * R)), P)
    fn(grid, (256,), (cupy.uint64(0), cupy.uint64(0), x2, cupy.int64(x2.strides[0] // isz), cupy.uint64(0),
                      cupy.float32(0), cupy.int32(0), cupy.uint64(0), cupy.uint64(0), cupy.uint64(0), cupy.int64(0),
                      out, cupy.int64(0), cupy.int32(n_virtual), cupy.int32(k_dim), cupy.int32(1),
                      cupy.int32(ACTS.get(act, 0)), table, _opt(table2), ids, cupy.int32(x_div),
                      cupy.int64(out.strides[0] // isz), cupy.uint64(0), cupy.uint64(0), cupy.uint64(0),
                      cupy.uint64(0), cupy.int32(0), cupy.int32(0)), shared_mem=smem)


def moe_combine(y, weights, ids, out):
    T_, H = out.shape
    _fn(f"moe_combine<{type_name(out.dtype)}>")((T_,), (256,), (y, weights, ids, out, cupy.int32(H),
                                                              cupy.int32(ids.shape[1])))


def rms_norm(x2, weight, eps: float, style: str, out):
    """out (rows, K) = rms_norm of each x2 row (16-byte aligned rows, K a multiple of 16 bytes)."""
    rows, K = x2.shape
    _fn(f"rms_norm_rows<{type_name(x2.dtype)}>")((rows,), (256,), (
        x2, cupy.int64(x2.strides[0] // x2.itemsize), _opt(weight), out, cupy.int32(K), cupy.float32(eps),
        cupy.int32(NORM_STYLES[style])))


def rotary(x, cos, sin, out):
    """x (B, H, L, D) with unit last stride; cos/sin (B|1, L, rot) with unit last stride; out contiguous."""
    B, H, L, D = x.shape
    isz = x.itemsize
    sb, sh, sl = (s // isz for s in x.strides[:3])
    cb = 0 if cos.shape[0] == 1 else cos.strides[0] // isz
    _fn(f"rotary<{type_name(x.dtype)}>")((B * H * L,), (min(256, max(32, D)),), (
        x, cupy.int64(sb), cupy.int64(sh), cupy.int64(sl), cos, sin, cupy.int64(cb),
        cupy.int64(cos.strides[1] // isz), out, cupy.int32(H), cupy.int32(L), cupy.int32(D),
        cupy.int32(cos.shape[-1])))


def attention_ok(q, k, v, mask) -> bool:
    if q.ndim != 4 or q.shape[2] != 1 or q.dtype.name not in TYPES or not (q.dtype == k.dtype == v.dtype):
        return False
    D = q.shape[-1]
    if D % 32 or D // 32 not in (1, 2, 3, 4, 8) or v.shape[-1] != D or k.shape[2] == 0:
        return False
    if any(a.strides[-1] != a.itemsize for a in (q, k, v)):
        return False
    if k.strides[2] % 16 or not _aligned(k) or k.strides != v.strides:
        return False
    return mask is None or (mask.dtype == q.dtype and mask.shape[-2] == 1)


def attention(q, k, v, mask, scale: float, out):
    """out (B, 1, Hq * D) = attention of q (B, Hq, 1, D) over k/v (B, Hkv, S, D) (check attention_ok)."""
    B, Hq, _, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    isz = q.itemsize
    n_chunks = -(-S // ATTN_CHUNK)
    part = cupy.empty((B * Hq, n_chunks, D + 2), cupy.float32)
    t = type_name(q.dtype)
    qs = [s // isz for s in q.strides]
    ks = [s // isz for s in k.strides]
    if mask is not None:
        mb = 0 if mask.shape[0] == 1 else mask.strides[0] // isz
        mstr = mask.strides[-1] // isz
    else:
        mb = mstr = 0
    _fn(f"attn_partial<{t},{D // 32}>")((B * Hq, n_chunks), (128,), (
        q, cupy.int64(qs[0]), cupy.int64(qs[1]), k, cupy.int64(ks[0]), cupy.int64(ks[1]), cupy.int64(ks[2]),
        v, cupy.int64(ks[0]), cupy.int64(ks[1]), cupy.int64(ks[2]), _opt(mask), cupy.int64(mb), cupy.int64(mstr),
        part, cupy.int32(Hq), cupy.int32(Hkv), cupy.int32(S), cupy.float32(scale)))
    _fn(f"attn_combine<{t}>")((B * Hq,), (D,), (part, out, cupy.int32(D), cupy.int32(n_chunks)))


def sample(logits, seen, penalty: float, temperature: float, top_k, top_p, seed: int, counter, out):
    """out (B,) int64 = the next token of each logits row (engine/sampling.py's steps); the caller
    advances counter."""
    B, V = logits.shape
    if logits.strides[1] != logits.itemsize:
        logits = cupy.ascontiguousarray(logits)
    scratch = cupy.empty((B, V), cupy.float32)
    _fn(f"sample_rows<{type_name(logits.dtype)}>")((B,), (1024,), (
        logits, cupy.int64(logits.strides[0] // logits.itemsize), _opt(seen), cupy.float32(penalty),
        cupy.float32(temperature), cupy.int32(top_k or 0), cupy.float32(1.0 if top_p is None else top_p),
        cupy.uint64(seed & ((1 << 64) - 1)), counter, scratch, out, cupy.int32(V)))


def gemm(a3, b3, out, bias=None):
    """out (batch, M, N) = a3 (batch, M, K) @ b3 (batch, K, N) (+ bias (N,)) with any element strides;
    the capture-safe product (no cuBLAS), a plain tiled kernel."""
    batch, M, K = a3.shape
    N = b3.shape[-1]
    isz = a3.itemsize
    sa = [s // isz for s in a3.strides]
    sb = [s // isz for s in b3.strides]
    _fn(f"gemm_tiled<{type_name(out.dtype)}>")((-(-N // 64), -(-M // 64), batch), (256,), (
        a3, cupy.int64(sa[0]), cupy.int64(sa[1]), cupy.int64(sa[2]), b3, cupy.int64(sb[0]), cupy.int64(sb[1]),
        cupy.int64(sb[2]), _opt(bias), out, cupy.int32(M), cupy.int32(N), cupy.int32(K)))


def softmax_mask_rows(s, mask, scale: float, L: int, per_batch: int, p):
    """p (rows, S) = the rounded float32 softmax of round(round(s * scale) + mask) per row; rows of
    one batch element are `per_batch` consecutive rows whose query position is row % L."""
    rows, S = s.shape
    isz = s.itemsize
    if mask is not None:
        mb = 0 if mask.shape[0] == 1 else mask.strides[0] // isz
        ml, ms = mask.strides[2] // isz, mask.strides[3] // isz
    else:
        mb = ml = ms = 0
    _fn(f"softmax_mask_rows<{type_name(s.dtype)}>")((rows,), (256,), (
        s, _opt(mask), cupy.int64(mb), cupy.int64(ml), cupy.int64(ms), p, cupy.int32(S), cupy.int32(L),
        cupy.int32(per_batch), cupy.float32(scale)))
