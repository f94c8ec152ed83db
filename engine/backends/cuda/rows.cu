// rows.cu: CUDA sources of engine/backends/cupy_kernels.py (compiled by cupy's NVRTC, not on their own).
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

// The same softmax with one warp per row for rows of at most 32 * E positions: the row's values stay in
// registers (one read of s and mask, one write of p) and the reductions are warp shuffles; 8 rows a block.
template <typename T, int E>
__global__ void __launch_bounds__(256) softmax_mask_warp(const T *__restrict__ s, const T *__restrict__ mask, long mb,
        long ml, long ms, T *__restrict__ p, int S, int L, int per_batch, float scale, long rows) {
    const size_t row = (size_t)blockIdx.x * 8 + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= (size_t)rows) return;
    const int b = (int)(row / per_batch), l = (int)(row % L);
    const T *sr = s + row * S;
    const T *mr = mask != nullptr ? mask + b * mb + (long)l * ml : nullptr;
    float v[E];
    float m = -INFINITY;
    #pragma unroll
    for (int e = 0; e < E; e++) {
        const int j = e * 32 + lane;
        v[e] = -INFINITY;
        if (j < S) {
            float x = rnd<T>(__fmul_rn(to_f<T>(sr[j]), scale));
            if (mr != nullptr) x = rnd<T>(__fadd_rn(x, to_f<T>(mr[(long)j * ms])));
            v[e] = x;
            m = fmaxf(m, x);
        }
    }
    float M = warp_max(m);
    if (!(M > -INFINITY && M < INFINITY)) M = 0.f;  // as the reference: a non-finite max subtracts 0
    float z = 0.f;
    #pragma unroll
    for (int e = 0; e < E; e++)
        if (e * 32 + lane < S) z += expf(v[e] - M);
    const float Z = warp_sum(z);
    #pragma unroll
    for (int e = 0; e < E; e++) {
        const int j = e * 32 + lane;
        if (j < S) p[row * S + j] = from_f<T>(expf(v[e] - M) / Z);
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

// ---- a step's positions: rotary cos/sin and the causal mask (fused.py's rope and causal_mask, one launch each) ----
// pos (n,) int64 (the B|1 x L positions, contiguous), inv (half,) float32 -> cos, sin (n, 2 half) contiguous in T:
// f = float32(pos) * inv[j mod half] (one rounding), cos(f) and sin(f) in float32 (times scale when scaled),
// rounded once to T.
template <typename T>
__global__ void rope(const long long *__restrict__ pos, const float *__restrict__ inv, long n, int half, float scale,
                     int scaled, T *__restrict__ cos_o, T *__restrict__ sin_o) {
    const int rot = 2 * half;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n * rot; i += (long)gridDim.x * blockDim.x) {
        const int j = (int)(i % rot);
        const float f = __fmul_rn((float)pos[i / rot], inv[j < half ? j : j - half]);
        float c = cosf(f), s = sinf(f);
        if (scaled) c = __fmul_rn(c, scale), s = __fmul_rn(s, scale);
        cos_o[i] = from_f<T>(c);
        sin_o[i] = from_f<T>(s);
    }
}
// q (L,), kp (S,) int64 with element strides qs, ks -> m (L, S) contiguous in T: 0 where kp <= q and kp >= 0 (and,
// win, kp > q - window), else lo (the dtype's most negative finite value, exact in float32).
template <typename T>
__global__ void causal_mask(const long long *__restrict__ q, long qs, const long long *__restrict__ kp, long ks,
                            int L, int S, int win, long long window, float lo, T *__restrict__ m) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < (long)L * S; i += (long)gridDim.x * blockDim.x) {
        const long long qi = q[(i / S) * qs], kj = kp[(i % S) * ks];
        const bool ok = kj <= qi && kj >= 0 && (!win || kj > qi - window);
        m[i] = from_f<T>(ok ? 0.f : lo);
    }
}

