// quant_ring.cu: CUDA sources of engine/backends/cupy_kernels.py (compiled by cupy's NVRTC, not on their own).
// qgemv_ring: qgemv_direct's int8 route (quant_direct.cu: the same arguments and S, layouts QD_q4_k64 / QD_q8_0h,
// one 16-bit x row normed and quantised in registers by stage_quantise_x, a warp's two rows over the whole of K,
// lane i summing units i, i + 32, ... in order, store_pairs: the same numbers bit for bit) with the weights brought
// into shared memory by the Tensor Memory Accelerator (cp.async.bulk, sm_90) rather than into registers by the
// warps' own loads. Each warp has a ring of S slots of one batch (32 U units of each of its pair's rows, or the
// 32 U unit slots of a split pair) and an mbarrier a slot; its lane 0 issues the batches S ahead. The first pre
// (<= S) batches of every warp load before pdl_wait, while the kernel before ends, the rest once x's loads are out.
// Loads in flight are bounded by shared memory, not registers: Q8_0's units (144 bytes a lane) held 9 registers x 4
// a unit in qgemv_direct.
// On an H200 (session 17, captured decode, same run): Q8_0 at two blocks of 8 warps an SM, U = 1: 387.2 -> 419.1
// tok/s; Q4_K (U = 2) 645.6 -> 614.1 then. Session 20: with one batch a warp before the wait (pre = 1) and the rest
// issued once x's loads are out (x no longer queues behind the whole ring's copies), Q8_0 431.8 -> 454.3 and Q4_K
// 670.5 against qgemv_direct's 657.7 (captured decode, same runs): the launcher takes both formats here.

// An mbarrier of one arrival (lane 0's, with the transaction bytes to expect), completed by the bulk copies'
// bytes; try_wait.parity spins on the phase (k & 1 for a slot's k-th batch).
__device__ __forceinline__ void mbar_init(unsigned long long *b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(b)) : "memory");
#endif
}
__device__ __forceinline__ void mbar_init_fence() {  // the inits visible to the async proxy (the bulk copies)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_expect(unsigned long long *b, unsigned bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(b)), "r"(bytes) : "memory");
#endif
}
// bytes (a multiple of 16; src and dst 16-byte aligned) from global src into shared dst, counted on b
__device__ __forceinline__ void bulk_load(void *dst, const void *src, unsigned bytes, unsigned long long *b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 ::"r"(smem_addr(dst)), "l"(src), "r"(bytes), "r"(smem_addr(b)) : "memory");
#endif
}
// (a phase that never completes, a bug, traps after ~2^24 tries rather than hanging the GPU)
__device__ __forceinline__ void mbar_wait(unsigned long long *b, unsigned parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    for (unsigned n = 0;; n++) {
        unsigned done;
        asm volatile("{\n\t.reg .pred P;\n\tmbarrier.try_wait.parity.shared::cta.b64 P, [%1], %2;\n\t"
                     "selp.u32 %0, 1, 0, P;\n\t}" : "=r"(done) : "r"(smem_addr(b)), "r"(parity) : "memory");
        if (done) return;
        if (n == (1u << 24)) __trap();
    }
#endif
}

// Shared memory (dynamic): x's int8 blocks (LI::xbytes(K)), their scales and sums (K / 32 each), then from byte
// ring_at(K) (128-aligned) the NW warps' rings, S slots of L's SLOT bytes each, then NW x S mbarriers.
template <int F, int U> struct QRing {
    using L = typename QDirect<F, 1>::L;
    static constexpr int SPAN = 32 * U / L::UPB * L::TS;  // a row's bytes of 32 U units (whole blocks: UPB | 32)
    static constexpr int SLOT = L::SPLIT ? SPAN : 2 * SPAN;
    static __device__ __forceinline__ long ring_at(long K) {
        return (L::xbytes(K) + K / 32 * 8 + 127) / 128 * 128;
    }
};

