// attention.cu: CUDA sources of engine/backends/cupy_kernels.py (compiled by cupy's NVRTC, not on their own).
// ---- decode attention: one query row per (b, h) over S cached positions ------------------------------------------
// Scores follow transformers' eager rounding: s = round(round(round(q.k) * scale) + mask) (float32 when T is
// float32). A position t >= S or whose mask is <= -1e4 is dead: its K and V rows are not read and it contributes
// exp(.) = 0 exactly. Grid (B * Hq, n_chunks) over chunks of CH positions (128; attn_cluster's also 64 or 32),
// 128 threads, in four phases:
//   A  thread i reads the mask of position t0 + i (which positions are live, into shared memory); a chunk with
//      nothing live writes its empty partial and stops.
//   B  K and V rows are split into NC slices of 16 bytes; thread (g, c) (G = 128 / NC row groups, g = tid / NC)
//      takes slice c of the rows of positions g, g + G, ... (NJ of them): the NC threads of a group read a row's
//      contiguous bytes, so each load is coalesced. All its K slices are loaded at once (16 at a time past 16),
//      and V's too where NJ <= 16 (held in registers until phase D, else loaded there). The dot of q's slice c
//      with each K slice (fp32 fmaf in d order) goes to shared memory.
//   C  thread i adds its position's NC slice dots in slice order and rounds the score s_i; M = the largest live
//      score of the chunk, p_i = exp(s_i - M) (0 when dead), l = sum p_i (warp sums, then warps in order).
//   D  thread (g, c) accumulates p_i v_i over its positions in order (skipping p_i = 0); the G groups' sums are
//      added in group order: the chunk's partial (M, l, acc[D]) (M = -inf, l = 0, acc = 0: nothing live).
// Rows must be 16-byte aligned (cupy_kernels.attention_ok checks base pointers and strides).

// p, held in a register: the compiler cannot recompute it from its terms at each use
__device__ __forceinline__ const char *pinned(const char *p) {
    asm volatile("" : "+l"(p));
    return p;
}

