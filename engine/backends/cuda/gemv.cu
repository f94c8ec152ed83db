// gemv.cu: CUDA sources of engine/backends/cupy_kernels.py (compiled by cupy's NVRTC, not on their own).
// ---- shared by the GEMV kernels ------------------------------------------------------------------------------
// The weight row of virtual row `row`: GLU (W2 != null) interleaves gate (2j = W[j]) and up (2j+1 = W2[j]);
// segments stack [W; Wb; Wc] by rows (n0 rows of W, n1 of Wb).
template <typename T>
__device__ __forceinline__ const T *weight_row(int row, int K, const T *W, const T *W2, const T *Wb, const T *Wc,
                                               int n0, int n1) {
    if (W2 != nullptr) return ((row & 1) ? W2 : W) + (size_t)(row >> 1) * K;
    if (Wb == nullptr || row < n0) return W + (size_t)row * K;
    if (row < n0 + n1) return Wb + (size_t)(row - n0) * K;
    return Wc + (size_t)(row - n0 - n1) * K;
}

// x rows m < rows (or their rms_norm, style != 0) into shared memory as T, one row of K after another
template <typename T>
__device__ void stage_x(const T *__restrict__ x, long x_row, const T *__restrict__ nw, float eps, int style,
                        T *xs, int K, int rows, float *red) {
    const int KV = K / Vec<T>::N;
    for (int m = 0; m < rows; m++) {
        const T *xr = x + (size_t)m * x_row;
        if (style == 0) {
            const uint4 *x4 = reinterpret_cast<const uint4 *>(xr);
            uint4 *d4 = reinterpret_cast<uint4 *>(xs + (size_t)m * K);
            for (int k = threadIdx.x; k < KV; k += 256) d4[k] = x4[k];
        } else {
            norm_row<T>(xr, nw, xs + (size_t)m * K, K, eps, style, red);
            __syncthreads();
        }
    }
}

// stage_x for up to 8 rows at once (rows <= 8, zeros to 8): warp w takes row w's statistic in row_sumsq's
// order (lane l stands for thread 32 j + l of its 256, the warp sums in warp order j), so it equals
// rms_norm_rows' bit for bit; two barriers in all instead of two a row.
template <typename T>
__device__ void stage_x8(const T *__restrict__ x, long x_row, const T *__restrict__ nw, float eps, int style,
                         T *xs, int K, int rows, float *stat) {
    constexpr int V = Vec<T>::N;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, KV = K / V;
    if (style != 0 && warp < rows) {
        const uint4 *x4 = reinterpret_cast<const uint4 *>(x + (size_t)warp * x_row);
        float tot = 0.f;
        for (int j = 0; j < 8; j++) {
            float ss = 0.f;
            for (int k = j * 32 + lane; k < KV; k += 256) {
                float f[V];
                unpack<T>(x4[k], f);
                #pragma unroll
                for (int i = 0; i < V; i++) ss = __fadd_rn(ss, __fmul_rn(f[i], f[i]));
            }
            tot = __fadd_rn(tot, warp_sum(ss));
        }
        if (lane == 0) stat[warp] = tot;
    }
    __syncthreads();
    uint4 *o4 = reinterpret_cast<uint4 *>(xs);
    const uint4 *w4 = reinterpret_cast<const uint4 *>(nw);
    for (int i = threadIdx.x; i < 8 * KV; i += 256) {
        const int m = i / KV, k = i - m * KV;
        if (m >= rows) {
            o4[i] = make_uint4(0u, 0u, 0u, 0u);
            continue;
        }
        const uint4 v = reinterpret_cast<const uint4 *>(x + (size_t)m * x_row)[k];
        if (style == 0) {
            o4[i] = v;
            continue;
        }
        const float sd = __fsqrt_rn(__fadd_rn(__fdiv_rn(stat[m], (float)K), eps));
        const float r = __fdiv_rn(1.f, sd);
        float f[V], gw[V];
        unpack<T>(v, f);
        if (nw != nullptr) unpack<T>(w4[k], gw);
        #pragma unroll
        for (int e = 0; e < V; e++) f[e] = norm_apply<T>(f[e], r, sd, nw != nullptr ? gw[e] : 1.f, style);
        o4[i] = pack<T>(f);
    }
}

// y[m, row] = round(acc + bias of row's segment), then round(res + y) with a residual
template <typename T>
__device__ __forceinline__ void store_row(float v, int m, int row, const T *bias, const T *biasb, const T *biasc,
                                          const T *Wb, int n0, int n1, const T *res, long res_row, T *y, long y_row) {
    const T *bp = bias;
    int br = row;
    if (Wb != nullptr && row >= n0) {
        if (row < n0 + n1) { bp = biasb; br = row - n0; } else { bp = biasc; br = row - n0 - n1; }
    }
    float o = rnd<T>(bp != nullptr ? __fadd_rn(v, to_f<T>(bp[br])) : v);
    if (res != nullptr) o = __fadd_rn(to_f<T>(res[(size_t)m * res_row + row]), o);
    y[(size_t)m * y_row + row] = from_f<T>(o);
}

