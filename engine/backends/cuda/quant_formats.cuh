// quant_formats.cuh: CUDA sources of engine/backends/cupy_kernels.py (compiled by cupy's NVRTC, not on their own).
// ggml's block formats (engine/quant.py), each cut into U "units" per block: a unit is the slice of a
// block one thread decodes at a time, NR runs of RL consecutive weights starting at off[k] in the block.
// decode() gives the weights as gguf-py's numpy dequantiser computes them, op for op in float32 (the _rn
// intrinsics keep the compiler from contracting them into FMAs), so a dequantised weight is bit-identical
// to gguf.quants.dequantize's. Loads: 2-byte (blocks of 34, 18 and 210 bytes are only 2-byte aligned),
// 4-byte (Q4_1, 20 bytes) and 16-byte (Q4_K's quants: blocks of 144 bytes).
// Only the helpers q_u16, q_u32, q_u128 and q_h2f touch the device, so a host harness can run the
// decoders too (tests/test_gguf_cuda.py compiles them with g++ where no GPU is present).

#ifndef Q_HOST
__device__ __forceinline__ float q_h2f(unsigned bits) { return __half2float(__ushort_as_half((unsigned short)bits)); }
__device__ __forceinline__ void q_u128(const unsigned char *p, unsigned *q) {
    const uint4 v = *reinterpret_cast<const uint4 *>(p);
    q[0] = v.x; q[1] = v.y; q[2] = v.z; q[3] = v.w;
}
#endif
__device__ __forceinline__ unsigned q_u16(const unsigned char *p) { return *reinterpret_cast<const unsigned short *>(p); }
__device__ __forceinline__ unsigned q_u32(const unsigned char *p) { return *reinterpret_cast<const unsigned int *>(p); }
// 4 bytes from a 2-byte aligned address
__device__ __forceinline__ unsigned q_u32_2(const unsigned char *p) { return q_u16(p) | (q_u16(p + 2) << 16); }

// Q4_0: f16 d, 16 bytes: byte j holds weight j (low nibble) and j + 16 (high); w = d * (q - 8)
struct QF_q4_0 {
    static constexpr int BS = 32, TS = 18, U = 2, NR = 2, RL = 8;
    static __device__ __forceinline__ void decode(const unsigned char *b, int s, float *w, int *off) {
        const float d = q_h2f(q_u16(b));
        const unsigned lo = q_u32_2(b + 2 + 8 * s), hi = q_u32_2(b + 6 + 8 * s);
        off[0] = 8 * s;
        off[1] = 16 + 8 * s;
        #pragma unroll
        for (int i = 0; i < 8; i++) {
            const unsigned byte = ((i < 4 ? lo : hi) >> (8 * (i & 3))) & 0xFF;
            w[i] = __fmul_rn(d, (float)((int)(byte & 0xF) - 8));
            w[8 + i] = __fmul_rn(d, (float)((int)(byte >> 4) - 8));
        }
    }
};

// Q4_1: f16 d, f16 m, 16 bytes as Q4_0's; w = d * q + m
struct QF_q4_1 {
    static constexpr int BS = 32, TS = 20, U = 2, NR = 2, RL = 8;
    static __device__ __forceinline__ void decode(const unsigned char *b, int s, float *w, int *off) {
        const unsigned dm = q_u32(b);
        const float d = q_h2f(dm & 0xFFFF), m = q_h2f(dm >> 16);
        const unsigned lo = q_u32(b + 4 + 8 * s), hi = q_u32(b + 8 + 8 * s);
        off[0] = 8 * s;
        off[1] = 16 + 8 * s;
        #pragma unroll
        for (int i = 0; i < 8; i++) {
            const unsigned byte = ((i < 4 ? lo : hi) >> (8 * (i & 3))) & 0xFF;
            w[i] = __fadd_rn(__fmul_rn(d, (float)(byte & 0xF)), m);
            w[8 + i] = __fadd_rn(__fmul_rn(d, (float)(byte >> 4)), m);
        }
    }
};

// Q8_0: f16 d, 32 int8; w = q * d
struct QF_q8_0 {
    static constexpr int BS = 32, TS = 34, U = 4, NR = 1, RL = 8;
    static __device__ __forceinline__ void decode(const unsigned char *b, int s, float *w, int *off) {
        const float d = q_h2f(q_u16(b));
        const unsigned lo = q_u32_2(b + 2 + 8 * s), hi = q_u32_2(b + 6 + 8 * s);
        off[0] = 8 * s;
        #pragma unroll
        for (int i = 0; i < 8; i++) {
            const int q = (signed char)(((i < 4 ? lo : hi) >> (8 * (i & 3))) & 0xFF);
            w[i] = __fmul_rn((float)q, d);
        }
    }
};

