// quant_span.cuh: CUDA sources of engine/backends/cupy_kernels.py (compiled by cupy's NVRTC, not on their own).
// The pieces of qgemv_span (quant_span.cu), the GEMV over Q8_0, Q4_K and Q6_K blocks that streams each weight
// row as it lies in memory. Like quant_formats.cuh, everything here but the Q_HOST-guarded helpers runs on the
// host too (tests/test_gguf_cuda.py compiles it with g++ and walks 32 emulated lanes through a row).
//
// A warp streams its weight rows (two at a time: quant_span.cu) in spans of SB whole blocks (SB * TS bytes, a
// multiple of 16): lane l loads the 16-byte chunks l, l + 32, .. of the span (coalesced, counted from the row's start
// rounded down to 16 bytes, so a row whose byte length is not a multiple of 16 still gets aligned loads; the
// chunk that crosses the row's end is read 2 bytes at a time), keeps them in registers while the warp works on
// the previous span, then stores them to the row's shared-memory buffer. Decoding from there, a step is 256
// consecutive weights (one Q4_K or Q6_K block, eight Q8_0 blocks): lane l takes weights 8l .. 8l + 7 of it, so
// its x values are 8 consecutive T in shared memory (conflict-free 16-byte reads), and lane_q gives them as
// w_i = a * q_i - c with q_i small integers, exact as floats (c = 0 but for Q4_K's mins): each w_i equals
// decode()'s weight bit for bit (__fsub_rn(__fmul_rn(a, q_i), c)). The GEMV sums a * (q . x) - c * sum(x)
// per lane and step (fp32 throughout; not the composition's order, so equal to it within fp32 rounding).
// Integers become floats through the exponent trick (byte | 0x4B000000 is 2^23 + byte), not I2F, which
// runs at an eighth of the FMA rate and would bound the kernel.

#ifndef Q_HOST
__device__ __forceinline__ unsigned q_perm(unsigned x, unsigned y, unsigned s) { return __byte_perm(x, y, s); }
__device__ __forceinline__ float q_bits(unsigned u) { return __int_as_float((int)u); }
template <typename T> __device__ __forceinline__ void q_x8(const T *p, float *f) { load_run<T, 8>(p, f); }
__device__ __forceinline__ void q_u64(const unsigned char *p, unsigned &lo, unsigned &hi) {  // 8-byte aligned
    const uint2 v = *reinterpret_cast<const uint2 *>(p);
    lo = v.x;
    hi = v.y;
}
// 16 bytes of a weight row (global memory, read once: the non-coherent path)
__device__ __forceinline__ uint4 q_ld16(const unsigned char *p) { return __ldg(reinterpret_cast<const uint4 *>(p)); }
__device__ __forceinline__ unsigned q_funnel(unsigned lo, unsigned hi, unsigned sh) {
    return __funnelshift_r(lo, hi, sh);
}
// the signed int8x4 dot product of a and b, plus c
__device__ __forceinline__ int q_dp4a(unsigned a, unsigned b, int c) { return __dp4a((int)a, (int)b, c); }
#endif

// 8 bytes from a 2-byte aligned address as two words, through two aligned 8-byte reads (shared memory: two
// accesses instead of four 2-byte ones)
__device__ __forceinline__ void q_u64_2(const unsigned char *p, unsigned &lo, unsigned &hi) {
    const unsigned o = (unsigned)((unsigned long long)p & 7);
    unsigned w0, w1, w2, w3;
    q_u64(p - o, w0, w1);
    q_u64(p - o + 8, w2, w3);
    const unsigned sh = 8 * (o & 3);
    const bool k = o >= 4;
    lo = q_funnel(k ? w1 : w0, k ? w2 : w1, sh);
    hi = q_funnel(k ? w2 : w1, k ? w3 : w2, sh);
}

// (float)(byte i of v) - bias, exactly (bias an integer < 256)
__device__ __forceinline__ float q_byte_f(unsigned v, int i, float bias) {
    return __fsub_rn(q_bits(q_perm(v, 0x4B000000u, 0x7540u | (unsigned)i)), __fadd_rn(8388608.f, bias));
}

