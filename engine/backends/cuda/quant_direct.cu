// quant_direct.cu: CUDA sources of engine/backends/cupy_kernels.py (compiled by cupy's NVRTC, not on their own).
// qgemv_direct: qgemv_span's contract and arguments (quant_span.cu) for Q4_K (F = 3), laid out as the fp16 gemv
// is (gemv.cu): weight bytes go straight from global memory into registers, U units a lane in flight, no
// shared-memory row buffers; a warp takes two virtual rows at a time (two output rows, or GLU's gate and up rows
// of one output) over the whole of K. The grid is at most what the GPU holds at once (the launcher: two blocks
// an SM), each warp walking pairs p, p + 8 x grid, ..., so x (or its rms_norm, stage_x: rounded into T) is
// staged once per block, not once per 16 rows, then widened to fp32 beside it with the sums of each run of 16
// values (Q4_K's mins), so a lane reads its x as fp32 and never converts it. Numerics: qgemv_span's, fp32 sums
// of a * (q . x) - c * sum(x) per run of 16 weights with every w = a * q - c as decode() gives it (within fp32
// rounding of the composition). Needs row_bytes % 16 == 0 and W (W2, Wb, Wc) 16-byte aligned (the launcher
// checks): every unit load is then inside its row. D = 1: qgemv_span's integer route (x quantised into int8
// blocks of 32 behind the staged x, quantise_x; __dp4a sums per run of 16; numerics of numpy_quant.qdot_int8).
// The same layout for Q8_0 (34-byte blocks, so each 16-weight unit shifted out of two aligned chunks) ran at
// 0.75x qgemv_span's on an H200 and was dropped; Q8_0 stays on qgemv_span.

// Each format: Unit (what a lane holds of one unit in flight), load (global -> registers) and dot2 (acc[r] += row
// r's unit . x for both rows at once, each x value read once; xf: fp32 x from the unit's block on, xs16: the sums
// of x's runs of 16 from there). Shared memory: a warp's x reads are 16-byte loads, 8 lanes a wavefront; a lane
// walks its 4 float4s of a run starting at float4 `rot` (a per-lane rotation, its words rotated alike by two
// select stages), so the 8 lanes of a wavefront hit 8 different 4-bank groups (without it 4 lanes share one).

// rotate4(w, r): w[(i + r) & 3] for i < 4 (r in 0..3; selects, no local memory)
__device__ __forceinline__ void rotate4(unsigned (&w)[4], int r) {
    const unsigned a0 = (r & 2) ? w[2] : w[0], a1 = (r & 2) ? w[3] : w[1], a2 = (r & 2) ? w[0] : w[2],
                   a3 = (r & 2) ? w[1] : w[3];
    w[0] = (r & 1) ? a1 : a0;
    w[1] = (r & 1) ? a2 : a1;
    w[2] = (r & 1) ? a3 : a2;
    w[3] = (r & 1) ? a0 : a3;
}

// acc += 4 weights (bytes of q, each q_byte_f(q, e, bias)) . x4
__device__ __forceinline__ float dot4(unsigned q, float bias, const float4 &x, float acc) {
    acc = fmaf(q_byte_f(q, 0, bias), x.x, acc);
    acc = fmaf(q_byte_f(q, 1, bias), x.y, acc);
    acc = fmaf(q_byte_f(q, 2, bias), x.z, acc);
    return fmaf(q_byte_f(q, 3, bias), x.w, acc);
}