// GLU: y[m, j] = round(round(act(round(gate + b))) * round(up + b2)), then round(res + y) with a residual
template <typename T>
__device__ __forceinline__ void store_glu(float gate, float up, int m, int j, int act, const T *bias, const T *bias2,
                                          const T *res, long res_row, T *y, long y_row) {
    const float g = rnd<T>(bias != nullptr ? __fadd_rn(gate, to_f<T>(bias[j])) : gate);
    const float u = rnd<T>(bias2 != nullptr ? __fadd_rn(up, to_f<T>(bias2[j])) : up);
    float o = rnd<T>(__fmul_rn(rnd<T>(act_fn(g, act)), u));
    if (res != nullptr) o = __fadd_rn(to_f<T>(res[(size_t)m * res_row + j]), o);
    y[(size_t)m * y_row + j] = from_f<T>(o);
}

// ---- GEMV for up to M rows of x --------------------------------------------------------------------------------
// y[m, n] = sum_k W[n, k] * xin[m, k] for m < rows. xin = x, or rms_norm(x) (style != 0), staged in
// shared memory as T. A block of 8 warps = (8 / S) row groups x S slices of K; each warp streams 16-byte
// chunks of its R rows over its K slice. GLU (W2 != null): virtual rows 2j = W[j] (gate) and 2j+1 =
// W2[j] (up); y[m, j] = round(round(act(round(gate + b))) * round(up + b2)). Else y = round(acc + b),
// then round(res + y) with a residual.
// acc[m][r] += w_r . x_m over one 16-byte chunk k of each row (the products in the order every variant uses)
template <typename T, int R, int M>
__device__ __forceinline__ void gemv_chunk(const uint4 (&wr)[R], const uint4 *xv, int KV, int k, int rows,
                                           float (&acc)[M][R]) {
    constexpr int V = Vec<T>::N;
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
        pdl_wait();  // ids are an earlier kernel's
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
    const int group = warp / S, slice = warp % S;
    const int row0 = (blockIdx.x * (8 / S) + group) * R;
    const int per = (KV + S - 1) / S, k_lo = slice * per, k_hi = min(KV, k_lo + per);
    float acc[M][R];
    const uint4 *wv[R];
    #pragma unroll
    for (int r = 0; r < R; r++) {
        #pragma unroll
        for (int m = 0; m < M; m++) acc[m][r] = 0.f;
        wv[r] = reinterpret_cast<const uint4 *>(weight_row<T>(min(row0 + r, N - 1), K, W, W2, Wb, Wc, n0, n1));
    }
    // the first chunk of weights is in flight while x is staged (and normalised)
    const int k0 = k_lo + lane;
    uint4 pre[R];
    if (k0 < k_hi) {
        #pragma unroll
        for (int r = 0; r < R; r++) pre[r] = ld_stream(wv[r] + k0);
    }
    pdl_wait();
    pdl_trigger();
    stage_x<T>(x, x_row, nw, eps, style, xs, K, rows, red);
    __syncthreads();
    const uint4 *xv = reinterpret_cast<const uint4 *>(xs);
    if (k0 < k_hi) gemv_chunk<T, R, M>(pre, xv, KV, k0, rows, acc);
    #pragma unroll U
    for (int k = k0 + 32; k < k_hi; k += 32) {
        uint4 wr[R];
        #pragma unroll
        for (int r = 0; r < R; r++) wr[r] = ld_stream(wv[r] + k);
        gemv_chunk<T, R, M>(wr, xv, KV, k, rows, acc);
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
        if (lane < M * R && (r & 1) == 0 && m < rows && row < N)
            store_glu<T>(v, up, m, row >> 1, act, bias, bias2, res, res_row, y, y_row);
    } else if (lane < M * R && m < rows && row < N) {
        store_row<T>(v, m, row, bias, biasb, biasc, Wb, n0, n1, res, res_row, y, y_row);
    }
}