// lane_i (each format): the lane's 8 quants as two words of bytes (weight 8l + i: byte i % 4 of word i / 4) with
// w_i = a * (byte_i - Z) - c, bytes read as int8 (the dp4a route, quant_span.cu's D = 1); lane_q: the same as
// floats q_i = byte_i - Z, exact (Q8_0's signed bytes through ^ 0x80 and a bias of 128)
template <class L>
__device__ __forceinline__ void lane_f(const unsigned char *b, int lane, float *q, float &a, float &c) {
    unsigned lo, hi;
    L::lane_i(b, lane, lo, hi, a, c);
    #pragma unroll
    for (int i = 0; i < 4; i++) {
        q[i] = q_byte_f(lo ^ L::FLIP, i, L::BIAS);
        q[4 + i] = q_byte_f(hi ^ L::FLIP, i, L::BIAS);
    }
}

// Q8_0: a step is blocks 0..7 from `b`; lane l reads block l / 4, quants 8 (l % 4) .. + 7. w = d * q
struct QL_q8_0 {
    static constexpr int BS = 32, TS = 34, STEP = 8, SB = 64, CPL = 5, Z = 0;
    static constexpr unsigned FLIP = 0x80808080u;
    static constexpr float BIAS = 128.f;
    static constexpr bool MINS = false;
    static __device__ __forceinline__ void lane_i(const unsigned char *b, int lane, unsigned &lo, unsigned &hi,
                                                  float &a, float &c) {
        b += TS * (lane >> 2);
        a = q_h2f(q_u16(b));
        c = 0.f;
        q_u64_2(b + 2 + 8 * (lane & 3), lo, hi);
    }
    static __device__ __forceinline__ void lane_q(const unsigned char *b, int lane, float *q, float &a, float &c) {
        lane_f<QL_q8_0>(b, lane, q, a, c);
    }
};

// Q4_K: weight 8l + i is in group g = l / 8, the low (l % 8 < 4) or high nibble of quant byte 32g + 8 (l % 4) + i,
// sub-block l / 4. w = (d * sc) * q - dmin * m
struct QL_q4_k {
    static constexpr int BS = 256, TS = 144, STEP = 1, SB = 16, CPL = 5, Z = 0;
    static constexpr unsigned FLIP = 0u;
    static constexpr float BIAS = 0.f;
    static constexpr bool MINS = true;
    static __device__ __forceinline__ void lane_q(const unsigned char *b, int lane, float *q, float &a, float &c) {
        lane_f<QL_q4_k>(b, lane, q, a, c);
    }
    static __device__ __forceinline__ void lane_i(const unsigned char *b, int lane, unsigned &lo, unsigned &hi,
                                                  float &a, float &c) {
        unsigned hd[4];  // d, dmin; the 12 bytes of scales and mins (one 16-byte read: blocks are 16-byte aligned)
        q_u128(b, hd);
        const unsigned dd = hd[0];
        int sc, m;
        QF_q4_k::scale_min(lane >> 2, hd[1], hd[2], hd[3], &sc, &m);
        a = __fmul_rn(q_h2f(dd & 0xFFFF), (float)sc);
        c = __fmul_rn(q_h2f(dd >> 16), (float)m);
        const unsigned char *p = b + 16 + 32 * (lane >> 3) + 8 * (lane & 3);  // 8-byte aligned (blocks: 16)
        const int sh = (lane & 4) ? 4 : 0;
        q_u64(p, lo, hi);
        lo = (lo >> sh) & 0x0F0F0F0Fu;
        hi = (hi >> sh) & 0x0F0F0F0Fu;
    }
};

