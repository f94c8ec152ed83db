// group_norm.cu: CUDA sources of engine/backends/cupy_kernels.py (compiled by cupy's NVRTC, not on their own).
// ---- group_norm (+ activation) -----------------------------------------------------------------------------------
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
    float s = 0.f;
    for (long i = threadIdx.x; i < len; i += 256) s = __fadd_rn(s, to_f<T>(xg[i]));
    s = warp_sum(s);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
    __syncthreads();
    float tot = 0.f;
    #pragma unroll
    for (int i = 0; i < 8; i++) tot = __fadd_rn(tot, red[i]);
    const float mean = __fdiv_rn(tot, (float)len);
    __syncthreads();
    float v = 0.f;
    for (long i = threadIdx.x; i < len; i += 256) {
        const float d = __fsub_rn(to_f<T>(xg[i]), mean);
        v = __fadd_rn(v, __fmul_rn(d, d));
    }
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float vt = 0.f;
    #pragma unroll
    for (int i = 0; i < 8; i++) vt = __fadd_rn(vt, red[i]);
    const float den = __fsqrt_rn(__fadd_rn(__fdiv_rn(vt, (float)len), eps));
    for (long i = threadIdx.x; i < len; i += 256) {
        const int c = g * cg + (int)(i / HW);
        float o = __fdiv_rn(__fsub_rn(to_f<T>(xg[i]), mean), den);
        if (w != nullptr) o = __fmul_rn(o, to_f<T>(w[c]));
        if (b != nullptr) o = __fadd_rn(o, to_f<T>(b[c]));
        o = rnd<T>(o);
        if (act) o = act_fn(o, act);
        yg[i] = from_f<T>(o);
    }
}

