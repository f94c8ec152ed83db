// group_norm.cu: CUDA sources of engine/backends/cupy_kernels.py (compiled by cupy's NVRTC, not on their own).
// ---- group_norm (+ activation) -----------------------------------------------------------------------------------
// (mean, sum of squared deviations) of xg[lo, hi) over a block of 256 threads: two passes in float32, each
// reduced by rows.cu's block_reduce
template <typename T>
__device__ __forceinline__ float2 gn_stats(const T *__restrict__ xg, long lo, long hi, float *red) {
    float s = 0.f;
    for (long i = lo + threadIdx.x; i < hi; i += 256) s = __fadd_rn(s, to_f<T>(xg[i]));
    const float mean = __fdiv_rn(block_reduce(s, red, false), (float)(hi - lo));
    float v = 0.f;
    for (long i = lo + threadIdx.x; i < hi; i += 256) {
        const float d = __fsub_rn(to_f<T>(xg[i]), mean);
        v = __fadd_rn(v, __fmul_rn(d, d));
    }
    return make_float2(mean, block_reduce(v, red, false));
}

// y[i] = act(round((x[i] - mean) / den * w[c] + b[c])) for i in [lo, hi) of one group (c0: its first channel)
template <typename T>
__device__ __forceinline__ void gn_store(const T *__restrict__ xg, const T *__restrict__ w, const T *__restrict__ b,
                                         T *__restrict__ yg, int c0, long HW, long lo, long hi, float mean, float den,
                                         int act) {
    for (long i = lo + threadIdx.x; i < hi; i += 256) {
        const int c = c0 + (int)(i / HW);
        float o = __fdiv_rn(__fsub_rn(to_f<T>(xg[i]), mean), den);
        if (w != nullptr) o = __fmul_rn(o, to_f<T>(w[c]));
        if (b != nullptr) o = __fadd_rn(o, to_f<T>(b[c]));
        o = rnd<T>(o);
        if (act) o = act_fn(o, act);
        yg[i] = from_f<T>(o);
    }
}

// x (N, C, HW) contiguous; one block of 256 threads per (sample, group): the group is the contiguous range of
// C/G channels x HW positions. As the composition (numpy_nn.group_norm, then the eager activation): mean and
// variance in float32, y = (x - mean) / sqrt(var + eps) * w[c] + b[c] in float32 rounded once to T; act (1 silu,
// 2 gelu_tanh, 3 gelu; 0 none) then computes in float32 from that rounded value and rounds again.
template <typename T>
__global__ void __launch_bounds__(256) group_norm_act(const T *__restrict__ x, const T *__restrict__ w,
        const T *__restrict__ b, T *__restrict__ y, int C, int G, long HW, float eps, int act) {
    __shared__ float red[8];
    const int n = blockIdx.x / G, g = blockIdx.x % G, cg = C / G;
    const long len = (long)cg * HW;
    const size_t base = ((size_t)n * C + (size_t)g * cg) * HW;
    const T *xg = x + base;
    T *yg = y + base;
    const float2 mm = gn_stats<T>(xg, 0, len, red);  // (mean, sum of squared deviations)
    const float den = __fsqrt_rn(__fadd_rn(__fdiv_rn(mm.y, (float)len), eps));
    gn_store<T>(xg, w, b, yg, g * cg, HW, 0, len, mm.x, den, act);
}


// ---- group_norm split over chunks (a large group: few (sample, group) blocks for the card) ------------------------
// group_norm_stats: one block per (sample, group, chunk) of the group's contiguous range: the chunk's count, mean
// and sum of squared deviations (two passes over the chunk, which the second reads from cache) into st[3 * block].
// group_norm_apply: one block per (sample, group, chunk): Chan's combine of the group's chunk statistics in chunk
// order (the same in every block, so every block agrees), then the chunk normalised as group_norm_act does.
template <typename T>
__global__ void __launch_bounds__(256) group_norm_stats(const T *__restrict__ x, float *__restrict__ st, int C,
        int G, long HW, int chunks, long chunk) {
    __shared__ float red[8];
    const int grp = blockIdx.x / chunks, k = blockIdx.x % chunks;
    const int n = grp / G, g = grp % G, cg = C / G;
    const long len = (long)cg * HW, lo = (long)k * chunk, hi = min(len, lo + chunk);
    const T *xg = x + ((size_t)n * C + (size_t)g * cg) * HW;
    const float2 mm = gn_stats<T>(xg, lo, hi, red);
    if (threadIdx.x == 0) {
        st[3 * blockIdx.x] = (float)(hi - lo);
        st[3 * blockIdx.x + 1] = mm.x;
        st[3 * blockIdx.x + 2] = mm.y;
    }
}

template <typename T>
__global__ void __launch_bounds__(256) group_norm_apply(const T *__restrict__ x, const T *__restrict__ w,
        const T *__restrict__ b, T *__restrict__ y, const float *__restrict__ st, int C, int G, long HW, int chunks,
        long chunk, float eps, int act) {
    __shared__ float mv[2];
    const int grp = blockIdx.x / chunks, k = blockIdx.x % chunks;
    const int n = grp / G, g = grp % G, cg = C / G;
    const long len = (long)cg * HW, lo = (long)k * chunk, hi = min(len, lo + chunk);
    if (threadIdx.x == 0) {
        const float *s = st + 3 * (size_t)grp * chunks;
        float cnt = s[0], mean = s[1], m2 = s[2];
        for (int j = 1; j < chunks; j++) {  // Chan et al.: merge (cnt, mean, m2) with chunk j's
            const float cj = s[3 * j], mj = s[3 * j + 1], tot = __fadd_rn(cnt, cj);
            const float d = __fsub_rn(mj, mean);
            mean = __fadd_rn(mean, __fmul_rn(d, __fdiv_rn(cj, tot)));
            m2 = __fadd_rn(__fadd_rn(m2, s[3 * j + 2]), __fmul_rn(__fmul_rn(d, d), __fdiv_rn(__fmul_rn(cnt, cj), tot)));
            cnt = tot;
        }
        mv[0] = mean;
        mv[1] = __fsqrt_rn(__fadd_rn(__fdiv_rn(m2, cnt), eps));
    }
    __syncthreads();
    const float mean = mv[0], den = mv[1];
    const size_t base = ((size_t)n * C + (size_t)g * cg) * HW;
    const T *xg = x + base;
    T *yg = y + base;
    gn_store<T>(xg, w, b, yg, g * cg, HW, lo, hi, mean, den, act);
}
