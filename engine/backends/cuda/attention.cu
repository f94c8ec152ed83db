// attention.cu: CUDA sources of engine/backends/cupy_kernels.py (compiled by cupy's NVRTC, not on their own).
// ---- decode attention: one query row per (b, h) over S cached positions ------------------------------------------
// Scores follow transformers' eager rounding: s = round(round(round(q.k) * scale) + mask) (float32 when T
// is float32); a position whose mask is <= -1e4 contributes exp(.) = 0 exactly and is skipped. Grid
// (B * Hq, n_chunks) over chunks of ATTN_CHUNK positions, 4 warps: warp w takes positions w, w + 4, ...
// of the chunk, all U = 8 of them loaded before any is used (one memory round trip a chunk); the lanes split the head dim
// (PER = D / 32 each), so each row is one coalesced load, the dot a warp sum. Each warp keeps an online
// softmax (m, l, acc); the block merges its 4 into one partial (m, l, acc[D]) per chunk.
template <typename T, int PER>
__device__ __forceinline__ void load_part(const T *__restrict__ p, float *f) {
    if constexpr (sizeof(T) == 2 && PER % 4 == 0) {  // 8-byte loads (4 16-bit values)
        #pragma unroll
        for (int j = 0; j < PER / 4; j++) {
            const uint2 u = reinterpret_cast<const uint2 *>(p)[j];
            const T *e = reinterpret_cast<const T *>(&u);
            #pragma unroll
            for (int i = 0; i < 4; i++) f[4 * j + i] = to_f<T>(e[i]);
        }
    } else {
        #pragma unroll
        for (int i = 0; i < PER; i++) f[i] = to_f<T>(p[i]);
    }
}

template <typename T, int PER>
__device__ __forceinline__ void attn_chunk(const T *__restrict__ q, long qb, long qh,
        const T *__restrict__ k, long kb, long kh, long ks, const T *__restrict__ v, long vb, long vh, long vs,
        const T *__restrict__ mask, long mb, long ms, float *__restrict__ part, int Hq, int Hkv, int S,
        float scale) {
    constexpr int D = PER * 32, CHUNK = 32, NW = 4, U = CHUNK / NW;
    const int bh = blockIdx.x, c = blockIdx.y, n_chunks = gridDim.y;
    const int b = bh / Hq, h = bh % Hq, kvh = h / (Hq / Hkv);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float *out = part + ((size_t)bh * n_chunks + c) * (D + 2);
    __shared__ float sm[NW], sl[NW], sacc[NW][D];
    float qv[PER];
    load_part<T, PER>(q + b * qb + h * qh + lane * PER, qv);
    const T *kbase = k + b * kb + kvh * kh + lane * PER, *vbase = v + b * vb + kvh * vh + lane * PER;
    const int t0 = c * CHUNK, t1 = min(S, t0 + CHUNK);
    float m = -INFINITY, l = 0.f, acc[PER];
    #pragma unroll
    for (int i = 0; i < PER; i++) acc[i] = 0.f;
    for (int base = t0 + warp; base < t1; base += NW * U) {
        float kf[U][PER], vf[U][PER], mval[U];
        bool live[U];
        #pragma unroll
        for (int u = 0; u < U; u++) {  // every load of the group (mask, K, V) issued before the first use
            const int t = base + u * NW;
            live[u] = t < t1;
            mval[u] = 0.f;
            if (live[u]) {
                if (mask != nullptr) mval[u] = to_f<T>(mask[b * mb + (long)t * ms]);
                load_part<T, PER>(kbase + (long)t * ks, kf[u]);
                load_part<T, PER>(vbase + (long)t * vs, vf[u]);
            }
        }
        #pragma unroll
        for (int u = 0; u < U; u++) {
            if (!live[u] || !(mval[u] > -1e4f)) continue;  // the same t on every lane: the warp stays converged
            float dot = 0.f;
            #pragma unroll
            for (int i = 0; i < PER; i++) dot = fmaf(qv[i], kf[u][i], dot);
            dot = warp_sum(dot);
            float s = rnd<T>(__fmul_rn(rnd<T>(dot), scale));
            if (mask != nullptr) s = rnd<T>(__fadd_rn(s, mval[u]));
            const float mn = fmaxf(m, s);
            const float corr = m == -INFINITY ? 0.f : expf(m - mn), p = expf(s - mn);
            l = l * corr + p;
            #pragma unroll
            for (int i = 0; i < PER; i++) acc[i] = fmaf(p, vf[u][i], acc[i] * corr);
            m = mn;
        }
    }
    if (lane == 0) { sm[warp] = m; sl[warp] = l; }
    #pragma unroll
    for (int i = 0; i < PER; i++) sacc[warp][lane * PER + i] = acc[i];
    __syncthreads();
    if (warp == 0) {
        float M = -INFINITY, L = 0.f, wgt[NW];
        #pragma unroll
        for (int w = 0; w < NW; w++) M = fmaxf(M, sm[w]);
        #pragma unroll
        for (int w = 0; w < NW; w++) { wgt[w] = sm[w] == -INFINITY ? 0.f : expf(sm[w] - M); L += sl[w] * wgt[w]; }
        #pragma unroll
        for (int i = 0; i < PER; i++) {
            const int d = lane * PER + i;
            float a = 0.f;
            #pragma unroll
            for (int w = 0; w < NW; w++) a += sacc[w][d] * wgt[w];
            out[2 + d] = a;
        }
        if (lane == 0) { out[0] = M; out[1] = L; }  // M = -inf, L = 0: nothing live in the chunk
    }
}