// Q4_K: f16 d, f16 dmin, 12 bytes of eight 6-bit scales and mins, 128 bytes of quants; the 64 weights of
// group g (sub-blocks 2g and 2g + 1) are the low and high nibbles of bytes 32g .. 32g + 31.
// Unit s = (g, h): bytes 32g + 16h .. + 15, weights 64g + 16h + i (low) and 64g + 32 + 16h + i (high).
// w = (d * sc) * q - dmin * m
struct QF_q4_k {
    static constexpr int BS = 256, TS = 144, U = 8, NR = 2, RL = 16;
    // byte j (< 12) of the packed scales, held as three words (selects, not a local array)
    static __device__ __forceinline__ int sbyte(int j, unsigned s0, unsigned s1, unsigned s2) {
        return ((j < 4 ? s0 : j < 8 ? s1 : s2) >> (8 * (j & 3))) & 0xFF;
    }
    static __device__ __forceinline__ void scale_min(int j, unsigned s0, unsigned s1, unsigned s2, int *sc, int *m) {
        if (j < 4) {
            *sc = sbyte(j, s0, s1, s2) & 63;
            *m = sbyte(j + 4, s0, s1, s2) & 63;
        } else {
            *sc = (sbyte(j + 4, s0, s1, s2) & 0xF) | ((sbyte(j - 4, s0, s1, s2) >> 6) << 4);
            *m = (sbyte(j + 4, s0, s1, s2) >> 4) | ((sbyte(j, s0, s1, s2) >> 6) << 4);
        }
    }
    static __device__ __forceinline__ void decode(const unsigned char *b, int s, float *w, int *off) {
        const int g = s >> 1, h = s & 1;
        const unsigned dd = q_u32(b);
        const float d = q_h2f(dd & 0xFFFF), dmin = q_h2f(dd >> 16);
        const unsigned s0 = q_u32(b + 4), s1 = q_u32(b + 8), s2 = q_u32(b + 12);
        int sc0, m0, sc1, m1;
        scale_min(2 * g, s0, s1, s2, &sc0, &m0);
        scale_min(2 * g + 1, s0, s1, s2, &sc1, &m1);
        const float d0 = __fmul_rn(d, (float)sc0), dm0 = __fmul_rn(dmin, (float)m0);
        const float d1 = __fmul_rn(d, (float)sc1), dm1 = __fmul_rn(dmin, (float)m1);
        unsigned q[4];
        q_u128(b + 16 + 32 * g + 16 * h, q);
        off[0] = 64 * g + 16 * h;
        off[1] = 64 * g + 32 + 16 * h;
        #pragma unroll
        for (int i = 0; i < 16; i++) {
            const unsigned byte = (q[i >> 2] >> (8 * (i & 3))) & 0xFF;
            w[i] = __fsub_rn(__fmul_rn(d0, (float)(byte & 0xF)), dm0);
            w[16 + i] = __fsub_rn(__fmul_rn(d1, (float)(byte >> 4)), dm1);
        }
    }
};

// Q6_K: 128 bytes of low 4 bits, 64 bytes of high 2 bits, 16 int8 scales (one per 16 weights), f16 d.
// Half h (128 weights): ql bytes 64h + l and 64h + 32 + l, qh byte 32h + l (l < 32) hold weights
// 128h + l + {0, 32, 64, 96}. Unit s = (h, l0): l = 4 l0 .. 4 l0 + 3, four runs of 4. w = (d * sc) * (q - 32)
struct QF_q6_k {
    static constexpr int BS = 256, TS = 210, U = 16, NR = 4, RL = 4;
    static __device__ __forceinline__ void decode(const unsigned char *b, int s, float *w, int *off) {
        const int h = s >> 3, l0 = s & 7;
        const float d = q_h2f(q_u16(b + 208));
        const unsigned qa = q_u32_2(b + 64 * h + 4 * l0), qb = q_u32_2(b + 64 * h + 32 + 4 * l0);
        const unsigned qh = q_u32_2(b + 128 + 32 * h + 4 * l0);
        const signed char *sc = reinterpret_cast<const signed char *>(b + 192);
        const int is = 8 * h + (l0 >> 2);
        float dk[4];
        #pragma unroll
        for (int k = 0; k < 4; k++) {
            dk[k] = __fmul_rn(d, (float)sc[is + 2 * k]);
            off[k] = 128 * h + 4 * l0 + 32 * k;
        }
        #pragma unroll
        for (int i = 0; i < 4; i++) {
            const unsigned a = (qa >> (8 * i)) & 0xFF, c = (qb >> (8 * i)) & 0xFF, hb = (qh >> (8 * i)) & 0xFF;
            w[i] = __fmul_rn(dk[0], (float)((int)((a & 0xF) | ((hb & 3) << 4)) - 32));
            w[4 + i] = __fmul_rn(dk[1], (float)((int)((c & 0xF) | (((hb >> 2) & 3) << 4)) - 32));
            w[8 + i] = __fmul_rn(dk[2], (float)((int)((a >> 4) | (((hb >> 4) & 3) << 4)) - 32));
            w[12 + i] = __fmul_rn(dk[3], (float)((int)((c >> 4) | (((hb >> 6) & 3) << 4)) - 32));
        }
    }
};
