// quant.cu: CUDA sources of engine/backends/cupy_kernels.py (compiled by cupy's NVRTC, not on their own).
// Kernels over quantized weights (engine/quant.py): the packed ggml blocks are read straight from device
// memory and dequantised in registers (quant_formats.cuh), never written out as a float matrix.
//   qgemv          y[m] = x[m] @ W.T (+ b) for m < M <= 8 rows; one warp per weight row, the lanes taking
//                  the row's units in turn, fp32 accumulation, one rounding into T
//   qdequant_rows  rows idx[r] (or r) of W dequantised into T (embedding lookups, dequantize())
// F picks the format: 0 q4_0, 1 q4_1, 2 q8_0, 3 q4_k, 4 q6_k (cupy_kernels.QFORMATS).

template <int F> struct QFmt;
template <> struct QFmt<0> { using Q = QF_q4_0; };
template <> struct QFmt<1> { using Q = QF_q4_1; };
template <> struct QFmt<2> { using Q = QF_q8_0; };
template <> struct QFmt<3> { using Q = QF_q4_k; };
template <> struct QFmt<4> { using Q = QF_q6_k; };

// N consecutive values of T (N * sizeof(T) a multiple of 8 bytes, as aligned) as floats
template <typename T, int N>
__device__ __forceinline__ void load_run(const T *__restrict__ p, float *f) {
    constexpr int BYTES = N * (int)sizeof(T);
    if constexpr (BYTES % 16 == 0) {
        constexpr int V = 16 / (int)sizeof(T);
        #pragma unroll
        for (int j = 0; j < BYTES / 16; j++) {
            const uint4 v = reinterpret_cast<const uint4 *>(p)[j];
            unpack<T>(v, f + j * V);
        }
    } else {
        static_assert(BYTES == 8, "load_run: runs of 8 or 16k bytes");
        const uint2 v = *reinterpret_cast<const uint2 *>(p);
        const T *h = reinterpret_cast<const T *>(&v);
        #pragma unroll
        for (int i = 0; i < N; i++) f[i] = to_f<T>(h[i]);
    }
}

template <typename T, int F, int M>
__global__ void __launch_bounds__(256) qgemv(const unsigned char *__restrict__ W, long row_bytes,
                                             const T *__restrict__ x, long x_row, const T *__restrict__ bias,
                                             T *__restrict__ y, long y_row, int N, int K, int rows) {
    using Q = typename QFmt<F>::Q;
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * 8 + (threadIdx.x >> 5);
    if (row >= N) return;  // a whole warp; no block barrier follows
    const unsigned char *wr = W + (size_t)row * row_bytes;
    const int units = (K / Q::BS) * Q::U;
    float acc[M];
    #pragma unroll
    for (int m = 0; m < M; m++) acc[m] = 0.f;
    #pragma unroll 2
    for (int u = lane; u < units; u += 32) {
        const int b = u / Q::U, s = u % Q::U;
        float w[Q::NR * Q::RL];
        int off[Q::NR];
        Q::decode(wr + (size_t)b * Q::TS, s, w, off);
        #pragma unroll
        for (int m = 0; m < M; m++) {
            if (m < rows) {
                const T *xb = x + (size_t)m * x_row + (size_t)b * Q::BS;
                #pragma unroll
                for (int k = 0; k < Q::NR; k++) {
                    float xf[Q::RL];
                    load_run<T, Q::RL>(xb + off[k], xf);
                    #pragma unroll
                    for (int i = 0; i < Q::RL; i++) acc[m] = fmaf(w[k * Q::RL + i], xf[i], acc[m]);
                }
            }
        }
    }
    #pragma unroll
    for (int m = 0; m < M; m++) {
        const float v = warp_sum(acc[m]);
        if (lane == 0 && m < rows)
            y[(size_t)m * y_row + row] = from_f<T>(bias != nullptr ? __fadd_rn(v, to_f<T>(bias[row])) : v);
    }
}

