// attention.cu: CUDA sources of engine/backends/cupy_kernels.py (compiled by cupy's NVRTC, not on their own).
// ---- decode attention: one query row per (b, h) over S cached positions ------------------------------------------
// Scores follow transformers' eager rounding: s = round(round(round(q.k) * scale) + mask) (float32 when T
// is float32); a position whose mask is <= -1e4 contributes exp(.) = 0 exactly and is skipped. Grid
// (B * Hq, n_chunks), 4 warps; lane i of warp w owns position c*128 + 32w + i for the scores, then
// lanes split the head dim (PER = D / 32 each) for the values. Partials: (m, l, acc[D]) per chunk.
template <typename T, int PER>
__global__ void __launch_bounds__(128) attn_partial(const T *__restrict__ q, long qb, long qh,
        const T *__restrict__ k, long kb, long kh, long ks, const T *__restrict__ v, long vb, long vh, long vs,
        const T *__restrict__ mask, long mb, long ms, float *__restrict__ part, int Hq, int Hkv, int S,
        float scale) {
    constexpr int D = PER * 32, CHUNK = 128, V = Vec<T>::N;
    const int bh = blockIdx.x, c = blockIdx.y, n_chunks = gridDim.y;
    const int b = bh / Hq, h = bh % Hq, kvh = h / (Hq / Hkv);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float *out = part + ((size_t)bh * n_chunks + c) * (D + 2);
    __shared__ float qs[D];
    __shared__ float sm[4], sl[4], sacc[4][D];
    __shared__ int any_live;
    const T *qr = q + b * qb + h * qh;
    for (int d = threadIdx.x; d < D; d += blockDim.x) qs[d] = to_f<T>(qr[d]);
    if (threadIdx.x == 0) any_live = 0;
    __syncthreads();
    const int t = c * CHUNK + warp * 32 + lane;
    float mval = 0.f;
    bool live = t < S;
    if (live && mask != nullptr) {
        mval = to_f<T>(mask[b * mb + (long)t * ms]);
        live = mval > -1e4f;
    }
    if (live) any_live = 1;
    __syncthreads();
    if (!any_live) {  // every position of the chunk is masked or past the end
        if (threadIdx.x == 0) { out[0] = -INFINITY; out[1] = 0.f; }
        for (int d = threadIdx.x; d < D; d += blockDim.x) out[2 + d] = 0.f;
        return;
    }
    const T *kbase = k + b * kb + kvh * kh, *vbase = v + b * vb + kvh * vh;
    float s = -INFINITY;
    if (live) {
        const uint4 *kr = reinterpret_cast<const uint4 *>(kbase + (long)t * ks);
        float dot = 0.f;
        #pragma unroll
        for (int j = 0; j < D / V; j++) {
            float kf[V];
            unpack<T>(kr[j], kf);
            #pragma unroll
            for (int i = 0; i < V; i++) dot = fmaf(qs[j * V + i], kf[i], dot);
        }
        s = rnd<T>(__fmul_rn(rnd<T>(dot), scale));
        if (mask != nullptr) s = rnd<T>(__fadd_rn(s, mval));
    }
    const float m = warp_max(s);
    const float e = m == -INFINITY ? 0.f : expf(s - m);
    const float l = warp_sum(e);
    float acc[PER];
    #pragma unroll
    for (int i = 0; i < PER; i++) acc[i] = 0.f;
    const int base = c * CHUNK + warp * 32;
    #pragma unroll 4
    for (int j = 0; j < 32; j++) {
        const float pj = __shfl_sync(0xffffffff, e, j);
        if (pj != 0.f) {
            const T *vr = vbase + (long)(base + j) * vs + lane * PER;
            #pragma unroll
            for (int i = 0; i < PER; i++) acc[i] = fmaf(pj, to_f<T>(vr[i]), acc[i]);
        }
    }
    if (lane == 0) { sm[warp] = m; sl[warp] = l; }
    #pragma unroll
    for (int i = 0; i < PER; i++) sacc[warp][lane * PER + i] = acc[i];
    __syncthreads();
    if (warp == 0) {
        const float M = fmaxf(fmaxf(sm[0], sm[1]), fmaxf(sm[2], sm[3]));
        float wgt[4], L = 0.f;
        #pragma unroll
        for (int w = 0; w < 4; w++) { wgt[w] = sm[w] == -INFINITY ? 0.f : expf(sm[w] - M); L += sl[w] * wgt[w]; }
        #pragma unroll
        for (int i = 0; i < PER; i++) {
            const int d = lane * PER + i;
            out[2 + d] = sacc[0][d] * wgt[0] + sacc[1][d] * wgt[1] + sacc[2][d] * wgt[2] + sacc[3][d] * wgt[3];
        }
        if (lane == 0) { out[0] = M; out[1] = L; }
    }
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
    float L = 0.f, a = 0.f;
    for (int i = 0; i < n_chunks; i++) {
        const float *pc = ph + (size_t)i * (D + 2);
        const float wt = pc[0] == -INFINITY ? 0.f : expf(pc[0] - M);
        L += pc[1] * wt;
        a += pc[2 + d] * wt;
    }
    o[(size_t)bh * D + d] = from_f<T>(L > 0.f ? a / L : 0.f);
}