// Q6_K: weight 8l + i = 128h + 32j + e (h = l / 16, j = l / 4 % 4, e = 8 (l % 4) + i): low 4 bits the low
// (j < 2) or high nibble of ql byte 64h + 32 (j % 2) + e, high 2 bits bits 2j of qh byte 32h + e, scale
// 8h + 2j + e / 16. w = (d * sc) * (q - 32)
struct QL_q6_k {
    static constexpr int BS = 256, TS = 210, STEP = 1, SB = 8, CPL = 4, Z = 32;
    static constexpr unsigned FLIP = 0u;
    static constexpr float BIAS = 32.f;
    static constexpr bool MINS = false;
    static __device__ __forceinline__ void lane_q(const unsigned char *b, int lane, float *q, float &a, float &c) {
        lane_f<QL_q6_k>(b, lane, q, a, c);
    }
    static __device__ __forceinline__ void lane_i(const unsigned char *b, int lane, unsigned &lo, unsigned &hi,
                                                  float &a, float &c) {
        const int h = lane >> 4, j = (lane >> 2) & 3, e = 8 * (lane & 3);
        const int sc = (signed char)b[192 + 8 * h + 2 * j + ((lane & 3) >> 1)];
        a = __fmul_rn(q_h2f(q_u16(b + 208)), (float)sc);
        c = 0.f;
        const unsigned char *pl = b + 64 * h + 32 * (j & 1) + e, *ph = b + 128 + 32 * h + e;
        const int sl = (j >> 1) * 4, sh = 2 * j;
        unsigned l0, l1, h0, h1;
        q_u64_2(pl, l0, l1);
        q_u64_2(ph, h0, h1);
        lo = ((l0 >> sl) & 0x0F0F0F0Fu) | (((h0 >> sh) & 0x03030303u) << 4);
        hi = ((l1 >> sl) & 0x0F0F0F0Fu) | (((h1 >> sh) & 0x03030303u) << 4);
    }
};

template <int F> struct QSpan;
template <> struct QSpan<2> { using L = QL_q8_0; };
template <> struct QSpan<3> { using L = QL_q4_k; };
template <> struct QSpan<4> { using L = QL_q6_k; };

// The chunks of span s of a row at `wr` (used = its blocks' bytes): counted from the row's start rounded down
// to 16 bytes (mis = how far it is past), chunks [c0, c0 + nch) of that base, the last one ending at or
// before `end` unless it is the row's last (then partial).
struct SpanGeom {
    long c0;
    int nch, mis;
    long end;  // the row's end, in bytes from the base
};
template <class L>
__device__ __forceinline__ SpanGeom span_geom(const unsigned char *wr, long used, int s) {
    static_assert((L::SB * L::TS) % 16 == 0 && L::SB * L::TS / 16 + 1 <= 32 * L::CPL, "span: 16k bytes, CPL a lane");
    SpanGeom g;
    g.mis = (int)((unsigned long long)wr & 15);
    g.end = g.mis + used;
    const long lo = (long)s * (L::SB * L::TS);  // a multiple of 16: the span starts mis past chunk lo / 16
    long hi = lo + g.mis + L::SB * L::TS;
    if (hi > g.end) hi = g.end;
    g.c0 = lo / 16;
    g.nch = (int)((hi + 15) / 16 - g.c0);
    return g;
}

// lane's chunks of span s into buf (16-byte loads; the row's last chunk 2 bytes at a time when it is partial)
template <class L>
__device__ __forceinline__ void span_load(const unsigned char *wr, long used, int s, int lane, uint4 *buf) {
    const SpanGeom g = span_geom<L>(wr, used, s);
    const unsigned char *base = wr - g.mis;
    #pragma unroll
    for (int j = 0; j < L::CPL; j++) {
        const int c = 32 * j + lane;
        if (c < g.nch) {
            const long at = 16 * (g.c0 + c);
            if (at + 16 <= g.end) {
                buf[j] = q_ld16(base + at);
            } else {
                unsigned v[8];  // the 2-byte halves before the row's end (even: its blocks are), zeros after
                #pragma unroll
                for (int k = 0; k < 8; k++) v[k] = at + 2 * k + 2 <= g.end ? q_u16(base + at + 2 * k) : 0u;
                buf[j] = make_uint4(v[0] | v[1] << 16, v[2] | v[3] << 16, v[4] | v[5] << 16, v[6] | v[7] << 16);
            }
        }
    }
}

