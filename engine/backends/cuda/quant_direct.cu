// quant_direct.cu: CUDA sources of engine/backends/cupy_kernels.py (compiled by cupy's NVRTC, not on their own).
// qgemv_direct: qgemv_span's contract and arguments (quant_span.cu) for Q4_K (F = 3), laid out as the fp16 gemv
// is (gemv.cu): weight bytes go straight from global memory into registers, U units a lane in
// flight, no shared-memory row buffers; a warp takes two virtual rows (two output rows, or GLU's gate and up
// rows of one output), a block 8 / S such pairs, each pair's K cut into S slices, one warp each, whose partial
// sums meet in shared memory and add in slice order. x (or its rms_norm, stage_x: rounded into T) is staged
// once per block, then widened to fp32 beside it with the sums of each run of 16 values (Q4_K's mins), so a
// lane reads its x as fp32 and never converts it. Numerics: qgemv_span's, fp32 sums of a * (q . x) - c * sum(x)
// per run of 16 weights with every w = a * q - c as decode() gives it (within fp32 rounding of the composition).
// Needs row_bytes % 16 == 0 and W (W2, Wb, Wc) 16-byte aligned (the launcher checks): every unit load is then
// inside its row. Measured on an H200 (Llama-2-7B shapes, captured): 1.07-1.22x qgemv_span's speed for Q4_K. The
// same layout for Q8_0 (34-byte blocks, so each 16-weight unit shifted out of two aligned chunks) ran at 0.75x
// qgemv_span's and was dropped; Q8_0 stays on qgemv_span.

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
};

template <int F> struct QDirect;
template <> struct QDirect<3> { using L = QD_q4_k; };

// The staged x rows (T, rows x K) widened into xf (fp32, rows x K) with the sums of each run of 16 in x16
// (rows x K / 16, each summed in order), all 256 threads; the barriers around it are the caller's.
template <typename T>
__device__ __forceinline__ void widen_x(const T *xs, int K, int rows, float *xf, float *x16) {
    for (int i = threadIdx.x; i < rows * (K / 16); i += 256) {
        float s = 0.f;
        #pragma unroll
        for (int e = 0; e < 16; e++) {
            const float f = to_f<T>(xs[(size_t)i * 16 + e]);
            xf[(size_t)i * 16 + e] = f;
            s = __fadd_rn(s, f);
        }
        x16[i] = s;
    }
}

template <typename T, int F, int S, int M>
__global__ void __launch_bounds__(256, 2) qgemv_direct(const unsigned char *__restrict__ W,
        const unsigned char *__restrict__ W2, long row_bytes, const T *__restrict__ x, long x_row,
        const T *__restrict__ nw, float eps, int style, const T *__restrict__ bias, const T *__restrict__ bias2,
        const T *__restrict__ res, long res_row, T *__restrict__ y, long y_row, int N, int K, int rows, int act,
        const unsigned char *__restrict__ Wb, const unsigned char *__restrict__ Wc, const T *__restrict__ biasb,
        const T *__restrict__ biasc, int n0, int n1) {
    using L = typename QDirect<F>::L;
    constexpr int U = L::U;  // units a lane has in flight per row
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *xs = reinterpret_cast<T *>(smem_raw);  // then xf (fp32) and x16 behind it, 16-byte aligned (launcher)
    float *xf = reinterpret_cast<float *>(smem_raw + (((size_t)rows * K * sizeof(T) + 15) & ~(size_t)15));
    float *x16 = xf + (size_t)rows * K;
    __shared__ float red[8 * M * 2];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, group = warp / S, slice = warp % S;
    const bool glu = W2 != nullptr;
    const int row = glu ? blockIdx.x * (8 / S) + group : 2 * (blockIdx.x * (8 / S) + group);  // the first of two
    const unsigned char *wr[2];
    const int last = N - 1;
    wr[0] = qrow<T>(min(row, last), row_bytes, W, Wb, Wc, n0, n1);
    wr[1] = glu ? W2 + (size_t)min(row, last) * row_bytes : qrow<T>(min(row + 1, last), row_bytes, W, Wb, Wc, n0, n1);
    const int units = K / L::BS * L::UPB, per = (units + S - 1) / S;
    const int u_lo = slice * per, u_hi = min(units, u_lo + per);
    typename L::Unit pre[U][2];  // the first units load while x is staged
    #pragma unroll
    for (int i = 0; i < U; i++) {
        const int u = u_lo + lane + 32 * i;
        if (u < u_hi) {
            pre[i][0] = L::load(wr[0], u);
            pre[i][1] = L::load(wr[1], u);
        }
    }
    stage_x<T>(x, x_row, nw, eps, style, xs, K, rows, red);
    __syncthreads();
    widen_x<T>(xs, K, rows, xf, x16);
    __syncthreads();
    float acc[2][M];
    #pragma unroll
    for (int m = 0; m < M; m++) acc[0][m] = acc[1][m] = 0.f;
    for (int u0 = u_lo; u0 < u_hi; u0 += 32 * U) {
        if (u0 != u_lo) {
            #pragma unroll
            for (int i = 0; i < U; i++) {
                const int u = u0 + lane + 32 * i;
                if (u < u_hi) {
                    pre[i][0] = L::load(wr[0], u);
                    pre[i][1] = L::load(wr[1], u);
                }
            }
        }
        #pragma unroll
        for (int i = 0; i < U; i++) {
            const int u = u0 + lane + 32 * i;
            if (u < u_hi) {
                const int x0 = u / L::UPB * L::BS;  // the unit's block starts at x value x0
                #pragma unroll
                for (int m = 0; m < M; m++) {
                    if (m < rows) {
                        float a2[2] = {acc[0][m], acc[1][m]};
                        L::dot2(pre[i], u, xf + (size_t)m * K + x0, x16 + ((size_t)m * K + x0) / 16, a2);
                        acc[0][m] = a2[0];
                        acc[1][m] = a2[1];
                    }
                }
            }
        }
    }
    #pragma unroll
    for (int m = 0; m < M; m++) {
        #pragma unroll
        for (int r = 0; r < 2; r++) {
            const float v = warp_sum(acc[r][m]);
            if (lane == 0) red[(warp * M + m) * 2 + r] = v;
        }
    }
    __syncthreads();
    if (slice != 0) return;
    const int m = lane >> 1, r = lane & 1;
    float v = 0.f;
    if (lane < 2 * M) {
        #pragma unroll
        for (int j = 0; j < S; j++) v = __fadd_rn(v, red[((warp + j) * M + m) * 2 + r]);
    }
    if (glu) {  // lane 2m holds gate, 2m + 1 up
        const float up = __shfl_down_sync(0xffffffffu, v, 1);
        if (lane < 2 * M && r == 0 && m < rows && row < N)
            store_glu<T>(v, up, m, row, act, bias, bias2, res, res_row, y, y_row);
    } else if (lane < 2 * M && m < rows && row + r < N) {
        store_row<T>(v, m, row + r, bias, biasb, biasc, reinterpret_cast<const T *>(Wb), n0, n1, res, res_row, y,
                     y_row);
    }
}
