// common.cuh: CUDA sources of engine/backends/cupy_kernels.py (compiled by cupy's NVRTC, not on their own).
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
// the total of every thread's ss over a block of 256: each warp's sum, then the 8 warps' in order (red: 8 floats,
// free to write: a barrier before where it was read). NW > 8 warps (a larger block): the first 256 threads' total,
// every thread at the barrier
template <int NW = 8>
__device__ __forceinline__ float block_total(float ss, float *red) {
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0 && (NW == 8 || threadIdx.x < 256)) red[threadIdx.x >> 5] = ss;
    __syncthreads();
    float tot = 0.f;
    #pragma unroll
    for (int w = 0; w < 8; w++) tot = __fadd_rn(tot, red[w]);
    return tot;
}

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
    __syncthreads();
    return block_total(ss, red);
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
