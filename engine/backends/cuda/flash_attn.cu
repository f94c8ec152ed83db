// flash_attn.cu: CUDA source of engine/backends/cupy_flash.py, its own program after prelude.cuh and mma.cuh.
//
// ---- flash attention forward (16-bit, float32 accumulate and softmax) ---------------------------------------------
// out (B, Hq, L, E) = softmax(scale * q @ k^T + mask) @ v with the (L, S) scores never stored: a block takes
// FA_BM = 64 query rows of one (batch, head), 4 warps of 16 rows each, and walks the keys in tiles of FA_BN = 64
// (FlashAttention-2's online softmax: a running row max m and sum l in float32, the output rescaled by
// exp(m_old - m_new) when the max grows). Both products run on mma.sync m16n8k16: S = Q K^T with Q and K staged
// in shared memory (E zero-padded to EP, a multiple of 16, so padded columns add nothing), then O += P V with
// P the score fragments rounded to T (the C fragment of two adjacent 8-key tiles is the A fragment of 16 keys).
// k/v head = h / rep (GQA). Rows, keys and head dims past L, S, E are staged as zeros; keys past S and masked
// scores are -inf; a row whose every score is -inf (fully masked) has l = 0 and outputs 0.
// causal: key j is kept for query i when j <= i (top-left aligned, torch's convention when L != S); key tiles
// past the block's last row are never loaded. mask_kind: 0 none, 1 bool (uint8, nonzero keeps), 2 additive T,
// 3 additive float; mask element (b, h, i, j) at b * mb + h * mh + i * ml + j * ms (0 strides broadcast).
// q/k/v: unit last stride, 16-byte aligned rows (the launcher checks), strides in elements.
// PIPE false: each key tile is loaded (16-byte loads, stores to shared memory), then used. PIPE true: two K/V
// buffers filled by cp.async, the next tile in flight while this one is used, and V's B fragments read by
// ldmatrix.trans (one instruction for 2 x 2 fragments instead of 8 16-bit loads).
constexpr int FA_BM = 64, FA_BN = 64, FA_THREADS = 128;

// two floats rounded to T, packed as one mma register (lo in the low half): one cvt.rn.{f16,bf16}x2.f32
template <typename T> __device__ __forceinline__ unsigned fa_pack(float lo, float hi);
template <> __device__ __forceinline__ unsigned fa_pack<__half>(float lo, float hi) {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const unsigned *>(&v);
}
template <> __device__ __forceinline__ unsigned fa_pack<__nv_bfloat16>(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const unsigned *>(&v);
}
__device__ __forceinline__ unsigned fa_ld32(const void *p) { return *reinterpret_cast<const unsigned *>(p); }

// rows [0, 64) x columns [0, EP) of dst (row stride EP + 8) from src rows (row stride rs): rows < nrows and
// columns < E from memory, the rest zeros. 16-byte chunks (E % 8 == 0).
template <typename T, int EP>
__device__ __forceinline__ void fa_stage(T *dst, const T *__restrict__ src, long rs, int nrows, int E) {
    constexpr int LD = EP + 8, CH = EP / 8;
    for (int c = threadIdx.x; c < FA_BM * CH; c += FA_THREADS) {
        const int r = c / CH, col = (c % CH) * 8;
        uint4 val = make_uint4(0u, 0u, 0u, 0u);
        if (r < nrows && col < E) val = *reinterpret_cast<const uint4 *>(src + (long)r * rs + col);
        *reinterpret_cast<uint4 *>(dst + r * LD + col) = val;
    }
}

// fa_stage by cp.async (16 bytes a copy; src-size 0 writes zeros), completed by fa_wait and a barrier
template <typename T, int EP>
__device__ __forceinline__ void fa_stage_async(T *dst, const T *__restrict__ src, long rs, int nrows, int E) {
    constexpr int LD = EP + 8, CH = EP / 8;
    for (int c = threadIdx.x; c < FA_BM * CH; c += FA_THREADS) {
        const int r = c / CH, col = (c % CH) * 8;
        const bool ok = r < nrows && col < E;
        const T *from = ok ? src + (long)r * rs + col : src;
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(smem_addr(dst + r * LD + col)),
                     "l"(from), "r"(ok ? 16 : 0) : "memory");
    }
}
__device__ __forceinline__ void fa_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void fa_wait() {
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
}
// four 8 x 8 matrices of 16-bit values, transposed: lanes 8i..8i+7 give the row addresses of matrix i; lane
// (g, t) gets rows 2t, 2t+1 of column g of matrix i in register i (the B fragment of row-major [k][n] storage)
__device__ __forceinline__ void fa_ldsm_t(unsigned &r0, unsigned &r1, unsigned &r2, unsigned &r3, const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(smem_addr(p)) : "memory");
}

