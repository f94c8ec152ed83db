// quant_direct.cu: CUDA sources of engine/backends/cupy_kernels.py (compiled by cupy's NVRTC, not on their own).
// qgemv_direct: qgemv_span's contract and arguments (quant_span.cu) for Q4_K (F = 3), laid out as the fp16 gemv
// is (gemv.cu): weight bytes go straight from global memory into registers, U units a lane in flight, no
// shared-memory row buffers; a warp takes two virtual rows at a time (two output rows, or GLU's gate and up rows
// of one output) over the whole of K. The grid is at most what the GPU holds at once (the launcher: B blocks
// of NW warps an SM), each warp walking pairs p, p + NW x grid, ..., so x (or its rms_norm, stage_x: rounded into
// T) is staged once per block, not once per 16 rows, then widened to fp32 beside it with the sums of each run of 16
// values (Q4_K's mins), so a lane reads its x as fp32 and never converts it. Numerics: qgemv_span's, fp32 sums
// of a * (q . x) - c * sum(x) per run of 16 weights with every w = a * q - c as decode() gives it (within fp32
// rounding of the composition). Needs row_bytes % 16 == 0 and W (W2, Wb, Wc) 16-byte aligned (the launcher
// checks): every unit load is then inside its row. D = 1: the integer route on its own layout (QD_q4_k64: units of
// 64 weights, so a lane decodes the 6-bit scales once per 64; x quantised into int8 blocks of 32 with their exact
// sums, quantise_x, padded so a wavefront's reads hit 32 banks; __dp4a sums per sub-block of 32; numerics of
// numpy_quant.qdot_int8). On an H200 (session 9) it reads gate/up and the LM head at 3.0-3.3 TB/s: the
// instructions a weight went from 3.9 (32-weight units, scales decoded per 32, x sums by __dp4a) to 2.0. Q8_0
// takes the integer route only (F = 2, QD_q8_0h: half of an 8-block unit a lane, x in Q8_0's byte layout); its
// float route stays
// on qgemv_span (a float layout of 16-weight units, each shifted out of two aligned chunks, ran at 0.75x
// qgemv_span's on an H200, session 8).

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