// buf into the warp's buffer wb: chunk c of the span at wb + 16c, so block i of the span starts at wb + mis + TS i
template <class L>
__device__ __forceinline__ void span_store(const unsigned char *wr, long used, int s, int lane, const uint4 *buf,
                                           unsigned char *wb) {
    const SpanGeom g = span_geom<L>(wr, used, s);
    #pragma unroll
    for (int j = 0; j < L::CPL; j++) {
        const int c = 32 * j + lane;
        if (c < g.nch) reinterpret_cast<uint4 *>(wb)[c] = buf[j];
    }
}

// lane's share of span s of R weight rows (row r staged in wb[r], mis[r] past its chunk grid; rows r >= nr
// absent) against rows m < rows of xs (K values a row; each x value read once for all R rows):
// acc[r][m] += its w . x. wout (host checks only; null in the kernel): row r's weights w_i = a * q_i - c at
// their positions, K apart.
template <class L, typename T, int M, int R>
__device__ __forceinline__ void span_dot(unsigned char *const *wb, const int *mis, int nr, int s, int nblk, int lane,
                                         const T *xs, int K, int rows, float (&acc)[R][M], float *wout) {
    const int nb = nblk - s * L::SB < L::SB ? nblk - s * L::SB : L::SB;
    const int steps = (nb + L::STEP - 1) / L::STEP;
    for (int t = 0; t < steps; t++) {
        if (L::STEP * t + (lane >> 2) * (L::STEP > 1) >= nb) continue;  // Q8_0: past the row's last block
        float q[R][8], a[R], c[R];
        #pragma unroll
        for (int r = 0; r < R; r++)
            if (r < nr) L::lane_q(wb[r] + mis[r] + (long)L::TS * L::STEP * t, lane, q[r], a[r], c[r]);
        const long xo = (long)(s * L::SB + L::STEP * t) * L::BS + 8 * lane;
        if (wout != nullptr) {
            for (int r = 0; r < nr; r++)
                for (int i = 0; i < 8; i++) wout[(long)r * K + xo + i] = __fsub_rn(__fmul_rn(a[r], q[r][i]), c[r]);
        }
        #pragma unroll
        for (int m = 0; m < M; m++) {
            if (m < rows) {
                float xf[8];
                q_x8<T>(xs + (long)m * K + xo, xf);
                float sx = 0.f;
                if constexpr (L::MINS) {  // Q4_K's mins: - c * sum(x)
                    #pragma unroll
                    for (int i = 0; i < 8; i++) sx = __fadd_rn(sx, xf[i]);
                }
                #pragma unroll
                for (int r = 0; r < R; r++) {
                    if (r < nr) {
                        float d = 0.f;
                        #pragma unroll
                        for (int i = 0; i < 8; i++) d = fmaf(q[r][i], xf[i], d);
                        acc[r][m] = fmaf(a[r], d, acc[r][m]);
                        if constexpr (L::MINS) acc[r][m] = fmaf(-c[r], sx, acc[r][m]);
                    }
                }
            }
        }
    }
}