template <typename T, int EP, bool PIPE>
__global__ void __launch_bounds__(FA_THREADS) flash_fwd(
        const T *__restrict__ q, long qb, long qh, long ql, const T *__restrict__ k, long kb, long kh, long ks,
        const T *__restrict__ v, long vb, long vh, long vs, const void *__restrict__ mask, int mask_kind, long mb,
        long mh, long ml, long ms, T *__restrict__ out, long ob, long oh, long ol, int Hq, int rep, int L, int S,
        int E, float scale, int causal) {
    constexpr int LD = EP + 8, NT = EP / 8, KT = EP / 16;
    constexpr float LOG2E = 1.4426950408889634f;
    constexpr int NBUF = PIPE ? 2 : 1;
    extern __shared__ uint4 fa_smem[];
    T *Qs = reinterpret_cast<T *>(fa_smem);
    T *Ks0 = Qs + FA_BM * LD;  // NBUF K tiles, then NBUF V tiles
    T *Vs0 = Ks0 + NBUF * FA_BN * LD;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int m0 = blockIdx.x * FA_BM, h = blockIdx.y, b = blockIdx.z, hk = h / rep;
    const int w0 = m0 + warp * 16;  // the warp's first query row
    const int row[2] = {w0 + g, w0 + g + 8};  // this thread's two query rows
    const T *kp = k + b * kb + hk * kh, *vp = v + b * vb + hk * vh;

    const T *qp = q + b * qb + h * qh + (long)m0 * ql;

    float o[NT][4];
    #pragma unroll
    for (int n = 0; n < NT; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.f, 0.f};
    const int n_end = causal ? min(S, m0 + FA_BM) : S;
    const int n_tiles = (n_end + FA_BN - 1) / FA_BN;
    const bool live = w0 < L;
    if (PIPE) {  // Q and the first K/V tile: group 0
        fa_stage_async<T, EP>(Qs, qp, ql, min(FA_BM, L - m0), E);
        fa_stage_async<T, EP>(Ks0, kp, ks, min(FA_BN, S), E);
        fa_stage_async<T, EP>(Vs0, vp, vs, min(FA_BN, S), E);
        fa_commit();
    } else {
        fa_stage<T, EP>(Qs, qp, ql, min(FA_BM, L - m0), E);
    }

    for (int it = 0; it < n_tiles; it++) {
        const int n0 = it * FA_BN;
        T *Ks = Ks0 + (it % NBUF) * FA_BN * LD, *Vs = Vs0 + (it % NBUF) * FA_BN * LD;
        if (PIPE) {
            if (it + 1 < n_tiles) {  // the next tile into the other buffer (its readers passed the last barrier)
                const int n1 = n0 + FA_BN, nb = (it + 1) % NBUF;
                fa_stage_async<T, EP>(Ks0 + nb * FA_BN * LD, kp + (long)n1 * ks, ks, min(FA_BN, S - n1), E);
                fa_stage_async<T, EP>(Vs0 + nb * FA_BN * LD, vp + (long)n1 * vs, vs, min(FA_BN, S - n1), E);
                fa_commit();
                fa_wait<1>();  // every group but the newest: this tile (and Q) landed
            } else {
                fa_wait<0>();
            }
            __syncthreads();  // ... for every thread's copies
        } else {
            __syncthreads();  // the previous tile's readers are done (and, first time, nothing)
            fa_stage<T, EP>(Ks, kp + (long)n0 * ks, ks, min(FA_BN, S - n0), E);
            fa_stage<T, EP>(Vs, vp + (long)n0 * vs, vs, min(FA_BN, S - n0), E);
            __syncthreads();
        }
        if (live && !(causal && n0 > w0 + 15)) {  // warp-uniform: else no row of the warp sees this tile
            // s = Q K^T for the warp's 16 rows x 64 keys: 8 tiles of 8 keys
            float s[8][4];
            #pragma unroll
            for (int j = 0; j < 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
            #pragma unroll
            for (int kk = 0; kk < KT; kk++) {
                const T *qa = Qs + (warp * 16 + g) * LD + kk * 16 + 2 * t;
                const unsigned a0 = fa_ld32(qa), a1 = fa_ld32(qa + 8 * LD), a2 = fa_ld32(qa + 8),
                               a3 = fa_ld32(qa + 8 * LD + 8);
                #pragma unroll
                for (int j = 0; j < 8; j++) {
                    const T *kb_ = Ks + (j * 8 + g) * LD + kk * 16 + 2 * t;
                    mma16816<T>(s[j], a0, a1, a2, a3, fa_ld32(kb_), fa_ld32(kb_ + 8));
                }
            }
            // scale, causal / bounds / mask: -inf where a key is not kept
            #pragma unroll
            for (int j = 0; j < 8; j++) {
                #pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int i = row[e >> 1], col = n0 + j * 8 + 2 * t + (e & 1);
                    float x = s[j][e] * scale;
                    bool keep = col < S && (!causal || col <= i);
                    if (keep && mask_kind && i < L) {
                        const long mi = b * mb + h * mh + i * ml + col * ms;
                        if (mask_kind == 1) keep = reinterpret_cast<const unsigned char *>(mask)[mi] != 0;
                        else if (mask_kind == 2) x += to_f<T>(reinterpret_cast<const T *>(mask)[mi]);
                        else x += reinterpret_cast<const float *>(mask)[mi];
                    }
                    s[j][e] = keep ? x : -INFINITY;
                }
            }
            // online softmax: each row's max over the quad of lanes holding it
            #pragma unroll
            for (int r = 0; r < 2; r++) {
                float mx = -INFINITY;
                #pragma unroll
                for (int j = 0; j < 8; j++) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
                const float mnew = fmaxf(mrow[r], mx);
                const float base = mnew == -INFINITY ? 0.f : mnew;  // all -inf so far: p = 0, not nan
                const float alpha = exp2f((mrow[r] - base) * LOG2E);  // 0 while mrow is -inf
                mrow[r] = mnew;
                lrow[r] *= alpha;
                #pragma unroll
                for (int n = 0; n < NT; n++) { o[n][2 * r] *= alpha; o[n][2 * r + 1] *= alpha; }
                #pragma unroll
                for (int j = 0; j < 8; j++) {
                    #pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const float p = exp2f((s[j][2 * r + e] - base) * LOG2E);
                        s[j][2 * r + e] = p;
                        lrow[r] += p;
                    }
                }
            }
            // O += P V: 4 steps of 16 keys, NT tiles of 8 head dims
            #pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                const unsigned a0 = fa_pack<T>(s[2 * kk][0], s[2 * kk][1]), a1 = fa_pack<T>(s[2 * kk][2], s[2 * kk][3]),
                               a2 = fa_pack<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                               a3 = fa_pack<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
                if (PIPE) {
                    // matrix i = lane / 8: keys kk * 16 + (i % 2) * 8 + lane % 8, head dims of tile 2 * np + i / 2
                    const int mi = lane >> 3, key = kk * 16 + (mi & 1) * 8 + (lane & 7);
                    #pragma unroll
                    for (int np = 0; np < NT / 2; np++) {
                        unsigned b0, b1, b2, b3;
                        fa_ldsm_t(b0, b1, b2, b3, Vs + key * LD + (2 * np + (mi >> 1)) * 8);
                        mma16816<T>(o[2 * np], a0, a1, a2, a3, b0, b1);
                        mma16816<T>(o[2 * np + 1], a0, a1, a2, a3, b2, b3);
                    }
                } else {
                    const unsigned short *Vu = reinterpret_cast<const unsigned short *>(Vs);
                    #pragma unroll
                    for (int n = 0; n < NT; n++) {
                        const int at = (kk * 16 + 2 * t) * LD + n * 8 + g;
                        const unsigned b0 = (unsigned)Vu[at] | ((unsigned)Vu[at + LD] << 16);
                        const unsigned b1 = (unsigned)Vu[at + 8 * LD] | ((unsigned)Vu[at + 9 * LD] << 16);
                        mma16816<T>(o[n], a0, a1, a2, a3, b0, b1);
                    }
                }
            }
        }
        if (PIPE) __syncthreads();  // every warp is done with this buffer before the next prefetch refills it
    }
    // normalise by the row sums (over the quad) and store rows < L, head dims < E
    #pragma unroll
    for (int r = 0; r < 2; r++) {
        float l = lrow[r];
        l += __shfl_xor_sync(0xffffffff, l, 1);
        l += __shfl_xor_sync(0xffffffff, l, 2);
        const float inv = l > 0.f ? 1.f / l : 0.f;
        if (row[r] < L) {
            T *op = out + (long)b * ob + (long)h * oh + (long)row[r] * ol;
            #pragma unroll
            for (int n = 0; n < NT; n++) {
                const int col = n * 8 + 2 * t;
                if (col < E)
                    *reinterpret_cast<unsigned *>(op + col) = fa_pack<T>(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
            }
        }
    }
}