// A unit's weight chunk: LA = 0 through the no-allocate path (ld_stream), LA = 1 allocating in L1 (__ldg). On an
// H200 (bench/read_patterns.py, session 11) a lane's run of 8 to 17 chunks read 2.2-2.3 TB/s no-allocate and
// 3.1-3.6 TB/s through L1, whatever the blocks an SM; runs of 2 chunks 3.5-4.0 and 3.6-4.2.
// LA = 2: p is in shared memory (qgemv_ring's slots, quant_ring.cu), a plain load.
template <int LA> __device__ __forceinline__ uint4 ld_w(const uint4 *p) {
    return LA == 2 ? *p : LA ? __ldg(p) : ld_stream(p);
}
// a unit's block header (shared by the block's units): the cached path, or (LA = 2) shared memory
template <int LA> __device__ __forceinline__ uint4 ld_h(const uint4 *p) { return LA == 2 ? *p : __ldg(p); }

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
    static constexpr int UPB = 8, BS = 256, TS = 144;
    static constexpr bool SPLIT = false;
    struct Unit { uint4 q, h; };
    template <int LA>
    static __device__ __forceinline__ Unit load(const unsigned char *row, int u) {
        const unsigned char *b = row + (size_t)(u >> 3) * TS;
        return {ld_w<LA>(reinterpret_cast<const uint4 *>(b + 16 + 16 * (u & 7))),
                ld_h<LA>(reinterpret_cast<const uint4 *>(b))};
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

// dp4a of unsigned bytes a (0..255) with signed bytes b
__device__ __forceinline__ int q_dp4a_us(unsigned a, unsigned b, int c) {
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// Q4_K for the integer route (D = 1): a unit is 32 quant bytes, chunks 2g and 2g + 1 of a block (g < 4): the low
// nibbles are sub-block 2g (weights 64g + i, i < 32), the high ones sub-block 2g + 1 (64g + 32 + i), so a lane
// decodes the header's scales once per 64 weights. Per sub-block j: isum = sum(q * xq) exactly (__dp4a; the high
// nibbles as bytes & 0xF0, their sum >> 4), then acc += float32(float32(d * sc) * dx) * isum -
// float32(float32(dmin * m) * dx) * sum(xq) in fp32: qdot_int8's terms (numpy_quant), summed in another order.
struct QD_q4_k64 {
    static constexpr int UPB = 4, BS = 256, TS = 144;
    static constexpr bool SPLIT = false;
    struct Unit { uint4 q0, q1, h; };
    template <int LA>
    static __device__ __forceinline__ Unit load(const unsigned char *row, int u) {
        const unsigned char *b = row + (size_t)(u >> 2) * TS + 16 + 32 * (u & 3);
        return {ld_w<LA>(reinterpret_cast<const uint4 *>(b)), ld_w<LA>(reinterpret_cast<const uint4 *>(b + 16)),
                ld_h<LA>(reinterpret_cast<const uint4 *>(row + (size_t)(u >> 2) * TS))};
    }
    // xq, dx, sx: x's values (XPAD bytes of padding after every 64: the 8 lanes of a wavefront, blocks b and b + 1
    // and g = 0..3, then read 8 different 4-bank groups), block scales and sums (int) from the unit's block on
    static constexpr int XPAD = 16, PAD = XPAD;
    static __device__ __forceinline__ long xbytes(long n) { return n / 64 * (64 + XPAD); }  // x's bytes for n values
    static __device__ __forceinline__ void dot2i(const Unit (&v)[2], int u, const signed char *xq, const float *dx,
                                                 const int *sx, float (&acc)[2]) {
        const int g = u & 3;
        const uint4 *xg = reinterpret_cast<const uint4 *>(xq + (64 + XPAD) * g);
        const uint4 l0 = xg[0], l1 = xg[1], h0 = xg[2], h1 = xg[3];
        const unsigned xl[8] = {l0.x, l0.y, l0.z, l0.w, l1.x, l1.y, l1.z, l1.w},
                       xh[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
        const float dl = dx[2 * g], dh = dx[2 * g + 1], sl = (float)sx[2 * g], sh = (float)sx[2 * g + 1];
        #pragma unroll
        for (int r = 0; r < 2; r++) {
            const unsigned w[8] = {v[r].q0.x, v[r].q0.y, v[r].q0.z, v[r].q0.w, v[r].q1.x, v[r].q1.y, v[r].q1.z, v[r].q1.w};
            int il = 0, ih = 0;
            #pragma unroll
            for (int i = 0; i < 8; i++) {
                il = q_dp4a(w[i] & 0x0F0F0F0Fu, xl[i], il);
                ih = q_dp4a_us(w[i] & 0xF0F0F0F0u, xh[i], ih);
            }
            ih >>= 4;  // exact: every term was a multiple of 16
            // the 6-bit scales and mins of sub-blocks 2g, 2g + 1 (ggml's get_scale_min_k4), as bytes (0..3: j < 4)
            const unsigned s0 = v[r].h.y, s1 = v[r].h.z, s2 = v[r].h.w;
            const unsigned sc = g < 2 ? s0 & 0x3F3F3F3Fu : (s2 & 0x0F0F0F0Fu) | ((s0 >> 2) & 0x30303030u);
            const unsigned mn = g < 2 ? s1 & 0x3F3F3F3Fu : ((s2 >> 4) & 0x0F0F0F0Fu) | ((s1 >> 2) & 0x30303030u);
            const int sh8 = 16 * (g & 1);
            const float d = q_h2f(v[r].h.x & 0xFFFF), dmin = q_h2f(v[r].h.x >> 16);
            const float sc0 = (float)((sc >> sh8) & 0xFF), sc1 = (float)((sc >> (sh8 + 8)) & 0xFF),
                        m0 = (float)((mn >> sh8) & 0xFF), m1 = (float)((mn >> (sh8 + 8)) & 0xFF);
            float t = fmaf(__fmul_rn(__fmul_rn(d, sc0), dl), (float)il, acc[r]);
            t = fmaf(-__fmul_rn(__fmul_rn(dmin, m0), dl), sl, t);
            t = fmaf(__fmul_rn(__fmul_rn(d, sc1), dh), (float)ih, t);
            acc[r] = fmaf(-__fmul_rn(__fmul_rn(dmin, m1), dh), sh, t);
        }
    }
};

// Q8_0 for the integer route (D = 1; rows of K % 256 == 0). x is quantised into Q8_0's own byte layout
// (quantise_x with pad < 0: each block's 32 int8 values behind two zero bytes), so a word of the weights meets the
// word of x at the same byte and __dp4a needs no byte shuffles: each word's sum goes to the block its first byte
// lies in (a word that runs into the next block carries that block's scale bytes, against x's zeros). Per block:
// acc += float32(d * dx) * isum (isum exact): qdot_int8's terms, its groups of 8 summed in the integers first.
// Unit u is half h = u & 1 of an 8-block group (272 bytes, 17 aligned 16-byte chunks): the group's chunks 8h ..
// 8h + 8 (9 chunks, chunk 8 read by both halves), blocks 4h .. 4h + 3. On an H200 (session 11) a lane's run of 9
// chunks read 3.6 TB/s where 17 (a whole group a lane, the first layout: 1.06x slower decode) read 3.1-3.3, and
// both 2.2 no-allocate (bench/read_patterns.py). The half's words t = 0..35 (bytes 128h + 4t of the group) meet
// x's there; block J's words are t in [first(h, J), first(h, J + 1)), so one __dp4a chain P over all 36 words gives
// each block's sum as a difference of two of its prefixes, whichever half the lane holds (a select, not an
// index).
struct QD_q8_0h {
    static constexpr int UPB = 2, BS = 256, TS = 272, PAD = -1, CH = 9;
    static constexpr bool SPLIT = true;
    static __device__ __forceinline__ long xbytes(long n) { return n / 32 * 34; }
    struct Unit { uint4 q[CH]; };
    template <int LA>
    static __device__ __forceinline__ Unit load(const unsigned char *row, int u) {
        const uint4 *b = reinterpret_cast<const uint4 *>(row + (size_t)(u >> 1) * TS) + 8 * (u & 1);
        Unit v;
        #pragma unroll
        for (int i = 0; i < CH; i++) v.q[i] = ld_w<LA>(b + i);
        return v;
    }
    static __device__ __forceinline__ unsigned word(const uint4 (&q)[CH], int t) {
        const uint4 &c = q[t >> 2];
        return (t & 3) == 0 ? c.x : (t & 3) == 1 ? c.y : (t & 3) == 2 ? c.z : c.w;
    }
    static constexpr int first(int h, int J) { return (34 * J - 128 * h + 3) / 4; }  // block J's first word
    // xq, dx: x's bytes and block scales from the group's start
    static __device__ __forceinline__ void dot1i(const Unit &v, int u, const signed char *xq, const float *dx,
                                                 float &acc) {
        const int h = u & 1;
        const uint4 *xe = reinterpret_cast<const uint4 *>(xq) + 8 * h;
        int P[4 * CH + 1];
        P[0] = 0;
        #pragma unroll
        for (int c = 0; c < CH; c++) {
            const uint4 xv = xe[c];
            const unsigned xw[4] = {xv.x, xv.y, xv.z, xv.w};
            #pragma unroll
            for (int e = 0; e < 4; e++) P[4 * c + e + 1] = q_dp4a(word(v.q, 4 * c + e), xw[e], P[4 * c + e]);
        }
        const float4 d4 = reinterpret_cast<const float4 *>(dx)[h];
        const float dxv[4] = {d4.x, d4.y, d4.z, d4.w};
        #pragma unroll
        for (int j = 0; j < 4; j++) {
            const int s = h ? P[first(1, 5 + j)] - P[first(1, 4 + j)] : P[first(0, j + 1)] - P[first(0, j)];
            const unsigned wd = h ? word(v.q, (34 * (4 + j) - 128) / 4) : word(v.q, 34 * j / 4);
            const float d = q_h2f((34 * j) & 2 ? wd >> 16 : wd & 0xFFFFu);  // the same half word in both halves
            acc = fmaf(__fmul_rn(d, dxv[j]), (float)s, acc);
        }
    }
};

template <int F, int D> struct QDirect;
template <> struct QDirect<3, 0> { using L = QD_q4_k; };
template <> struct QDirect<3, 1> { using L = QD_q4_k64; };
template <> struct QDirect<2, 1> { using L = QD_q8_0h; };

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

// U: units a lane has in flight per row; B: blocks an SM (launch bounds: 65536 / (256 B) registers a thread).
// P = 1 pipelines: a lane's next batch (the rest of the pair's row, or its next pair) loads into a second set of
// registers while the current one is summed, so each warp keeps loads in flight through its sums; the first two
// batches load while x is staged.
// LA: the weight loads' path (ld_w). XJ > 0 (the integer route, one row of 16-bit T, K <= 2048 XJ, the launcher's
// choice): x staged and quantised in registers, stage_quantise_x, in place of stage_x then quantise_x. NW: warps a
// block (8; more only with XJ > 0 and M = 1: stage_quantise_x's larger blocks, one an SM in place of NW / 8).
template <typename T, int F, int M, int D = 0, int U = 4, int B = 2, int P = 0, int LA = 0, int XJ = 0, int NW = 8>
__global__ void __launch_bounds__(32 * NW, B) qgemv_direct(const unsigned char *__restrict__ W,
        const unsigned char *__restrict__ W2, long row_bytes, const T *__restrict__ x, long x_row,
        const T *__restrict__ nw, float eps, int style, const T *__restrict__ bias, const T *__restrict__ bias2,
        const T *__restrict__ res, long res_row, T *__restrict__ y, long y_row, int N, int K, int rows, int act,
        const unsigned char *__restrict__ Wb, const unsigned char *__restrict__ Wc, const T *__restrict__ biasb,
        const T *__restrict__ biasc, int n0, int n1) {
    using L = typename QDirect<F, D>::L;
    using LI = typename QDirect<F, 1>::L;  // the integer route's layout of x
    constexpr int NR = L::SPLIT ? 1 : 2;  // rows a lane holds of each unit slot (SPLIT: the pair's rows side by side)
    using Buf = typename L::Unit[U][NR];
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *xs = reinterpret_cast<T *>(smem_raw);  // then (from 16 bytes on) xf (fp32) and x16, or (D = 1) xq, dxs, sxs
    float *xf = reinterpret_cast<float *>(smem_raw + (((size_t)rows * K * sizeof(T) + 15) & ~(size_t)15));
    float *x16 = xf + (size_t)rows * K;
    signed char *xq = reinterpret_cast<signed char *>(xf);
    float *dxs = reinterpret_cast<float *>(xq + LI::xbytes((long)rows * K));
    int *sxs = reinterpret_cast<int *>(dxs + (size_t)rows * K / 32);
    __shared__ float red[8];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const bool glu = W2 != nullptr;
    const int pairs = glu ? N : (N + 1) / 2, units = K / L::BS * L::UPB, stride = gridDim.x * NW;
    const int slots = L::SPLIT ? 2 * units : units;  // a pair's unit slots: SPLIT, row r's unit u at r * units + u
    // the batch a lane loads next: pair lp (rows 2lp and 2lp + 1, or GLU's gate and up rows of output lp), units
    // from lu on; the batch it sums: pair cp from cu on
    int lp = blockIdx.x * NW + warp, lu = 0;
    const unsigned char *wr[2];
    auto rows_of = [&](int q) {
        const int row = glu ? q : 2 * q;
        wr[0] = qrow<T>(row, row_bytes, W, Wb, Wc, n0, n1);
        wr[1] = glu ? W2 + (size_t)q * row_bytes : qrow<T>(min(row + 1, N - 1), row_bytes, W, Wb, Wc, n0, n1);
    };
    auto issue = [&](Buf &buf) {  // load the batch (lp, lu) into buf, then step (lp, lu) to the next batch
        #pragma unroll
        for (int i = 0; i < U; i++) {
            const int u = lu + lane + 32 * i;
            if (u < slots) {
                if constexpr (L::SPLIT) {
                    const int r = u >= units;
                    buf[i][0] = L::template load<LA>(r ? wr[1] : wr[0], u - r * units);
                } else {
                    buf[i][0] = L::template load<LA>(wr[0], u);
                    buf[i][NR - 1] = L::template load<LA>(wr[1], u);
                }
            }
        }
        lu += 32 * U;
        if (lu >= slots) {
            lu = 0;
            lp += stride;
            if (lp < pairs) rows_of(lp);
        }
    };
    float acc[2][M];
    #pragma unroll
    for (int m = 0; m < M; m++) acc[0][m] = acc[1][m] = 0.f;
    auto sum = [&](Buf &buf, int cp, int cu) {  // sum batch (cp, cu) from buf; at the pair's end store its rows
        #pragma unroll
        for (int i = 0; i < U; i++) {
            const int su = cu + lane + 32 * i;
            if (su < slots) {
                const int r = L::SPLIT && su >= units, u = su - r * units;
                const int x0 = u / L::UPB * L::BS;  // the unit's block starts at x value x0
                #pragma unroll
                for (int m = 0; m < M; m++) {
                    if (m < rows) {
                        const long xo = (long)m * K + x0;
                        if constexpr (L::SPLIT) {  // one row's unit: its sum goes to row r's accumulator
                            float a = r ? acc[1][m] : acc[0][m];
                            L::dot1i(buf[i][0], u, xq + LI::xbytes(xo), dxs + xo / 32, a);
                            if (r) acc[1][m] = a;
                            else acc[0][m] = a;
                        } else {
                            float a2[2] = {acc[0][m], acc[1][m]};
                            if constexpr (D == 1)
                                L::dot2i(buf[i], u, xq + LI::xbytes(xo), dxs + xo / 32, sxs + xo / 32, a2);
                            else
                                L::dot2(buf[i], u, xf + xo, x16 + xo / 16, a2);
                            acc[0][m] = a2[0];
                            acc[1][m] = a2[1];
                        }
                    }
                }
            }
        }
        if (cu + 32 * U >= slots) {
            const int row = glu ? cp : 2 * cp;
            store_pairs<T, M>(acc, row, row + 1 < N, rows, lane, act, bias, bias2, biasb, biasc, Wb, n0, n1, res,
                              res_row, y, y_row, glu);
            #pragma unroll
            for (int m = 0; m < M; m++) acc[0][m] = acc[1][m] = 0.f;
        }
    };
    // (XJ is the launcher's for one row; the bundle's other row counts compile with it and stage x as before)
    constexpr bool XREG = XJ > 0 && D == 1 && sizeof(T) == 2 && M == 1;
    const NormChunks<T, XREG ? XJ : 2, NW> nc(XREG ? nw : nullptr, style, K);  // before the weights' batches
    Buf b0, b1;
    int np = 0, nu = 0;  // P = 1: the batch in b1
    if (lp < pairs) {  // the first batch loads while x is staged (P = 1: the second too)
        rows_of(lp);
        issue(b0);
        if constexpr (P == 1) {
            np = lp, nu = lu;
            if (np < pairs) issue(b1);
        }
    }
    if constexpr (XREG) {
        quantise_x_after_wait<T, XJ, NW>(x, nc, eps, style, K, xq, dxs, LI::PAD < 0 ? nullptr : sxs, LI::PAD, red);
    } else if constexpr (NW != 8) {  // (never launched: the launcher's NW > 8 comes with XJ > 0 and one row)
        __trap();
    } else {
        pdl_wait();
        pdl_trigger();
        stage_x<T>(x, x_row, nw, eps, style, xs, K, rows, red);
        __syncthreads();
        if constexpr (D == 1) quantise_x<T>(xs, K, rows, xq, dxs, LI::PAD < 0 ? nullptr : sxs, LI::PAD);
        else widen_x<T>(xs, K, rows, xf, x16);
    }
    __syncthreads();
    // no barriers from here on: each warp walks its own pairs. cp, cu: the batch in b0 (P = 0: loaded at the top)
    int cp = blockIdx.x * NW + warp, cu = 0;
    if constexpr (P == 0) {
        bool loaded = true;
        while (cp < pairs) {
            if (!loaded) issue(b0);
            loaded = false;
            sum(b0, cp, cu);
            cp = lp, cu = lu;
        }
    } else {
        while (cp < pairs) {  // b0 holds (cp, cu), b1 (np, nu) is in flight; a buffer summed takes the batch after
            sum(b0, cp, cu);
            cp = np, cu = nu;
            if (cp >= pairs) break;
            np = lp, nu = lu;
            if (np < pairs) issue(b0);
            sum(b1, cp, cu);
            cp = np, cu = nu;
            if (cp >= pairs) break;
            np = lp, nu = lu;
            if (np < pairs) issue(b1);
        }
    }
}
