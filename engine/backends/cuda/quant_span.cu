// quant_span.cu: CUDA sources of engine/backends/cupy_kernels.py (compiled by cupy's NVRTC, not on their own).
// qgemv_span: qgemv and qgemv_fused (quant.cu: the same arguments, the same contract) for Q8_0, Q4_K and Q6_K
// (F = 2, 3, 4), streaming weight rows in coalesced 16-byte chunks through shared memory (quant_span.cuh).
// x (or its rms_norm, stage_x: rounded into T as rms_norm_rows rounds) is staged once per block. A warp takes
// two weight rows at once, so each x value it reads from shared memory serves both: output rows 2w and 2w + 1
// (16 a block), or with GLU (W2) output row w's gate and up rows (8 a block). The next span's loads are in
// flight while the warp decodes the current one. fp32 sums, one rounding into T (store_row / store_glu).
// W (and W2, Wb, Wc) must be 16-byte aligned; row_bytes need not be a multiple of 16.
// D = 1: the integer-dot route (llama.cpp's mmvq): the staged x (after the norm, rounded into T) is quantised
// once more into int8 blocks of 32 with an fp32 scale (quantise_x), behind xs in shared memory (rows * K bytes,
// then rows * K / 32 floats), and each lane sums its 8 weights with __dp4a (span_dot_i): one fp32 FMA per lane
// and step instead of eight. D = 0: x as T, the weights decoded to fp32 (span_dot).
template <typename T>
__device__ __forceinline__ const unsigned char *qrow(int row, long row_bytes, const unsigned char *W,
        const unsigned char *Wb, const unsigned char *Wc, int n0, int n1) {
    if (Wb == nullptr || row < n0) return W + (size_t)row * row_bytes;
    if (row < n0 + n1) return Wb + (size_t)(row - n0) * row_bytes;
    return Wc + (size_t)(row - n0 - n1) * row_bytes;
}

// A warp's two sums for each x row m < rows into y (lane 0): GLU's gate and up of output `row`, else output rows
// `row` and (when `second`) row + 1 (qgemv_span's and qgemv_direct's epilogue)
template <typename T, int M>
__device__ __forceinline__ void store_pairs(const float (&acc)[2][M], int row, bool second, int rows, int lane,
        int act, const T *bias, const T *bias2, const T *biasb, const T *biasc, const unsigned char *Wb, int n0,
        int n1, const T *res, long res_row, T *y, long y_row, bool glu) {
    #pragma unroll
    for (int m = 0; m < M; m++) {
        const float g = warp_sum(acc[0][m]), u = warp_sum(acc[1][m]);
        if (lane != 0 || m >= rows) continue;
        if (glu) {
            store_glu<T>(g, u, m, row, act, bias, bias2, res, res_row, y, y_row);
        } else {
            const T *wb = reinterpret_cast<const T *>(Wb);
            store_row<T>(g, m, row, bias, biasb, biasc, wb, n0, n1, res, res_row, y, y_row);
            if (second) store_row<T>(u, m, row + 1, bias, biasb, biasc, wb, n0, n1, res, res_row, y, y_row);
        }
    }
}

template <typename T, int F, int M, int D = 0>
__global__ void __launch_bounds__(256, 2) qgemv_span(const unsigned char *__restrict__ W,
        const unsigned char *__restrict__ W2, long row_bytes, const T *__restrict__ x, long x_row,
        const T *__restrict__ nw, float eps, int style, const T *__restrict__ bias, const T *__restrict__ bias2,
        const T *__restrict__ res, long res_row, T *__restrict__ y, long y_row, int N, int K, int rows, int act,
        const unsigned char *__restrict__ Wb, const unsigned char *__restrict__ Wc, const T *__restrict__ biasb,
        const T *__restrict__ biasc, int n0, int n1) {
    using L = typename QSpan<F>::L;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *xs = reinterpret_cast<T *>(smem_raw);
    __shared__ __align__(16) unsigned char wbuf[8][2][L::CPL * 512];
    __shared__ float red[8];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const bool glu = W2 != nullptr;
    const int row = glu ? blockIdx.x * 8 + warp : 2 * (blockIdx.x * 8 + warp);  // output row (the first of two)
    const unsigned char *wr[2] = {nullptr, nullptr};
    if (row < N) {
        wr[0] = qrow<T>(row, row_bytes, W, Wb, Wc, n0, n1);
        if (glu) wr[1] = W2 + (size_t)row * row_bytes;
        else if (row + 1 < N) wr[1] = qrow<T>(row + 1, row_bytes, W, Wb, Wc, n0, n1);
    }
    const int nr = wr[0] == nullptr ? 0 : wr[1] != nullptr ? 2 : 1;
    const int nblk = K / L::BS;
    const long used = (long)nblk * L::TS;
    const int nspan = (nblk + L::SB - 1) / L::SB;
    uint4 buf[2][L::CPL];
    #pragma unroll
    for (int r = 0; r < 2; r++)  // the first span's loads fly while x is staged
        if (r < nr) span_load<L>(wr[r], used, 0, lane, buf[r]);
    stage_x<T>(x, x_row, nw, eps, style, xs, K, rows, red);
    __syncthreads();
    signed char *xq = reinterpret_cast<signed char *>(xs + (long)rows * K);
    float *dxs = reinterpret_cast<float *>(xq + (long)rows * K);
    if constexpr (D == 1) {
        quantise_x<T>(xs, K, rows, xq, dxs);
        __syncthreads();
    }
    if (nr == 0) return;  // after the block's barriers: a whole warp leaves
    unsigned char *wb[2] = {wbuf[warp][0], wbuf[warp][1]};
    const int mis[2] = {(int)((unsigned long long)wr[0] & 15), (int)((unsigned long long)wr[1] & 15)};
    float acc[2][M];
    #pragma unroll
    for (int m = 0; m < M; m++) acc[0][m] = acc[1][m] = 0.f;
    for (int s = 0; s < nspan; s++) {
        #pragma unroll
        for (int r = 0; r < 2; r++)
            if (r < nr) span_store<L>(wr[r], used, s, lane, buf[r], wb[r]);
        __syncwarp();
        if (s + 1 < nspan) {  // the next span's loads fly while this one is decoded
            #pragma unroll
            for (int r = 0; r < 2; r++)
                if (r < nr) span_load<L>(wr[r], used, s + 1, lane, buf[r]);
        }
        if constexpr (D == 1)
            span_dot_i<L, M, 2>(wb, mis, nr, s, nblk, lane, reinterpret_cast<const unsigned char *>(xq), dxs, K, rows,
                                acc, nullptr);
        else
            span_dot<L, T, M, 2>(wb, mis, nr, s, nblk, lane, xs, K, rows, acc, nullptr);
        __syncwarp();
    }
    store_pairs<T, M>(acc, row, nr > 1, rows, lane, act, bias, bias2, biasb, biasc, Wb, n0, n1, res, res_row, y,
                      y_row, glu);
}