// span_dot's dp4a route (quant_span.cu's D = 1): x as int8 blocks of 32, xq (rows of K bytes) with scales dx (rows
// of K / 32 floats; xq_i * dx stands for x_i: quantise_x). Per lane and step, the lane's 8 weights (one scale
// group of every format) against its 8 xq: isum = sum(byte * xq) - Z * sum(xq) and sx = sum(xq) exactly in
// int32 (__dp4a), then acc += (a * dx) * isum - (c * dx) * sx in fp32 (Q4_K's mins; c = 0 elsewhere).
// iout (host checks only; null in the kernel): row r's isum of lane `lane`'s weights at (r * K + xo) / 8.
template <class L, int M, int R>
__device__ __forceinline__ void span_dot_i(unsigned char *const *wb, const int *mis, int nr, int s, int nblk, int lane,
                                           const unsigned char *xq, const float *dxs, int K, int rows,
                                           float (&acc)[R][M], int *iout) {
    const int nb = nblk - s * L::SB < L::SB ? nblk - s * L::SB : L::SB;
    const int steps = (nb + L::STEP - 1) / L::STEP;
    for (int t = 0; t < steps; t++) {
        if (L::STEP * t + (lane >> 2) * (L::STEP > 1) >= nb) continue;  // Q8_0: past the row's last block
        unsigned lo[R], hi[R];
        float a[R], c[R];
        #pragma unroll
        for (int r = 0; r < R; r++)
            if (r < nr) L::lane_i(wb[r] + mis[r] + (long)L::TS * L::STEP * t, lane, lo[r], hi[r], a[r], c[r]);
        const long xo = (long)(s * L::SB + L::STEP * t) * L::BS + 8 * lane;
        #pragma unroll
        for (int m = 0; m < M; m++) {
            if (m < rows) {
                unsigned xl, xh;
                q_u64(xq + (long)m * K + xo, xl, xh);
                const float dx = dxs[((long)m * K + xo) >> 5];
                int sx = 0;
                if constexpr (L::MINS || L::Z != 0) sx = q_dp4a(xl, 0x01010101u, q_dp4a(xh, 0x01010101u, 0));
                #pragma unroll
                for (int r = 0; r < R; r++) {
                    if (r < nr) {
                        const int isum = q_dp4a(lo[r], xl, q_dp4a(hi[r], xh, 0)) - L::Z * sx;
                        if (iout != nullptr && m == 0) iout[((long)r * K + xo) >> 3] = isum;
                        acc[r][m] = fmaf(__fmul_rn(a[r], dx), (float)isum, acc[r][m]);
                        if constexpr (L::MINS) acc[r][m] = fmaf(-__fmul_rn(c[r], dx), (float)sx, acc[r][m]);
                    }
                }
            }
        }
    }
}

// x's rows (staged in xs, K values a row) as int8 blocks of 32 (all 256 threads; barriers around it are the
// caller's): block b of row m: dx = max|x| / 127 (fp32, rounded to nearest), r = 1 / dx (fp32, rounded to
// nearest), xq_i = rint(x_i * r) (the product rounded to nearest, then to the nearest integer, ties to even),
// clamped to [-127, 127], 0 where max|x| = 0 or x_i * r is NaN: llama.cpp's quantize_row_q8_1 arithmetic but for
// the ties (numpy_quant.quantize_x_q8 is the same). A reciprocal a block and a product a value, not a division a
// value: on an H200 (session 13) the int8 route's down_proj 13.95 -> 12.26 us. A thread takes 8 values of two
// groups at a time (two independent chains in flight), the 4 lanes of a block meet by two shuffles (every thread
// the same trips: the shuffles need the whole warp). sxs (when given): each block's sum(xq), exact. pad: bytes of
// padding after every 64 values (value v at xq[v + pad * (v / 64)]); pad < 0: Q8_0's own layout
// (quant_direct.cu's QD_q8_0h): each block of 32 behind two zero bytes, 34 bytes a block as a Q8_0 row lies
// (value v at xq[34 (v / 32) + 2 + v % 32]).