// Q4_K: a unit is 16 quant bytes, chunk j of a block (g = j / 2, h = j % 2): weights 64g + 16h + i (low nibbles,
// sub-block 2g) and 64g + 32 + 16h + i (high nibbles, sub-block 2g + 1), i < 16; the block's 16-byte header
// (d, dmin, 12 bytes of 6-bit scales and mins) comes in through the cached path (its 8 units share it).
// Rotation g: the even (odd) chunks of a block then read 4 different float4 positions of bank groups 0-3 (4-7).
struct QD_q4_k {
    static constexpr int UPB = 8, BS = 256, TS = 144, U = 4;
    struct Unit { uint4 q, h; };
    static __device__ __forceinline__ Unit load(const unsigned char *row, int u) {
        const unsigned char *b = row + (size_t)(u >> 3) * TS;
        return {ld_stream(reinterpret_cast<const uint4 *>(b + 16 + 16 * (u & 7))),
                __ldg(reinterpret_cast<const uint4 *>(b))};
    }
    static __device__ __forceinline__ void dot2(const Unit (&v)[2], int u, const float *xf, const float *xs16,
                                                float (&acc)[2]) {
        const int j = u & 7, g = j >> 1, o = 64 * g + 16 * (j & 1);
        const float4 *xl = reinterpret_cast<const float4 *>(xf + o), *xh = xl + 8;
        unsigned w[2][4] = {{v[0].q.x, v[0].q.y, v[0].q.z, v[0].q.w}, {v[1].q.x, v[1].q.y, v[1].q.z, v[1].q.w}};
        rotate4(w[0], g);
        rotate4(w[1], g);
        float dl[2] = {0.f, 0.f}, dh[2] = {0.f, 0.f};
        #pragma unroll
        for (int i = 0; i < 4; i++) {
            const int k = (i + g) & 3;
            const float4 a = xl[k], b = xh[k];
            #pragma unroll
            for (int r = 0; r < 2; r++) {
                dl[r] = dot4(w[r][i] & 0x0F0F0F0Fu, 0.f, a, dl[r]);
                dh[r] = dot4((w[r][i] >> 4) & 0x0F0F0F0Fu, 0.f, b, dh[r]);
            }
        }
        const float sl = xs16[o >> 4], sh = xs16[(o + 32) >> 4];
        #pragma unroll
        for (int r = 0; r < 2; r++) {
            int sc0, m0, sc1, m1;
            QF_q4_k::scale_min(2 * g, v[r].h.y, v[r].h.z, v[r].h.w, &sc0, &m0);
            QF_q4_k::scale_min(2 * g + 1, v[r].h.y, v[r].h.z, v[r].h.w, &sc1, &m1);
            const float d = q_h2f(v[r].h.x & 0xFFFF), dmin = q_h2f(v[r].h.x >> 16);
            float t = fmaf(__fmul_rn(d, (float)sc0), dl[r], acc[r]);
            t = fmaf(-__fmul_rn(dmin, (float)m0), sl, t);
            t = fmaf(__fmul_rn(d, (float)sc1), dh[r], t);
            acc[r] = fmaf(-__fmul_rn(dmin, (float)m1), sh, t);
        }
    }
    // dot2's integer route (D = 1, quant_span.cuh's span_dot_i numerics): x as int8 blocks of 32 (xq from the
    // unit's block on, dx its blocks' scales), per run of 16: isum = sum(q * xq), sx = sum(xq) exactly (__dp4a),
    // then acc += (a * dx) * isum - (c * dx) * sx in fp32. The low run lies in x block 2g, the high one in 2g + 1.
    static __device__ __forceinline__ void dot2i(const Unit (&v)[2], int u, const signed char *xq, const float *dx,
                                                 float (&acc)[2]) {
        const int j = u & 7, g = j >> 1, o = 64 * g + 16 * (j & 1);
        const uint4 xl = *reinterpret_cast<const uint4 *>(xq + o), xh = *reinterpret_cast<const uint4 *>(xq + o + 32);
        const unsigned l[4] = {xl.x, xl.y, xl.z, xl.w}, h[4] = {xh.x, xh.y, xh.z, xh.w};
        int sl = 0, sh = 0;
        #pragma unroll
        for (int i = 0; i < 4; i++) {
            sl = q_dp4a(l[i], 0x01010101u, sl);
            sh = q_dp4a(h[i], 0x01010101u, sh);
        }
        const float dl = dx[2 * g], dh = dx[2 * g + 1];
        #pragma unroll
        for (int r = 0; r < 2; r++) {
            const unsigned w[4] = {v[r].q.x, v[r].q.y, v[r].q.z, v[r].q.w};
            int il = 0, ih = 0;
            #pragma unroll
            for (int i = 0; i < 4; i++) {
                il = q_dp4a(w[i] & 0x0F0F0F0Fu, l[i], il);
                ih = q_dp4a((w[i] >> 4) & 0x0F0F0F0Fu, h[i], ih);
            }
            int sc0, m0, sc1, m1;
            QF_q4_k::scale_min(2 * g, v[r].h.y, v[r].h.z, v[r].h.w, &sc0, &m0);
            QF_q4_k::scale_min(2 * g + 1, v[r].h.y, v[r].h.z, v[r].h.w, &sc1, &m1);
            const float d = q_h2f(v[r].h.x & 0xFFFF), dmin = q_h2f(v[r].h.x >> 16);
            float t = fmaf(__fmul_rn(__fmul_rn(d, (float)sc0), dl), (float)il, acc[r]);
            t = fmaf(-__fmul_rn(__fmul_rn(dmin, (float)m0), dl), (float)sl, t);
            t = fmaf(__fmul_rn(__fmul_rn(d, (float)sc1), dh), (float)ih, t);
            acc[r] = fmaf(-__fmul_rn(__fmul_rn(dmin, (float)m1), dh), (float)sh, t);
        }
    }
};

template <int F> struct QDirect;
template <> struct QDirect<3> { using L = QD_q4_k; };

