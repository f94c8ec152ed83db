// sample.cu: CUDA sources of engine/backends/cupy_kernels.py (compiled by cupy's NVRTC, not on their own).
// ---- choosing tokens: engine/sampling.py's steps for one row per block (1024 threads) ---------------------------
// x = logits (float32) with the repetition penalty, / temperature; top-k keeps x >= the k-th largest; top-p
// keeps x whose strictly larger values hold less than p of the mass; then a draw by inverse CDF in index
// order with u = uniform(seed, counter, row). Thresholds are found by binary search over the order-keeping
// 32-bit keys of the floats, with fixed-order block reductions (the same answer every run).
__device__ __forceinline__ unsigned int fkey(float f) {
    const unsigned int u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
// fixed-order block reductions over 1024 threads (32 warps)
__device__ float bsum(float v, float *red) {
    v = warp_sum(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float t = 0.f;
    for (int w = 0; w < 32; w++) t += red[w];
    return t;
}
__device__ int bcount(int v, int *red) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    int t = 0;
    for (int w = 0; w < 32; w++) t += red[w];
    return t;
}

template <typename T>
__global__ void __launch_bounds__(1024) sample_rows(const T *__restrict__ logits, long l_row,
        const bool *__restrict__ seen, float penalty, float temperature, int top_k, float top_p,
        unsigned long long seed, const long long *__restrict__ counter, float *__restrict__ scratch,
        long long *__restrict__ out, int V) {
    __shared__ float redf[32];
    __shared__ int redi[32];
    __shared__ float best_v[32];
    __shared__ int best_i[32];
    const int row = blockIdx.x, tid = threadIdx.x;
    const T *lr = logits + (size_t)row * l_row;
    float *x = scratch + (size_t)row * V;
    for (int i = tid; i < V; i += 1024) {
        float v = to_f<T>(lr[i]);
        if (seen != nullptr && seen[(size_t)row * V + i]) v = v < 0.f ? __fmul_rn(v, penalty) : __fdiv_rn(v, penalty);
        if (temperature > 0.f) v = __fdiv_rn(v, temperature);
        x[i] = v;
    }
    __syncthreads();
    if (temperature == 0.f) {  // greedy: the first index of the largest value, as argmax
        float bv = -INFINITY;
        int bi = 0x7fffffff;
        for (int i = tid; i < V; i += 1024) {
            const float v = x[i];
            if (v > bv || (v == bv && i < bi)) { bv = v; bi = i; }
        }
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffff, bv, o);
            const int oi = __shfl_xor_sync(0xffffffff, bi, o);
            if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
        }
        if ((tid & 31) == 0) { best_v[tid >> 5] = bv; best_i[tid >> 5] = bi; }
        __syncthreads();
        if (tid == 0) {
            for (int w = 1; w < 32; w++)
                if (best_v[w] > bv || (best_v[w] == bv && best_i[w] < bi)) { bv = best_v[w]; bi = best_i[w]; }
            out[row] = bi == 0x7fffffff ? 0 : bi;
        }
        return;
    }
    unsigned int kmin = 0u;  // keep x with fkey(x) >= kmin
    if (top_k > 0 && top_k < V) {  // the largest key K with count(key >= K) >= k
        unsigned int lo = 0u, hi = 0xffffffffu;
        while (lo < hi) {
            const unsigned int mid = lo + (unsigned int)(((unsigned long long)hi - lo + 1) >> 1);
            int c = 0;
            for (int i = tid; i < V; i += 1024) c += fkey(x[i]) >= mid;
            if (bcount(c, redi) >= top_k) lo = mid; else hi = mid - 1;
        }
        kmin = lo;
    }
    float m = -INFINITY;
    for (int i = tid; i < V; i += 1024) if (fkey(x[i]) >= kmin) m = fmaxf(m, x[i]);
    m = warp_max(m);
    __syncthreads();
    if ((tid & 31) == 0) redf[tid >> 5] = m;
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < 32; w++) M = fmaxf(M, redf[w]);
    for (int i = tid; i < V; i += 1024) {  // scratch now holds exp(x - M) of the kept tokens
        const float v = x[i];
        x[i] = fkey(v) >= kmin ? expf(v - M) : 0.f;
    }
    __syncthreads();
    float Z = 0.f;
    for (int i = tid; i < V; i += 1024) Z += x[i];
    Z = bsum(Z, redf);
    if (top_p < 1.f) {  // the smallest key K whose strictly larger kept values hold < p of the mass
        // keys of the probabilities' logits are not kept in scratch: compare through the logits again
        unsigned int lo = kmin, hi = 0xffffffffu;
        while (lo < hi) {
            const unsigned int mid = lo + ((hi - lo) >> 1);
            float sgt = 0.f;
            for (int i = tid; i < V; i += 1024) {
                float v = to_f<T>(lr[i]);
                if (seen != nullptr && seen[(size_t)row * V + i]) v = v < 0.f ? __fmul_rn(v, penalty) : __fdiv_rn(v, penalty);
                v = __fdiv_rn(v, temperature);
                if (fkey(v) > mid) sgt += x[i];
            }
            if (bsum(sgt, redf) < top_p * Z) hi = mid; else lo = mid + 1;
        }
        const unsigned int pmin = lo;
        float Z2 = 0.f;
        for (int i = tid; i < V; i += 1024) {
            float v = to_f<T>(lr[i]);
            if (seen != nullptr && seen[(size_t)row * V + i]) v = v < 0.f ? __fmul_rn(v, penalty) : __fdiv_rn(v, penalty);
            v = __fdiv_rn(v, temperature);
            if (fkey(v) < pmin) x[i] = 0.f;
            Z2 += x[i];
        }
        Z = bsum(Z2, redf);
    }
    // inverse CDF in index order: thread t owns the contiguous range [t*C, (t+1)*C)
    const unsigned long long s = mix64(seed);
    const unsigned long long r = mix64(s ^ mix64(((unsigned long long)counter[0] << 32) + (unsigned long long)row));
    const double u = (double)(r >> 11) * (1.0 / 9007199254740992.0);
    const float target = (float)(u * (double)Z);
    const int C = (V + 1023) / 1024, lo_i = tid * C, hi_i = min(V, lo_i + C);
    float local = 0.f;
    for (int i = lo_i; i < hi_i; i++) local += x[i];
    // exclusive scan of the 1024 local sums, in thread order
    __shared__ float part[1024];
    part[tid] = local;
    __syncthreads();
    if (tid < 32) {  // warp 0 scans 32 chunks of 32
        float acc = 0.f;
        for (int j = 0; j < 32; j++) acc += part[tid * 32 + j];
        redf[tid] = acc;
    }
    __syncthreads();
    float before = 0.f;
    for (int w = 0; w < (tid >> 5); w++) before += redf[w];
    for (int j = (tid & ~31); j < tid; j++) before += part[j];
    __shared__ int chosen;
    if (tid == 0) chosen = V - 1;
    __syncthreads();
    // the first index whose inclusive prefix reaches target (as (cumsum < u).sum() on the host)
    if (lo_i < hi_i && before + local >= target && (tid == 0 || before < target)) {
        float acc = before;
        int pick = hi_i - 1;
        for (int i = lo_i; i < hi_i; i++) {
            acc += x[i];
            if (acc >= target) { pick = i; break; }
        }
        atomicMin(&chosen, pick);
    }
    __syncthreads();
    if (tid == 0) out[row] = chosen;
}

// ---- a decode step's bookkeeping (fused.py's advance; engine.generation.Decoder), one block --------------------
// tokens (B,) int64 -> tok[b * ts] and out[b * os + n], then n += 1 (a column past cols is not written: the host
// checks the count before each step)
__global__ void advance(const long long *__restrict__ tokens, long long *__restrict__ tok, long ts,
                        long long *__restrict__ out, long os, long cols, long long *__restrict__ n, int B) {
    const long long c = *n;
    for (int b = threadIdx.x; b < B; b += blockDim.x) {
        tok[b * ts] = tokens[b];
        if (c >= 0 && c < cols) out[b * os + c] = tokens[b];
    }
    __syncthreads();
    if (threadIdx.x == 0) *n = c + 1;
}