template <typename T, int F, int NW, int XJ, int U, int ST>  // ST: the norm style (stage_quantise_x's)
__global__ void __launch_bounds__(32 * NW, 2) qgemv_ring(const unsigned char *__restrict__ W,
        const unsigned char *__restrict__ W2, long row_bytes, const T *__restrict__ x, long x_row,
        const T *__restrict__ nw, float eps, int style, const T *__restrict__ bias, const T *__restrict__ bias2,
        const T *__restrict__ res, long res_row, T *__restrict__ y, long y_row, int N, int K, int rows, int act,
        const unsigned char *__restrict__ Wb, const unsigned char *__restrict__ Wc, const T *__restrict__ biasb,
        const T *__restrict__ biasc, int n0, int n1, int S, int pre) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    using R = QRing<F, U>;
    using L = typename R::L;
    constexpr int UPB = L::UPB, TS = L::TS;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    __shared__ float red[8];
    signed char *xq = reinterpret_cast<signed char *>(smem_raw);
    float *dxs = reinterpret_cast<float *>(smem_raw + L::xbytes(K));
    int *sxs = reinterpret_cast<int *>(dxs + K / 32);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    unsigned char *ring = smem_raw + R::ring_at(K) + (size_t)warp * S * R::SLOT;
    unsigned long long *bar = reinterpret_cast<unsigned long long *>(smem_raw + R::ring_at(K) +
                                                                     (size_t)NW * S * R::SLOT) + warp * S;
    const bool glu = W2 != nullptr;
    const int pairs = glu ? N : (N + 1) / 2, units = K / L::BS * UPB, stride = gridDim.x * NW;
    constexpr int BU = 32 * U;  // a batch's unit slots: lane i sums slots i, i + 32, ... of it, in order
    const int slots = L::SPLIT ? 2 * units : units, nb = (slots + BU - 1) / BU;  // a pair's unit slots, batches
    // a split pair's batch from slot a: row 0's units [a, units), row 1's from max(a, units) - units; its row 0
    // bytes come first in the slot
    auto head = [&](int a) { return a < units ? (min(a + BU, units) - a) / UPB * TS : 0; };
    int lp = blockIdx.x * NW + warp, lb = 0;  // the batch lane 0 issues next: pair lp, batch lb
    auto issue = [&](int s) {  // batch (lp, lb) into slot s, then the cursor to the next batch
        if (lp >= pairs) return;
        if (lane == 0) {
            const int row = glu ? lp : 2 * lp, a = BU * lb;
            const unsigned char *w0 = qrow<T>(row, row_bytes, W, Wb, Wc, n0, n1);
            const unsigned char *w1 = glu ? W2 + (size_t)lp * row_bytes
                                          : qrow<T>(min(row + 1, N - 1), row_bytes, W, Wb, Wc, n0, n1);
            unsigned char *dst = ring + (size_t)s * R::SLOT;
            if constexpr (L::SPLIT) {
                const int b = min(a + BU, slots), h = head(a), t = b > units ? (b - max(a, units)) / UPB * TS : 0;
                mbar_expect(bar + s, h + t);
                if (h) bulk_load(dst, w0 + (size_t)(a / UPB) * TS, h, bar + s);
                if (t) bulk_load(dst + h, w1 + (size_t)((max(a, units) - units) / UPB) * TS, t, bar + s);
            } else {
                const int n = (min(a + BU, units) - a) / UPB * TS;
                mbar_expect(bar + s, 2 * n);
                bulk_load(dst, w0 + (size_t)(a / UPB) * TS, n, bar + s);
                bulk_load(dst + R::SPAN, w1 + (size_t)(a / UPB) * TS, n, bar + s);
            }
        }
        if (++lb == nb) lb = 0, lp += stride;
    };
    const NormChunks<T, XJ, NW> nc(nw, style, K);  // before the weights' batches
    if (lane == 0) {
        for (int s = 0; s < S; s++) mbar_init(bar + s);
        mbar_init_fence();
    }
    __syncwarp();
    // frozen weights: the first pre batches before pdl_wait, the rest once x's loads are out (behind them)
    for (int s = 0; s < pre; s++) issue(s);
    quantise_x_after_wait<T, XJ, NW, ST>(x, nc, eps, style, K, xq, dxs, L::PAD < 0 ? nullptr : sxs, L::PAD, red,
                                         [&] { for (int s = pre; s < S; s++) issue(s); });
    __syncthreads();
    int s = 0;
    unsigned phase = 0;
    for (int cp = blockIdx.x * NW + warp; cp < pairs; cp += stride) {
        float acc[2][1] = {{0.f}, {0.f}};
        for (int cb = 0; cb < nb; cb++) {
            mbar_wait(bar + s, phase);
            const unsigned char *slot = ring + (size_t)s * R::SLOT;
            #pragma unroll
            for (int i = 0; i < U; i++) {
                const int a = BU * cb, su = a + lane + 32 * i;
                if (su < slots) {
                    if constexpr (L::SPLIT) {  // one row's unit: its sum goes to row r's accumulator
                        const int r = su >= units, u = su - r * units;
                        const int ua = r ? max(a, units) - units : a;  // the slot's first unit of row r
                        const typename L::Unit v = L::template load<2>(r ? slot + head(a) : slot, u - ua);
                        const int x0 = u / UPB * L::BS;
                        float t = r ? acc[1][0] : acc[0][0];
                        L::dot1i(v, u, xq + L::xbytes(x0), dxs + x0 / 32, t);
                        if (r) acc[1][0] = t;
                        else acc[0][0] = t;
                    } else {
                        const typename L::Unit v[2] = {L::template load<2>(slot, su - a),
                                                       L::template load<2>(slot + R::SPAN, su - a)};
                        const int x0 = su / UPB * L::BS;
                        float a2[2] = {acc[0][0], acc[1][0]};
                        L::dot2i(v, su, xq + L::xbytes(x0), dxs + x0 / 32, sxs + x0 / 32, a2);
                        acc[0][0] = a2[0];
                        acc[1][0] = a2[1];
                    }
                }
            }
            __syncwarp();  // every lane has read the slot: its next batch may land in it
            issue(s);
            if (++s == S) s = 0, phase ^= 1;
        }
        const int row = glu ? cp : 2 * cp;
        store_pairs<T, 1>(acc, row, row + 1 < N, 1, lane, act, bias, bias2, biasb, biasc, Wb, n0, n1, res, res_row,
                          y, y_row, glu);
    }
#else
    __trap();
#endif
}
