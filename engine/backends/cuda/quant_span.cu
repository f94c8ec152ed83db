// quant_span.cu: CUDA sources of engine/backends/cupy_kernels.py (compiled by cupy's NVRTC, not on their own).
// qgemv_span: qgemv and qgemv_fused (quant.cu: the same arguments, the same contract) for Q8_0, Q4_K and Q6_K
// (F = 2, 3, 4), streaming each weight row in coalesced 16-byte chunks through shared memory (quant_span.cuh).
// x (or its rms_norm, stage_x: rounded into T as rms_norm_rows rounds) is staged once per block; one warp per
// output row, the next span's loads in flight while the warp decodes the current one; GLU (W2): the warp
// streams the gate row, then the up row. fp32 sums, one rounding into T (store_row / store_glu).
// Weight rows must start 16-byte aligned in the pointer W (row_bytes need not be a multiple of 16).
template <typename T, int F, int M>
__global__ void __launch_bounds__(256, M <= 2 ? 4 : 2) qgemv_span(const unsigned char *__restrict__ W,
        const unsigned char *__restrict__ W2, long row_bytes, const T *__restrict__ x, long x_row,
        const T *__restrict__ nw, float eps, int style, const T *__restrict__ bias, const T *__restrict__ bias2,
        const T *__restrict__ res, long res_row, T *__restrict__ y, long y_row, int N, int K, int rows, int act,
        const unsigned char *__restrict__ Wb, const unsigned char *__restrict__ Wc, const T *__restrict__ biasb,
        const T *__restrict__ biasc, int n0, int n1) {
    using L = typename QSpan<F>::L;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *xs = reinterpret_cast<T *>(smem_raw);
    __shared__ __align__(16) unsigned char wbuf[8][L::CPL * 512];
    __shared__ float red[8];
    stage_x<T>(x, x_row, nw, eps, style, xs, K, rows, red);
    __syncthreads();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int row = blockIdx.x * 8 + warp;
    if (row >= N) return;  // after the block's barriers: a whole warp leaves
    const unsigned char *w0;
    if (Wb == nullptr || row < n0) w0 = W + (size_t)row * row_bytes;
    else if (row < n0 + n1) w0 = Wb + (size_t)(row - n0) * row_bytes;
    else w0 = Wc + (size_t)(row - n0 - n1) * row_bytes;
    const unsigned char *w1 = W2 != nullptr ? W2 + (size_t)row * row_bytes : nullptr;
    const int nblk = K / L::BS;
    const long used = (long)nblk * L::TS;
    const int nspan = (nblk + L::SB - 1) / L::SB;
    const int total = (W2 != nullptr ? 2 : 1) * nspan;
    unsigned char *wb = wbuf[warp];
    float acc0[M], acc1[M];
    #pragma unroll
    for (int m = 0; m < M; m++) acc0[m] = acc1[m] = 0.f;
    uint4 buf[L::CPL];
    span_load<L>(w0, used, 0, lane, buf);
    for (int ss = 0; ss < total; ss++) {
        const bool up = ss >= nspan;
        const int s = up ? ss - nspan : ss;
        const unsigned char *wr = up ? w1 : w0;
        span_store<L>(wr, used, s, lane, buf, wb);
        __syncwarp();
        if (ss + 1 < total) {  // the next span's loads fly while this one is decoded
            const bool up2 = ss + 1 >= nspan;
            span_load<L>(up2 ? w1 : w0, used, up2 ? ss + 1 - nspan : ss + 1, lane, buf);
        }
        const int mis = (int)((unsigned long long)wr & 15);
        if (up) span_dot<L, T, M>(wb, mis, s, nblk, lane, xs, K, rows, acc1, nullptr);
        else span_dot<L, T, M>(wb, mis, s, nblk, lane, xs, K, rows, acc0, nullptr);
        __syncwarp();
    }
    #pragma unroll
    for (int m = 0; m < M; m++) {
        const float g = warp_sum(acc0[m]);
        const float u = warp_sum(acc1[m]);
        if (lane == 0 && m < rows) {
            if (W2 != nullptr)
                store_glu<T>(g, u, m, row, act, bias, bias2, res, res_row, y, y_row);
            else
                store_row<T>(g, m, row, bias, biasb, biasc, reinterpret_cast<const T *>(Wb), n0, n1, res, res_row,
                             y, y_row);
        }
    }
}