// a / 127 and 1 / d rounded to nearest, as __fdiv_rn and __frcp_rn give them, without their branches to a slow
// path (a branch between the unrolled trips of a prologue keeps their instructions apart: on an H200, session 25,
// the captured Q4_K decode went 679 -> 714 tok/s with these two as a product and an approximate reciprocal).
// div127_rn: the product by float32(1 / 127), corrected by its residual (exact in an FMA); where the product is not
// finite it is the answer; a below 2^-100 is scaled by 2^64 first and the quotient back (cupy compiles with
// -ftz=true, which would flush a subnormal residual; a subnormal quotient is flushed, as div.rn.ftz flushes it).
// rcp_rn: rcp.approx (within an ulp), one Newton step, then that or the float above it, whichever leaves the
// smaller residual 1 - d y (the step alone rounds a tie the wrong way where d's mantissa is all ones); d below
// 2^-120 is scaled by 2^64 first and the result back (exact: powers of two), so the approximation sees a normal
// number; 1 / 0 is inf. With std::fmaf on the host that sequence gives the correctly rounded reciprocal from any
// start within 4 ulps, for every mantissa. tests/test_gguf_cuda.py compares both with the intrinsics on the card
// for every finite a >= 0 (an absolute maximum) and d = a / 127 (at most 2^122: the approximation's input stays
// below 2^126), and div127_rn with the host's division under x86's flush-to-zero (FTZ, DAZ) in CI. Without the
// scaling, div127_rn differed from the card's __fdiv_rn for 6667196 values of a (the first 0x03fe0001, the last
// below 2^-100), and from the host's under FTZ for the same count and first.
__device__ __forceinline__ float div127_rn(float a) {
    const bool tiny = a < 7.888609052210118e-31f;  // 2^-100: the residual could be subnormal, flushed (cupy: -ftz)
    const float b = __fmul_rn(a, tiny ? 18446744073709551616.f : 1.f);  // 2^64
    const float c = 0.007874015748031496f, q = __fmul_rn(b, c);
    const float f = __fmaf_rn(__fmaf_rn(-q, 127.f, b), c, q);
    return __fmul_rn(fabsf(q) < INFINITY ? f : q, tiny ? 5.421010862427522e-20f : 1.f);  // 2^-64
}
#ifndef Q_HOST
__device__ __forceinline__ float rcp_rn(float d) {
    const bool tiny = d < 7.52316384526264e-37f;  // 2^-120
    const float k = tiny ? 18446744073709551616.f : 1.f, e = __fmul_rn(d, k);  // 2^64
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(e));
    y = __fmaf_rn(__fmaf_rn(-e, y, 1.f), y, y);
    const float u = __uint_as_float(__float_as_uint(y) + 1u);
    y = -__fmaf_rn(-e, u, 1.f) < __fmaf_rn(-e, y, 1.f) ? u : y;
    return d > 0.f ? __fmul_rn(y, k) : INFINITY;
}

// quantise_x's arithmetic for two groups of 8 a thread (v: their values; idx: their group numbers, past n8: none)
__device__ __forceinline__ void quantise_groups(float (&v)[2][8], const int (&idx)[2], int n8, signed char *xq,
                                                float *dxs, int *sxs, int pad) {
    float amax[2];
    #pragma unroll
    for (int h = 0; h < 2; h++) {
        amax[h] = 0.f;
        if (idx[h] < n8) {
            #pragma unroll
            for (int e = 0; e < 8; e++) amax[h] = fmaxf(amax[h], fabsf(v[h][e]));
        }
    }
    #pragma unroll
    for (int h = 0; h < 2; h++) amax[h] = fmaxf(amax[h], __shfl_xor_sync(0xffffffffu, amax[h], 1));
    #pragma unroll
    for (int h = 0; h < 2; h++) amax[h] = fmaxf(amax[h], __shfl_xor_sync(0xffffffffu, amax[h], 2));
    int s8[2] = {0, 0};
    #pragma unroll
    for (int h = 0; h < 2; h++) {
        const int i = idx[h];
        if (i < n8) {
            const float dx = div127_rn(amax[h]), r = rcp_rn(dx);
            unsigned w[2] = {0u, 0u};
            #pragma unroll
            for (int e = 0; e < 8; e++) {  // cvt.rni of NaN is 0, of +-inf the int range (then clamped)
                const int q = amax[h] > 0.f ? max(-127, min(127, __float2int_rn(__fmul_rn(v[h][e], r)))) : 0;
                w[e >> 2] |= ((unsigned)q & 0xFFu) << (8 * (e & 3));
            }
            if (pad >= 0) {
                *reinterpret_cast<uint2 *>(xq + (long)i * 8 + (long)pad * (i >> 3)) = make_uint2(w[0], w[1]);
            } else {  // 2-byte aligned: four halves, and the block's two zero bytes from its first thread
                unsigned short *hp = reinterpret_cast<unsigned short *>(xq + 34L * (i >> 2) + 2 + 8 * (i & 3));
                hp[0] = (unsigned short)(w[0] & 0xFFFFu);
                hp[1] = (unsigned short)(w[0] >> 16);
                hp[2] = (unsigned short)(w[1] & 0xFFFFu);
                hp[3] = (unsigned short)(w[1] >> 16);
                if ((i & 3) == 0) *reinterpret_cast<unsigned short *>(xq + 34L * (i >> 2)) = 0;
            }
            if ((threadIdx.x & 3) == 0) dxs[i >> 2] = dx;
            s8[h] = q_dp4a(w[0], 0x01010101u, q_dp4a(w[1], 0x01010101u, 0));
        }
    }
    if (sxs != nullptr) {  // the block's 4 threads are 4 neighbouring lanes (K % 32 == 0)
        #pragma unroll
        for (int h = 0; h < 2; h++) s8[h] += __shfl_xor_sync(0xffffffffu, s8[h], 1);
        #pragma unroll
        for (int h = 0; h < 2; h++) {
            s8[h] += __shfl_xor_sync(0xffffffffu, s8[h], 2);
            if (idx[h] < n8 && (threadIdx.x & 3) == 0) sxs[idx[h] >> 2] = s8[h];
        }
    }
}