template <typename T, int PER>
__global__ void __launch_bounds__(128) attn_partial(const T *__restrict__ q, long qb, long qh,
        const T *__restrict__ k, long kb, long kh, long ks, const T *__restrict__ v, long vb, long vh, long vs,
        const T *__restrict__ mask, long mb, long ms, float *__restrict__ part, int Hq, int Hkv, int S,
        float scale) {
    attn_chunk<T, PER>(q, qb, qh, k, kb, kh, ks, v, vb, vh, vs, mask, mb, ms, part, Hq, Hkv, S, scale);
}

// One output value of the combine of (b, h)'s n_chunks partials ph (each (m, l, acc[D])) with M their largest m:
// the chunks summed in order (shared by attn_combine and attn_fused, so both round alike). CG: loads that
// bypass L1 (partials another block of the same launch wrote).
template <bool CG>
__device__ __forceinline__ float combine_value(const float *__restrict__ ph, int n_chunks, int D, int d, float M) {
    float L = 0.f, a = 0.f;
    #pragma unroll 4
    for (int i = 0; i < n_chunks; i++) {  // unrolled: the loads of 4 chunks in flight at once
        const float *pc = ph + (size_t)i * (D + 2);
        const float m = CG ? __ldcg(pc) : pc[0], l = CG ? __ldcg(pc + 1) : pc[1];
        const float x = CG ? __ldcg(pc + 2 + d) : pc[2 + d];
        const float wt = m == -INFINITY ? 0.f : expf(m - M);
        L += l * wt;
        a += x * wt;
    }
    return L > 0.f ? a / L : 0.f;
}

// Combine the chunk partials of one (b, h): grid B * Hq, block D threads; o (B, 1, Hq * D) contiguous.
template <typename T>
__global__ void attn_combine(const float *__restrict__ part, T *__restrict__ o, int D, int n_chunks) {
    __shared__ float red[8];
    const int bh = blockIdx.x, d = threadIdx.x, lane = d & 31, warp = d >> 5, nw = (blockDim.x + 31) >> 5;
    const float *ph = part + (size_t)bh * n_chunks * (D + 2);
    float m = -INFINITY;
    for (int i = d; i < n_chunks; i += blockDim.x) m = fmaxf(m, ph[(size_t)i * (D + 2)]);
    m = warp_max(m);
    if (lane == 0) red[warp] = m;
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < nw; w++) M = fmaxf(M, red[w]);
    o[(size_t)bh * D + d] = from_f<T>(combine_value<false>(ph, n_chunks, D, d, M));
}

// attn_partial and attn_combine in one launch (grid and partials as attn_partial's): each block writes its
// chunk's partial and takes a ticket from counters[b * Hq + h]; the last block of (b, h) to finish combines
// all chunks into o (B, 1, Hq * D) and sets the counter back to 0, so the next launch (the next layer, the
// next graph replay) starts from zero. counters: B * Hq zeroed uints that no other stream uses meanwhile.
template <typename T, int PER>
__global__ void __launch_bounds__(128) attn_fused(const T *__restrict__ q, long qb, long qh,
        const T *__restrict__ k, long kb, long kh, long ks, const T *__restrict__ v, long vb, long vh, long vs,
        const T *__restrict__ mask, long mb, long ms, float *__restrict__ part, int Hq, int Hkv, int S,
        float scale, T *__restrict__ o, unsigned int *__restrict__ counters) {
    constexpr int D = PER * 32;
    __shared__ float red[4];
    __shared__ bool last;
    attn_chunk<T, PER>(q, qb, qh, k, kb, kh, ks, v, vb, vh, vs, mask, mb, ms, part, Hq, Hkv, S, scale);
    __threadfence();  // this block's partial is visible device-wide before its ticket is
    __syncthreads();
    const int bh = blockIdx.x, n_chunks = gridDim.y;
    if (threadIdx.x == 0) last = atomicAdd(counters + bh, 1u) == (unsigned int)(n_chunks - 1);
    __syncthreads();
    if (!last) return;
    __threadfence();
    const float *ph = part + (size_t)bh * n_chunks * (D + 2);
    float m = -INFINITY;
    for (int i = threadIdx.x; i < n_chunks; i += 128) m = fmaxf(m, __ldcg(ph + (size_t)i * (D + 2)));
    m = warp_max(m);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
    __syncthreads();
    const float M = fmaxf(fmaxf(red[0], red[1]), fmaxf(red[2], red[3]));
    for (int d = threadIdx.x; d < D; d += 128)
        o[(size_t)bh * D + d] = from_f<T>(combine_value<true>(ph, n_chunks, D, d, M));
    if (threadIdx.x == 0) counters[bh] = 0u;
}