template <typename T, int F>
__global__ void __launch_bounds__(256) qdequant_rows(const unsigned char *__restrict__ W, long row_bytes,
                                                     const long long *__restrict__ idx, T *__restrict__ y, int K) {
    using Q = typename QFmt<F>::Q;
    const long long src = idx != nullptr ? idx[blockIdx.x] : (long long)blockIdx.x;
    const unsigned char *wr = W + (size_t)src * row_bytes;
    T *yr = y + (size_t)blockIdx.x * K;
    const int units = (K / Q::BS) * Q::U;
    for (int u = threadIdx.x; u < units; u += blockDim.x) {
        const int b = u / Q::U, s = u % Q::U;
        float w[Q::NR * Q::RL];
        int off[Q::NR];
        Q::decode(wr + (size_t)b * Q::TS, s, w, off);
        #pragma unroll
        for (int k = 0; k < Q::NR; k++) {
            #pragma unroll
            for (int i = 0; i < Q::RL; i++) yr[(size_t)b * Q::BS + off[k] + i] = from_f<T>(w[k * Q::RL + i]);
        }
    }
}

// ---- qgemv with the fused ops of gemv (engine/backends/fused.py's linear_fused / linear_group) ------------------
// The contract of gemv over quantized weights: x (or its rms_norm, style != 0) staged in shared memory as T
// (stage_x: the rounding of rms_norm_rows), then one warp per output row j:
//   GLU (W2 != null): gate = W[j] . x and up = W2[j] . x in the same warp, y[m, j] = store_glu's rounding;
//   segments (Wb != null): rows [0, n0) of W, [n0, n0 + n1) of Wb, the rest of Wc (q, k, v; one format);
//   else y = round(acc + b); then round(res + y) with a residual. All weights share one format and K.
template <typename T, int F, int M>
__global__ void __launch_bounds__(256) qgemv_fused(const unsigned char *__restrict__ W,
        const unsigned char *__restrict__ W2, long row_bytes, const T *__restrict__ x, long x_row,
        const T *__restrict__ nw, float eps, int style, const T *__restrict__ bias, const T *__restrict__ bias2,
        const T *__restrict__ res, long res_row, T *__restrict__ y, long y_row, int N, int K, int rows, int act,
        const unsigned char *__restrict__ Wb, const unsigned char *__restrict__ Wc, const T *__restrict__ biasb,
        const T *__restrict__ biasc, int n0, int n1) {
    using Q = typename QFmt<F>::Q;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *xs = reinterpret_cast<T *>(smem_raw);
    __shared__ float red[8];
    stage_x<T>(x, x_row, nw, eps, style, xs, K, rows, red);
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * 8 + (threadIdx.x >> 5);
    if (row >= N) return;  // after the block's barriers: a whole warp leaves
    const unsigned char *w0;
    if (Wb == nullptr || row < n0) w0 = W + (size_t)row * row_bytes;
    else if (row < n0 + n1) w0 = Wb + (size_t)(row - n0) * row_bytes;
    else w0 = Wc + (size_t)(row - n0 - n1) * row_bytes;
    const unsigned char *w1 = W2 != nullptr ? W2 + (size_t)row * row_bytes : nullptr;
    const int nt = W2 != nullptr ? 2 : 1;
    const int units = (K / Q::BS) * Q::U;
    float acc[2][M];
    #pragma unroll
    for (int t = 0; t < 2; t++) {
        #pragma unroll
        for (int m = 0; m < M; m++) acc[t][m] = 0.f;
    }
    #pragma unroll 2
    for (int u = lane; u < units; u += 32) {
        const int b = u / Q::U, s = u % Q::U;
        #pragma unroll
        for (int t = 0; t < 2; t++) {
            if (t < nt) {
                float w[Q::NR * Q::RL];
                int off[Q::NR];
                Q::decode((t == 0 ? w0 : w1) + (size_t)b * Q::TS, s, w, off);
                #pragma unroll
                for (int m = 0; m < M; m++) {
                    if (m < rows) {
                        const T *xb = xs + (size_t)m * K + (size_t)b * Q::BS;
                        #pragma unroll
                        for (int k = 0; k < Q::NR; k++) {
                            float xf[Q::RL];
                            load_run<T, Q::RL>(xb + off[k], xf);
                            #pragma unroll
                            for (int i = 0; i < Q::RL; i++) acc[t][m] = fmaf(w[k * Q::RL + i], xf[i], acc[t][m]);
                        }
                    }
                }
            }
        }
    }
    #pragma unroll
    for (int m = 0; m < M; m++) {
        const float g = warp_sum(acc[0][m]);
        const float up = warp_sum(acc[1][m]);
        if (lane == 0 && m < rows) {
            if (W2 != nullptr)
                store_glu<T>(g, up, m, row, act, bias, bias2, res, res_row, y, y_row);
            else
                store_row<T>(g, m, row, bias, biasb, biasc, reinterpret_cast<const T *>(Wb), n0, n1, res, res_row,
                             y, y_row);
        }
    }
}