// ---- GEMV on tensor cores for up to 8 rows of x (batch decode), f16 / bf16 ------------------------------------
// The contract of gemv (prologue, GLU, segments, bias, residual; not the routed experts) with the products on
// mma.sync m16n8k16 (f32 accumulate): x rows are the 8 columns of B (rows past `rows` staged as zeros), a
// warp computes 16 virtual weight rows over its K slice. K goes in chunks of 32: lane (g, t) = (lane / 4,
// lane % 4) loads 16 bytes of weight rows g and g + 8 and of x row g at k = 8t; its first 4 values feed the
// first mma, the last 4 the second (the K order inside a chunk is permuted alike for A and B, so each output
// is the same sum of products). Block: 8 warps = (8 / S) tiles of 16 rows x S slices of K; partial sums
// meet in shared memory and add in slice order. Each warp keeps U chunks of weights in flight ahead of
// the products (the first ones load during the prologue, stage_x8). Needs K % 32 == 0 and 8 * K values of
// shared memory.
template <typename T, int S, int U>
__global__ void __launch_bounds__(256) gemv_mma(const T *__restrict__ W, const T *__restrict__ W2,
        const T *__restrict__ x, long x_row, const T *__restrict__ nw, float eps, int style,
        const T *__restrict__ bias, const T *__restrict__ bias2, const T *__restrict__ res, long res_row,
        T *__restrict__ y, long y_row, int N, int K, int rows, int act,
        const unsigned long long *__restrict__ Wt, const unsigned long long *__restrict__ W2t,
        const long long *__restrict__ ids, int x_div, long y_prob,
        const T *__restrict__ Wb, const T *__restrict__ Wc, const T *__restrict__ biasb,
        const T *__restrict__ biasc, int n0, int n1) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *xs = reinterpret_cast<T *>(smem_raw);
    __shared__ float red[8 * 128];  // per warp: 16 rows x 8 x rows of partial sums
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int tile = blockIdx.x * (8 / S) + warp / S, slice = warp % S;
    const int C = K / 32, per = (C + S - 1) / S, c_lo = slice * per, c_hi = min(C, c_lo + per);
    const int row_a = tile * 16 + g;
    const uint4 *wa = reinterpret_cast<const uint4 *>(weight_row<T>(min(row_a, N - 1), K, W, W2, Wb, Wc, n0, n1));
    const uint4 *wb = reinterpret_cast<const uint4 *>(weight_row<T>(min(row_a + 8, N - 1), K, W, W2, Wb, Wc, n0, n1));
    // weights in registers, U chunks ahead: the first ones load while x is staged
    uint4 a[U], b[U];
    #pragma unroll
    for (int u = 0; u < U; u++) {
        if (c_lo + u < c_hi) {
            a[u] = ld_stream(wa + (c_lo + u) * 4 + t);
            b[u] = ld_stream(wb + (c_lo + u) * 4 + t);
        }
    }
    pdl_wait();
    pdl_trigger();
    stage_x8<T>(x, x_row, nw, eps, style, xs, K, rows, red);
    __syncthreads();
    const uint4 *xv = reinterpret_cast<const uint4 *>(xs + (size_t)g * K);
    float c[4] = {0.f, 0.f, 0.f, 0.f};
    for (int c0 = c_lo; c0 < c_hi; c0 += U) {  // the bounds are the same for the whole warp (mma.sync)
        uint4 xb[U], na[U], nb[U];
        #pragma unroll
        for (int u = 0; u < U; u++) {
            if (c0 + u < c_hi) xb[u] = xv[(c0 + u) * 4 + t];
            if (c0 + U + u < c_hi) {
                na[u] = ld_stream(wa + (c0 + U + u) * 4 + t);
                nb[u] = ld_stream(wb + (c0 + U + u) * 4 + t);
            }
        }
        #pragma unroll
        for (int u = 0; u < U; u++) {
            if (c0 + u < c_hi) {
                mma16816<T>(c, a[u].x, b[u].x, a[u].y, b[u].y, xb[u].x, xb[u].y);
                mma16816<T>(c, a[u].z, b[u].z, a[u].w, b[u].w, xb[u].z, xb[u].w);
            }
        }
        #pragma unroll
        for (int u = 0; u < U; u++) {
            a[u] = na[u];
            b[u] = nb[u];
        }
    }
    // c[0], c[1]: row g, x rows 2t and 2t + 1; c[2], c[3]: row g + 8, the same x rows
    float *rw = red + warp * 128;
    rw[g * 8 + 2 * t] = c[0];
    rw[g * 8 + 2 * t + 1] = c[1];
    rw[(g + 8) * 8 + 2 * t] = c[2];
    rw[(g + 8) * 8 + 2 * t + 1] = c[3];
    __syncthreads();
    if (slice != 0) return;
    for (int i = lane; i < 128; i += 32) {  // i = rr * 8 + m: row rr of the tile, x row m
        const int rr = i >> 3, m = i & 7, row = tile * 16 + rr;
        if (m >= rows || row >= N || (W2 != nullptr && (rr & 1))) continue;
        float v = 0.f;
        #pragma unroll
        for (int j = 0; j < S; j++) v = __fadd_rn(v, rw[j * 128 + i]);
        if (W2 != nullptr) {  // rows rr (gate) and rr + 1 (up) of one tile
            float up = 0.f;
            #pragma unroll
            for (int j = 0; j < S; j++) up = __fadd_rn(up, rw[j * 128 + i + 8]);
            store_glu<T>(v, up, m, row >> 1, act, bias, bias2, res, res_row, y, y_row);
        } else {
            store_row<T>(v, m, row, bias, biasb, biasc, Wb, n0, n1, res, res_row, y, y_row);
        }
    }
}