// EARLY (attn_cluster inside a captured step, a programmatic dependent launch): phase A's mask (the step's, written
// long before) is read before pdl_wait, and the live positions' K and V rows are prefetched into L2 there, while the
// kernel before (rotary_cache, which writes q and this step's K/V row) ends; q and every K/V load come after the
// wait (L2 is coherent, so the prefetched lines hold what rotary_cache wrote): the same numbers, sooner.
template <typename T, int PER, int CH = 128, bool EARLY = false>
__device__ __forceinline__ void attn_chunk(const T *__restrict__ q, long qb, long qh,
        const T *__restrict__ k, long kb, long kh, long ks, const T *__restrict__ v, long vb, long vh, long vs,
        const T *__restrict__ mask, long mb, long ms, float *__restrict__ out, int Hq, int Hkv, int S,
        float scale) {
    constexpr int NT = 128, D = PER * 32, VN = Vec<T>::N, NC = D / VN, G = NT / NC;
    constexpr int NJ = (CH + G - 1) / G, UB = NJ < 16 ? NJ : 16;  // positions a thread; loads issued at once
    constexpr bool HOLD_V = NJ <= 16;
    __shared__ float mask_s[NT];  // position i's mask value (0 without a mask), -inf when dead
    __shared__ float dot_s[CH][NC + 1];  // [position][slice]; + 1: thread i's reads of row i hit distinct banks
    __shared__ float p_s[NT], red_m[4], red_l[4], acc_s[G][D];
    const int bh = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int b = bh / Hq, h = bh % Hq, kvh = h / (Hq / Hkv), t0 = blockIdx.y * CH;
    const int g = tid / NC, sc = tid % NC;  // phases B and D: row group and 16-byte slice
    const bool active = g < G;  // G * NC < 128 when NC does not divide 128 (D = 96)

    // A: position t0 + tid's mask; thread (g, c)'s slice of q (loads issued together)
    const int t = t0 + tid;
    float mval = 0.f;
    bool live = tid < CH && t < S;
    if (live && mask != nullptr) {
        mval = to_f<T>(mask[b * mb + (long)t * ms]);
        live = mval > -1e4f;
    }
    mask_s[tid] = live ? mval : -INFINITY;
    float qc[VN];
    if constexpr (!EARLY) {
        #pragma unroll
        for (int e = 0; e < VN; e++) qc[e] = active ? to_f<T>(q[b * qb + h * qh + sc * VN + e]) : 0.f;
    }
    // thread (g, c)'s j-th row is G * j rows after row g: its slice address advances by a fixed step (computed
    // here, before the barrier, and held: no per-row multiply)
    const long kstep = G * ks * (long)sizeof(T), vstep = G * vs * (long)sizeof(T);
    const char *kg = pinned(reinterpret_cast<const char *>(k + b * kb + kvh * kh + (long)(t0 + g) * ks + sc * VN));
    const char *vg = pinned(reinterpret_cast<const char *>(v + b * vb + kvh * vh + (long)(t0 + g) * vs + sc * VN));
    if (!__syncthreads_or(live)) {
        for (int d = tid; d < D; d += NT) out[2 + d] = 0.f;
        if (tid == 0) { out[0] = -INFINITY; out[1] = 0.f; }
        return;
    }
    if constexpr (EARLY) {  // each 128-byte line of the live rows' K and V once (its first slice's thread)
        if (active && (sc * VN * (int)sizeof(T)) % 128 == 0) {
            const char *kp = kg, *vp = vg;
            for (int j = 0; j < NJ; j++) {
                const int i = g + G * j;
                if (i < CH && mask_s[i] != -INFINITY) {
                    asm volatile("prefetch.global.L2 [%0];" ::"l"(kp));
                    asm volatile("prefetch.global.L2 [%0];" ::"l"(vp));
                }
                kp += kstep;
                vp += vstep;
            }
        }
        pdl_wait();  // q and this step's K/V row are the kernel before's
        pdl_trigger();
        #pragma unroll
        for (int e = 0; e < VN; e++) qc[e] = active ? to_f<T>(q[b * qb + h * qh + sc * VN + e]) : 0.f;
    }

    // B: K slices (and V's where they fit) of the live positions, then the slice dots
    uint4 vkeep[HOLD_V ? NJ : 1];  // V slices held for phase D (read there only where p_i != 0: the live ones)
    if (active) {
        #pragma unroll
        for (int j0 = 0; j0 < NJ; j0 += UB) {
            uint4 kk[UB];
            unsigned ok = 0u;  // bit u: row j0 + u is live
            #pragma unroll
            for (int u = 0; u < UB; u++) {
                const int j = j0 + u, i = g + G * j;
                if (j < NJ && i < CH && mask_s[i] != -INFINITY) {
                    ok |= 1u << u;
                    kk[u] = __ldg(reinterpret_cast<const uint4 *>(kg));
                    if constexpr (HOLD_V) vkeep[u] = __ldg(reinterpret_cast<const uint4 *>(vg));
                }
                kg = pinned(kg + kstep);
                if constexpr (HOLD_V) vg = pinned(vg + vstep);
            }
            #pragma unroll
            for (int u = 0; u < UB; u++) {
                if (!(ok >> u & 1u)) continue;
                float f[VN], s = 0.f;
                unpack<T>(kk[u], f);
                #pragma unroll
                for (int e = 0; e < VN; e++) s = fmaf(qc[e], f[e], s);
                dot_s[g + G * (j0 + u)][sc] = s;
            }
        }
    }
    __syncthreads();

    // C: the score of position tid, the chunk's max M, p = exp(s - M), l
    const float mv = mask_s[tid];
    const bool alive = mv != -INFINITY;
    float s = -INFINITY;
    if (alive) {
        float dot = dot_s[tid][0];
        #pragma unroll
        for (int j = 1; j < NC; j++) dot = __fadd_rn(dot, dot_s[tid][j]);
        s = rnd<T>(__fmul_rn(rnd<T>(dot), scale));
        if (mask != nullptr) s = rnd<T>(__fadd_rn(s, mv));
    }
    const float wm = warp_max(s);
    if (lane == 0) red_m[warp] = wm;
    __syncthreads();
    const float M = fmaxf(fmaxf(red_m[0], red_m[1]), fmaxf(red_m[2], red_m[3]));
    const float p = alive ? expf(s - M) : 0.f;
    p_s[tid] = p;
    const float wl = warp_sum(p);
    if (lane == 0) red_l[warp] = wl;
    __syncthreads();

    // D: acc = sum p_i v_i, per group, then the groups in order
    float acc[VN];
    #pragma unroll
    for (int e = 0; e < VN; e++) acc[e] = 0.f;
    if (active) {
        #pragma unroll
        for (int j0 = 0; j0 < NJ; j0 += UB) {
            float pj[UB];
            uint4 vv[UB];
            #pragma unroll
            for (int u = 0; u < UB; u++) {
                const int i = g + G * (j0 + u);
                pj[u] = j0 + u < NJ && i < CH ? p_s[i] : 0.f;
                if constexpr (HOLD_V) {
                    vv[u] = vkeep[u];
                } else {
                    if (pj[u] != 0.f) vv[u] = __ldg(reinterpret_cast<const uint4 *>(vg));
                    vg = pinned(vg + vstep);
                }
            }
            #pragma unroll
            for (int u = 0; u < UB; u++) {
                if (pj[u] == 0.f) continue;
                float f[VN];
                unpack<T>(vv[u], f);
                #pragma unroll
                for (int e = 0; e < VN; e++) acc[e] = fmaf(pj[u], f[e], acc[e]);
            }
        }
        #pragma unroll
        for (int e = 0; e < VN; e++) acc_s[g][sc * VN + e] = acc[e];
    }
    __syncthreads();
    for (int d = tid; d < D; d += NT) {
        float a = acc_s[0][d];
        #pragma unroll
        for (int r = 1; r < G; r++) a = __fadd_rn(a, acc_s[r][d]);
        out[2 + d] = a;
    }
    if (tid == 0) {
        out[0] = M;
        out[1] = __fadd_rn(__fadd_rn(red_l[0], red_l[1]), __fadd_rn(red_l[2], red_l[3]));
    }
}