template <typename T>
__device__ __forceinline__ void quantise_x(const T *xs, int K, int rows, signed char *xq, float *dxs,
                                           int *sxs = nullptr, int pad = 0) {
    const int n8 = rows * K / 8;
    for (int base = 0; base < n8; base += 512) {
        float v[2][8];
        const int idx[2] = {base + (int)threadIdx.x, base + 256 + (int)threadIdx.x};
        #pragma unroll
        for (int h = 0; h < 2; h++)
            if (idx[h] < n8) q_x8<T>(xs + (long)idx[h] * 8, v[h]);
        quantise_groups(v, idx, n8, xq, dxs, sxs, pad);
    }
}


// stage_x then quantise_x for one row of 16-bit T (K <= 2048 XJ, XJ even) with x kept in registers: each thread
// loads its chunks of 8 values k = tid + 256 j, all at once (and the norm weight's beside them), sums their squares
// in row_sumsq's order, applies the norm as norm_row does (rounded into T) then quantises them as quantise_x's
// trips take them (groups tid + 512 t and tid + 256 + 512 t are chunks j = 2t and 2t + 1): the same int8 blocks,
// scales and sums as the staged path, bit for bit, without x's round trip through shared memory and its barrier.
// A block of NW > 8 warps (one block an SM where there were NW / 8: x quantised once an SM, not once a block)
// quantises chunks tid + 32 NW j, XChunks' Q a thread, in trips of two likewise, while its first 256 threads also
// load chunks tid + 256 j for the statistic alone, in row_sumsq's order: the same bits again.
// nw4: the norm weight's chunks of the thread's quantised ones (hw: there is one; else 1), loaded by the caller
// (before pdl_wait: a frozen weight). The barrier after it is the caller's.
template <int XJ, int NW> struct XChunks {
    static constexpr int Q = (256 * XJ + 32 * NW - 1) / (32 * NW);  // chunks a thread quantises
};

struct NoOp {
    __device__ __forceinline__ void operator()() const {}
};

