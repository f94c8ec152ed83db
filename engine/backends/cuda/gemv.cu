// gemv.cu: CUDA sources of engine/backends/cupy_kernels.py (compiled by cupy's NVRTC, not on their own).
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