// Where block (blockIdx.x, blockIdx.y) of a grid (B * Hq, n_chunks) writes its chunk's partial (D + 2 floats).
__device__ __forceinline__ float *chunk_out(float *part, int D) {
    return part + ((size_t)blockIdx.x * gridDim.y + blockIdx.y) * (D + 2);
}

template <typename T, int PER, int CH = 128>
__global__ void __launch_bounds__(128, 2) attn_partial(const T *__restrict__ q, long qb, long qh,
        const T *__restrict__ k, long kb, long kh, long ks, const T *__restrict__ v, long vb, long vh, long vs,
        const T *__restrict__ mask, long mb, long ms, float *__restrict__ part, int Hq, int Hkv, int S,
        float scale) {
    attn_chunk<T, PER, CH>(q, qb, qh, k, kb, kh, ks, v, vb, vh, vs, mask, mb, ms, chunk_out(part, PER * 32), Hq, Hkv,
                       S, scale);
}

// The combine of (b, h)'s n_chunks partials ph (each (m, l, acc[D]): D + 2 floats) into o[D] by a block of 128
// threads, shared by attn_combine and attn_fused's last block (so both round alike). M = max m_i; the weights
// w_i = exp(m_i - M) (0 for an empty chunk) and l_i w_i are computed once each into shared memory, 128 chunks at a
// time; then L = sum l_i w_i and a[d] = sum acc_i[d] w_i in chunk order (thread d; d and d + 128 when D = 256),
// the acc loads of U chunks in flight at once; o[d] = a[d] / L, or 0 when L = 0 (nothing live).
// CG: loads that bypass L1 (partials that other blocks of the same launch wrote).
template <typename T, bool CG>
__device__ __forceinline__ void combine_block(const float *__restrict__ ph, int n_chunks, int D, T *__restrict__ o) {
    constexpr int NT = 128, U = 16;
    __shared__ float w_s[NT], lw_s[NT], red[4];
    const int tid = threadIdx.x, stride = D + 2;
    auto ld = [](const float *p) {
        if constexpr (CG) return __ldcg(p);
        else return *p;
    };
    float mi = -INFINITY, li = 0.f;  // chunk tid's m and l
    if (tid < n_chunks) { mi = ld(ph + (size_t)tid * stride); li = ld(ph + (size_t)tid * stride + 1); }
    float m = mi;
    for (int i = tid + NT; i < n_chunks; i += NT) m = fmaxf(m, ld(ph + (size_t)i * stride));
    m = warp_max(m);
    if ((tid & 31) == 0) red[tid >> 5] = m;
    __syncthreads();
    const float M = fmaxf(fmaxf(red[0], red[1]), fmaxf(red[2], red[3]));
    float L = 0.f, a[2] = {0.f, 0.f};  // outputs tid and tid + NT
    for (int base = 0; base < n_chunks; base += NT) {
        const int cnt = min(NT, n_chunks - base);
        if (base > 0) {
            __syncthreads();  // the previous piece's weights are read
            const int i = base + tid;
            mi = i < n_chunks ? ld(ph + (size_t)i * stride) : -INFINITY;
            li = i < n_chunks ? ld(ph + (size_t)i * stride + 1) : 0.f;
        }
        const float w = mi == -INFINITY ? 0.f : expf(mi - M);
        w_s[tid] = w;
        lw_s[tid] = __fmul_rn(li, w);
        __syncthreads();
        for (int j = 0; j < cnt; j++) L = __fadd_rn(L, lw_s[j]);
        const float *pc = ph + (size_t)base * stride + 2 + tid;
        for (int j0 = 0; j0 < cnt; j0 += U) {
            float x[2][U];
            #pragma unroll
            for (int r = 0; r < 2; r++) {
                #pragma unroll
                for (int u = 0; u < U; u++)
                    x[r][u] = tid + r * NT < D && j0 + u < cnt ? ld(pc + (size_t)(j0 + u) * stride + r * NT) : 0.f;
            }
            #pragma unroll
            for (int u = 0; u < U; u++) {
                if (j0 + u >= cnt) break;
                const float wu = w_s[j0 + u];
                a[0] = fmaf(x[0][u], wu, a[0]);
                a[1] = fmaf(x[1][u], wu, a[1]);
            }
        }
    }
    #pragma unroll
    for (int r = 0; r < 2; r++)
        if (tid + r * NT < D) o[tid + r * NT] = from_f<T>(L > 0.f ? a[r] / L : 0.f);
}