// ---- layer_norm over rows: numpy_nn.layer_norm in float32, one block of 256 threads a row (16-byte vectors) ----
// big = max |x| of the row; a finite big >= 2^64 scales the row by 2^-(floor(log2 big) - 40) first (exact), so
// the variance cannot overflow; mean, then the mean of squared deviations, y = (x - mean) / sqrt(var + eps) (* w)
// (+ b), each step rounded in float32 as the composition's, then once to T.
__device__ __forceinline__ float block_reduce(float v, float *red, bool is_max) {
    v = is_max ? warp_max(v) : warp_sum(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float t = red[0];
    #pragma unroll
    for (int i = 1; i < 8; i++) t = is_max ? fmaxf(t, red[i]) : __fadd_rn(t, red[i]);
    return t;
}

template <typename T>
__global__ void __launch_bounds__(256) layer_norm_rows(const T *__restrict__ x, long x_row, const T *__restrict__ w,
        const T *__restrict__ b, T *__restrict__ y, int K, float eps) {
    __shared__ float red[8];
    constexpr int V = Vec<T>::N;
    const uint4 *x4 = reinterpret_cast<const uint4 *>(x + (size_t)blockIdx.x * x_row);
    const uint4 *w4 = reinterpret_cast<const uint4 *>(w), *b4 = reinterpret_cast<const uint4 *>(b);
    uint4 *y4 = reinterpret_cast<uint4 *>(y + (size_t)blockIdx.x * K);
    float f[V], g[V], m = 0.f;
    for (int k = threadIdx.x; k < K / V; k += 256) {
        unpack<T>(x4[k], f);
        #pragma unroll
        for (int i = 0; i < V; i++) m = fmaxf(m, fabsf(f[i]));
    }
    const float big = block_reduce(m, red, true);
    const bool scaled = isfinite(big) && big >= 18446744073709551616.f;  // 2^64
    const float scale = scaled ? exp2f(-(floorf(log2f(big)) - 40.f)) : 1.f;
    float s = 0.f;
    for (int k = threadIdx.x; k < K / V; k += 256) {
        unpack<T>(x4[k], f);
        #pragma unroll
        for (int i = 0; i < V; i++) s = __fadd_rn(s, __fmul_rn(f[i], scale));
    }
    const float mean = __fdiv_rn(block_reduce(s, red, false), (float)K);
    float v = 0.f;
    for (int k = threadIdx.x; k < K / V; k += 256) {
        unpack<T>(x4[k], f);
        #pragma unroll
        for (int i = 0; i < V; i++) {
            const float d = __fsub_rn(__fmul_rn(f[i], scale), mean);
            v = __fadd_rn(v, __fmul_rn(d, d));
        }
    }
    const float var = __fdiv_rn(block_reduce(v, red, false), (float)K);
    const float den = __fsqrt_rn(__fadd_rn(var, __fmul_rn(__fmul_rn(eps, scale), scale)));
    for (int k = threadIdx.x; k < K / V; k += 256) {
        unpack<T>(x4[k], f);
        if (w != nullptr) unpack<T>(w4[k], g);
        float h[V];
        if (b != nullptr) unpack<T>(b4[k], h);
        #pragma unroll
        for (int i = 0; i < V; i++) {
            float o = (scaled && den == 0.f) ? 0.f : __fdiv_rn(__fsub_rn(__fmul_rn(f[i], scale), mean), den);
            if (w != nullptr) o = __fmul_rn(o, g[i]);
            if (b != nullptr) o = __fadd_rn(o, h[i]);
            f[i] = o;
        }
        y4[k] = pack<T>(f);
    }
}

// ---- bias_fill: out (outer, C, inner) contiguous = b[c] broadcast, in 16-byte vectors (a bias preloaded for a
// GEMM or conv that adds it with beta = 1). inner_v == 0: inner is 1 and C a multiple of the vector (a linear's
// rows); else inner is inner_v vectors (a conv's positions), each vector within one channel.
template <typename T>
__global__ void __launch_bounds__(256) bias_fill(const T *__restrict__ b, T *__restrict__ out, long total_v, int C,
                                                 long inner_v) {
    constexpr int V = Vec<T>::N;
    const uint4 *b4 = reinterpret_cast<const uint4 *>(b);
    uint4 *o4 = reinterpret_cast<uint4 *>(out);
    const long cv = C / V;
    for (long i = blockIdx.x * 256L + threadIdx.x; i < total_v; i += (long)gridDim.x * 256L) {
        if (inner_v == 0) {
            o4[i] = b4[i % cv];
        } else {
            const T val = b[(i / inner_v) % C];
            uint4 u;
            T *h = reinterpret_cast<T *>(&u);
            #pragma unroll
            for (int j = 0; j < V; j++) h[j] = val;
            o4[i] = u;
        }
    }
}
