// decode.cu: CUDA sources of engine/backends/cupy_decode.py (compiled by cupy's NVRTC after prelude.cuh and
// attention.cu, not on its own).
// ---- rotary + KV-cache write of one decode step (fused.py's rotary_cache) -------------------------------------
// q (B, Hq, L, D), k and v (B, Hkv, L, D) with element strides (b, h, l, 1); cos/sin (B|1, L, rot) with strides
// (cb, cl, 1) (cb 0: shared by the batch); caches (B, Hkv, S, D) with strides (cab, cah, cas, 1), both alike;
// slots (L,) int64 cache positions with stride sst, read on the device (a graph replays with new ones).
// One block per (b, l, head row): rows 0 .. Hq-1 rotate q into q_out (contiguous (B, Hq, L, D)), the next Hkv
// rotate k into k_cache[b, h, slots[l]], the last Hkv copy v into v_cache[b, h, slots[l]]. The rotation is the
// rotary kernel's: out[i] = round(round(x_i c_i) + round(x_sw s_i)) for i < rot, x_i past rot (Phi-3's partial).
template <typename T>
__global__ void rotary_cache(const T *__restrict__ q, long qb, long qh, long ql, const T *__restrict__ k, long kb,
        long kh, long kl, const T *__restrict__ v, long vb, long vh, long vl, const T *__restrict__ cos_t,
        const T *__restrict__ sin_t, long cb, long cl, T *__restrict__ q_out, T *__restrict__ k_cache,
        T *__restrict__ v_cache, long cab, long cah, long cas, const long long *__restrict__ slots, long sst, int Hq,
        int Hkv, int L, int D, int rot) {
    pdl_wait();  // q, k, v are the kernel before's (a PDL: cupy_decode)
    pdl_trigger();
    const int rows = Hq + 2 * Hkv;
    const int r = blockIdx.x % rows, l = (blockIdx.x / rows) % L, b = blockIdx.x / (rows * L);
    const T *x;
    T *o;
    bool rotate = true;
    if (r < Hq) {
        x = q + b * qb + r * qh + l * ql;
        o = q_out + (((size_t)b * Hq + r) * L + l) * D;
    } else {
        const int h = r < Hq + Hkv ? r - Hq : r - Hq - Hkv;
        const long slot = (long)slots[(long)l * sst];
        if (r < Hq + Hkv) {
            x = k + b * kb + h * kh + l * kl;
            o = k_cache + b * cab + h * cah + slot * cas;
        } else {
            x = v + b * vb + h * vh + l * vl;
            o = v_cache + b * cab + h * cah + slot * cas;
            rotate = false;
        }
    }
    const T *c = cos_t + b * cb + l * cl, *s = sin_t + b * cb + l * cl;
    const int half = rot >> 1;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        if (rotate && i < rot) {
            const float xi = to_f<T>(x[i]), xs = to_f<T>(x[i < half ? i + half : i - half]);
            o[i] = from_f<T>(__fadd_rn(rnd<T>(__fmul_rn(xi, to_f<T>(c[i]))), rnd<T>(__fmul_rn(xs, to_f<T>(s[i])))));
        } else {
            o[i] = x[i];
        }
    }
}

// ---- decode attention in one thread-block cluster a (b, h) (sm_90) ----------------------------------------------
// attn_fused's chunks and combine without the trip through global memory: grid (B * Hq, C) in clusters of (1, C, 1);
// block (b h, c) computes chunk c of CH positions (attention.cu's attn_chunk; chunks at or past S are empty) and
// writes its partial straight into rank 0's shared memory (distributed shared memory), then arrives at the
// cluster barrier and exits: a block of a dead chunk leaves its SM at once, as attn_fused's do, for the next
// kernel's blocks. Rank 0 waits for every partial and combines them with combine_block's arithmetic in chunk order,
// so o is attn_partial<T, PER, CH> + attn_combine's bit for bit. C >= ceil(S / CH), at most 8 (a portable
// cluster). The barrier's first phase (arrived at the start, waited for before any remote write) makes sure every
// block has started, so rank 0's shared memory exists when the others write it.
__device__ __forceinline__ unsigned cluster_rank() {
    unsigned r = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
#endif
    return r;
}
__device__ __forceinline__ void cluster_arrive(bool release) {  // every thread of the block, once a phase
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (release) asm volatile("barrier.cluster.arrive.release;" ::: "memory");
    else asm volatile("barrier.cluster.arrive.relaxed;" ::: "memory");
#endif
}
__device__ __forceinline__ void cluster_wait() {  // the phase's arrivals of every thread of the cluster, acquired
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.wait.acquire;" ::: "memory");
#endif
}
// p (this block's shared memory) as the same variable of the cluster's block `rank` (a generic address)
__device__ __forceinline__ float *cluster_map(float *p, unsigned rank) {
    unsigned long long r = reinterpret_cast<unsigned long long>(p);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mapa.u64 %0, %1, %2;" : "=l"(r) : "l"(r), "r"(rank));
#endif
    return reinterpret_cast<float *>(r);
}

template <typename T, int PER, int C, int CH, int EARLY = 0>
__global__ void __cluster_dims__(1, C, 1) __launch_bounds__(128, 2) attn_cluster(const T *__restrict__ q, long qb,
        long qh, const T *__restrict__ k, long kb, long kh, long ks, const T *__restrict__ v, long vb, long vh,
        long vs, const T *__restrict__ mask, long mb, long ms, int Hq, int Hkv, int S, float scale,
        T *__restrict__ o) {
    constexpr int D = PER * 32, NT = 128;
    __shared__ float part_s[C][D + 2];  // rank 0's: chunk i's (m, l, acc[D]), written by rank i
    cluster_arrive(false);  // phase 1: this block has started
    if constexpr (!EARLY) {  // (EARLY: attn_chunk waits itself, after its mask and its K/V prefetches)
        pdl_wait();  // q and this step's K/V row are the kernel before's (a PDL: cupy_decode)
        pdl_trigger();
    }
    cluster_wait();
    const unsigned rank = cluster_rank();
    attn_chunk<T, PER, CH, EARLY != 0>(q, qb, qh, k, kb, kh, ks, v, vb, vh, vs, mask, mb, ms,
                                       cluster_map(&part_s[0][0], 0) + rank * (D + 2), Hq, Hkv, S, scale);
    cluster_arrive(true);  // phase 2: this block's partial is in rank 0's part_s
    if (rank != 0) return;
    cluster_wait();
    const int tid = threadIdx.x;
    float M = -INFINITY;
    #pragma unroll
    for (int i = 0; i < C; i++) M = fmaxf(M, part_s[i][0]);
    float L = 0.f, a[2] = {0.f, 0.f};
    #pragma unroll
    for (int i = 0; i < C; i++) {
        const float mi = part_s[i][0], w = mi == -INFINITY ? 0.f : expf(mi - M);
        L = __fadd_rn(L, __fmul_rn(part_s[i][1], w));
        #pragma unroll
        for (int r = 0; r < 2; r++)
            if (tid + r * NT < D) a[r] = fmaf(part_s[i][2 + tid + r * NT], w, a[r]);
    }
    T *ob = o + (size_t)blockIdx.x * D;
    #pragma unroll
    for (int r = 0; r < 2; r++)
        if (tid + r * NT < D) ob[tid + r * NT] = from_f<T>(L > 0.f ? a[r] / L : 0.f);
}