// Combine the chunk partials of one (b, h): grid B * Hq, 128 threads; o (B, 1, Hq * D) contiguous.
template <typename T>
__global__ void __launch_bounds__(128) attn_combine(const float *__restrict__ part, T *__restrict__ o, int D,
                                                    int n_chunks) {
    const int bh = blockIdx.x;
    combine_block<T, false>(part + (size_t)bh * n_chunks * (D + 2), n_chunks, D, o + (size_t)bh * D);
}

// attn_partial and attn_combine in one launch (grid and partials as attn_partial's): each block writes its
// chunk's partial and takes a ticket from counters[b * Hq + h]; the last block of (b, h) to finish combines
// all chunks into o (B, 1, Hq * D) and sets the counter back to 0, so the next launch (the next layer, the
// next graph replay) starts from zero. counters: B * Hq zeroed uints that no other stream uses meanwhile.
template <typename T, int PER>
__global__ void __launch_bounds__(128, 2) attn_fused(const T *__restrict__ q, long qb, long qh,
        const T *__restrict__ k, long kb, long kh, long ks, const T *__restrict__ v, long vb, long vh, long vs,
        const T *__restrict__ mask, long mb, long ms, float *__restrict__ part, int Hq, int Hkv, int S,
        float scale, T *__restrict__ o, unsigned int *__restrict__ counters) {
    constexpr int D = PER * 32;
    __shared__ bool last;
    pdl_wait();  // q and this step's K/V row are the kernel before's (a PDL: cupy_decode)
    pdl_trigger();
    attn_chunk<T, PER>(q, qb, qh, k, kb, kh, ks, v, vb, vh, vs, mask, mb, ms, chunk_out(part, PER * 32), Hq, Hkv,
                       S, scale);
    __threadfence();  // this block's partial is visible device-wide before its ticket is
    __syncthreads();
    const int bh = blockIdx.x, n_chunks = gridDim.y;
    if (threadIdx.x == 0) last = atomicAdd(counters + bh, 1u) == (unsigned int)(n_chunks - 1);
    __syncthreads();
    if (!last) return;
    __threadfence();
    combine_block<T, true>(part + (size_t)bh * n_chunks * (D + 2), n_chunks, D, o + (size_t)bh * D);
    if (threadIdx.x == 0) counters[bh] = 0u;
}