// The staged x rows (T, rows x K) widened into xf (fp32, rows x K) with the sums of each run of 16 in x16
// (rows x K / 16; ((run[0:4] + run[4:8]) + run[8:12]) + run[12:16], each quarter summed in order), all 256
// threads, a float4 each (consecutive threads, consecutive 16 bytes: no bank conflicts); the barriers around it
// are the caller's. K % 16 == 0, so the 4 threads of a run are 4 neighbouring lanes of one warp.
template <typename T>
__device__ __forceinline__ void widen_x(const T *xs, int K, int rows, float *xf, float *x16) {
    const int n4 = rows * K / 4, lane = threadIdx.x & 31;
    for (int base = 0; base < n4; base += 256) {  // every thread the same trips (the shuffles need the whole warp)
        const int f = base + threadIdx.x;
        float p = 0.f;
        if (f < n4) {
            const float4 v = make_float4(to_f<T>(xs[4 * f]), to_f<T>(xs[4 * f + 1]), to_f<T>(xs[4 * f + 2]),
                                         to_f<T>(xs[4 * f + 3]));
            reinterpret_cast<float4 *>(xf)[f] = v;
            p = __fadd_rn(__fadd_rn(__fadd_rn(v.x, v.y), v.z), v.w);
        }
        const float q1 = __shfl_down_sync(0xffffffffu, p, 1), q2 = __shfl_down_sync(0xffffffffu, p, 2),
                    q3 = __shfl_down_sync(0xffffffffu, p, 3);
        if (f < n4 && (lane & 3) == 0) x16[f >> 2] = __fadd_rn(__fadd_rn(__fadd_rn(p, q1), q2), q3);
    }
}

template <typename T, int F, int M, int D = 0>
__global__ void __launch_bounds__(256, 2) qgemv_direct(const unsigned char *__restrict__ W,
        const unsigned char *__restrict__ W2, long row_bytes, const T *__restrict__ x, long x_row,
        const T *__restrict__ nw, float eps, int style, const T *__restrict__ bias, const T *__restrict__ bias2,
        const T *__restrict__ res, long res_row, T *__restrict__ y, long y_row, int N, int K, int rows, int act,
        const unsigned char *__restrict__ Wb, const unsigned char *__restrict__ Wc, const T *__restrict__ biasb,
        const T *__restrict__ biasc, int n0, int n1) {
    using L = typename QDirect<F>::L;
    constexpr int U = L::U;  // units a lane has in flight per row
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *xs = reinterpret_cast<T *>(smem_raw);  // then (from 16 bytes on) xf (fp32) and x16, or (D = 1) xq and dxs
    float *xf = reinterpret_cast<float *>(smem_raw + (((size_t)rows * K * sizeof(T) + 15) & ~(size_t)15));
    float *x16 = xf + (size_t)rows * K;
    signed char *xq = reinterpret_cast<signed char *>(xf);
    float *dxs = reinterpret_cast<float *>(xq + (size_t)rows * K);
    __shared__ float red[8];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const bool glu = W2 != nullptr;
    const int pairs = glu ? N : (N + 1) / 2, units = K / L::BS * L::UPB;
    int p = blockIdx.x * 8 + warp;  // the warp's pair: rows 2p and 2p + 1, or GLU's gate and up rows of output p
    const unsigned char *wr[2];
    typename L::Unit pre[U][2];
    auto rows_of = [&](int q) {
        const int row = glu ? q : 2 * q;
        wr[0] = qrow<T>(row, row_bytes, W, Wb, Wc, n0, n1);
        wr[1] = glu ? W2 + (size_t)q * row_bytes : qrow<T>(min(row + 1, N - 1), row_bytes, W, Wb, Wc, n0, n1);
    };
    auto issue = [&](int u0) {
        #pragma unroll
        for (int i = 0; i < U; i++) {
            const int u = u0 + lane + 32 * i;
            if (u < units) {
                pre[i][0] = L::load(wr[0], u);
                pre[i][1] = L::load(wr[1], u);
            }
        }
    };
    if (p < pairs) {  // the first pair's first units load while x is staged
        rows_of(p);
        issue(0);
    }
    stage_x<T>(x, x_row, nw, eps, style, xs, K, rows, red);
    __syncthreads();
    if constexpr (D == 1) quantise_x<T>(xs, K, rows, xq, dxs);
    else widen_x<T>(xs, K, rows, xf, x16);
    __syncthreads();
    bool loaded = true;
    for (; p < pairs; p += gridDim.x * 8) {  // no barriers from here on: each warp walks its own pairs
        if (!loaded) rows_of(p);
        float acc[2][M];
        #pragma unroll
        for (int m = 0; m < M; m++) acc[0][m] = acc[1][m] = 0.f;
        for (int u0 = 0; u0 < units; u0 += 32 * U) {
            if (!loaded) issue(u0);
            loaded = false;
            #pragma unroll
            for (int i = 0; i < U; i++) {
                const int u = u0 + lane + 32 * i;
                if (u < units) {
                    const int x0 = u / L::UPB * L::BS;  // the unit's block starts at x value x0
                    #pragma unroll
                    for (int m = 0; m < M; m++) {
                        if (m < rows) {
                            float a2[2] = {acc[0][m], acc[1][m]};
                            if constexpr (D == 1)
                                L::dot2i(pre[i], u, xq + (size_t)m * K + x0, dxs + ((size_t)m * K + x0) / 32, a2);
                            else
                                L::dot2(pre[i], u, xf + (size_t)m * K + x0, x16 + ((size_t)m * K + x0) / 16, a2);
                            acc[0][m] = a2[0];
                            acc[1][m] = a2[1];
                        }
                    }
                }
            }
        }
        const int row = glu ? p : 2 * p;
        store_pairs<T, M>(acc, row, row + 1 < N, rows, lane, act, bias, bias2, biasb, biasc, Wb, n0, n1, res, res_row,
                          y, y_row, glu);
    }
}