// after(): called once x's loads are out (qgemv_ring issues the rest of its weight batches there, behind them)
// ST: the norm style when compiling (0 none, 1 llama, 2 gemma, 3 torch: cupy_kernels.NORM_STYLES), or -1 for the
// launch's `style` read at run time. Known when compiling, only its own arithmetic is in the kernel: on an H200
// (session 25) the captured Q4_K decode 679 -> 709 tok/s on qgemv_ring; the same bits.
template <typename T, int XJ, int NW = 8, int ST = -1, typename After = NoOp>
__device__ __forceinline__ void stage_quantise_x(const T *__restrict__ x, const uint4 (&nw4)[XChunks<XJ, NW>::Q],
                                                 bool hw, float eps, int style_, int K, signed char *xq, float *dxs,
                                                 int *sxs, int pad, float *red, After after = After()) {
    const int style = ST >= 0 ? ST : style_;
    constexpr int NT = 32 * NW, XQ = XChunks<XJ, NW>::Q;
    static_assert(sizeof(T) == 2 && XJ % 2 == 0 && NW % 8 == 0, "16-bit x, chunk pairs, whole blocks of 256");
    const int n8 = K / 8, t = threadIdx.x;  // chunks of x = groups of 8
    const uint4 *x4 = reinterpret_cast<const uint4 *>(x);
    uint4 c[XQ];
    #pragma unroll
    for (int j = 0; j < XQ; j++)
        if (t + NT * j < n8) c[j] = x4[t + NT * j];
    after();
    float r = 1.f, s = 1.f;
    if (style != 0) {
        float ss = 0.f;
        auto add = [&](const uint4 &u) {
            float f[8];
            unpack<T>(u, f);
            #pragma unroll
            for (int i = 0; i < 8; i++) ss = __fadd_rn(ss, __fmul_rn(f[i], f[i]));
        };
        if constexpr (NW == 8) {
            #pragma unroll
            for (int j = 0; j < XJ; j++)
                if (t + 256 * j < n8) add(c[j]);
        } else if (t < 256) {
            uint4 e[XJ];
            #pragma unroll
            for (int j = 0; j < XJ; j++)
                if (t + 256 * j < n8) e[j] = x4[t + 256 * j];
            #pragma unroll
            for (int j = 0; j < XJ; j++)
                if (t + 256 * j < n8) add(e[j]);
        }
        s = __fsqrt_rn(__fadd_rn(__fdiv_rn(block_total<NW>(ss, red), (float)K), eps));
        r = __fdiv_rn(1.f, s);
    }
    #pragma unroll
    for (int tr = 0; tr < (XQ + 1) / 2; tr++) {
        if (2 * NT * tr >= n8) break;  // the same trips for every thread (quantise_groups' shuffles)
        float v[2][8];
        const int idx[2] = {t + 2 * NT * tr, t + NT + 2 * NT * tr};
        #pragma unroll
        for (int h = 0; h < 2; h++) {
            if (2 * tr + h < XQ && idx[h] < n8) {
                unpack<T>(c[2 * tr + h], v[h]);
                if (style != 0) {
                    float g[8];
                    unpack<T>(nw4[2 * tr + h], g);
                    #pragma unroll
                    for (int i = 0; i < 8; i++) v[h][i] = norm_apply<T>(v[h][i], r, s, hw ? g[i] : 1.f, style);
                }
            }
        }
        quantise_groups(v, idx, n8, xq, dxs, sxs, pad);
    }
}


// The norm weight's chunks of a thread's quantised ones (XChunks; hw: there is a norm weight), loaded before
// anything else a frozen-weight GEMV loads (qgemv_direct's XJ > 0, qgemv_ring): the weights' first batches go out
// after it, so it does not queue behind them. On an H200 (session 18's timeline of the captured decode, the norm
// weight then loaded after the batches) the prologues of launches with a norm ran ~1 us (qgemv_direct) and ~2.5 us
// (qgemv_ring, more bytes ahead of it) longer than those without; this order is the fix to try, not yet timed.
template <typename T, int XJ, int NW> struct NormChunks {
    uint4 w[XChunks<XJ, NW>::Q];
    bool hw;
    __device__ __forceinline__ NormChunks(const T *__restrict__ nw, int style, int K)
        : hw(style != 0 && nw != nullptr) {
        #pragma unroll
        for (int j = 0; j < XChunks<XJ, NW>::Q; j++)
            if (hw && threadIdx.x + 32 * NW * j < K / 8)
                w[j] = reinterpret_cast<const uint4 *>(nw)[threadIdx.x + 32 * NW * j];
    }
};

// The int8 route's prologue of a GEMV whose weights are frozen, after its loads have gone out: once the kernel
// before has ended, x's one 16-bit row is normed (nc: NormChunks, loaded first) and quantised in registers
// (stage_quantise_x). The barrier after it is the caller's.
template <typename T, int XJ, int NW, int ST = -1, typename After = NoOp>
__device__ __forceinline__ void quantise_x_after_wait(const T *__restrict__ x, const NormChunks<T, XJ, NW> &nc,
                                                      float eps, int style, int K, signed char *xq, float *dxs,
                                                      int *sxs, int pad, float *red, After after = After()) {
    pdl_wait();
    pdl_trigger();
    stage_quantise_x<T, XJ, NW, ST>(x, nc.w, nc.hw, eps, style, K, xq, dxs, sxs, pad, red, after);
}
#endif
