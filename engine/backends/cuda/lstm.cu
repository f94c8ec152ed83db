// lstm.cu: one LSTM layer direction over all its time steps in ONE launch (engine/backends/cupy_lstm.py), compiled
// as its own program after prelude.cuh and common.cuh. The math and rounding are FusedOps.lstm_recurrence's
// (engine/backends/fused.py): per step, gates = xw[t] + (h W_hh^T + b_hh) in torch's order i, f, g, o;
// c = sigmoid(f) c + sigmoid(i) tanh(g); h = sigmoid(o) tanh(c); 16-bit types round after every op as the
// composition does (float32: rnd is the identity; _rn intrinsics keep f c + i g from contracting into an FMA).
//
// A persistent kernel: gridDim.x blocks, never more than can be resident at once (the launcher checks the SM
// count and the kernel's occupancy), each owning U consecutive hidden units j0 .. j0+U-1:
//   - its 4U rows of W_hh (gate g, unit u -> W_hh row g*H + j0 + u) sit in shared memory for the whole launch;
//   - the cell state c of (unit, batch row) lives in a register of one thread for the whole launch;
//   - each step stages h_{t-1} (N x H, written by every block) from global memory into shared memory (through
//     L2: L1 is not coherent across SMs), one warp per (row, batch) dot product, then one thread per (unit,
//     batch) does the cell update and writes out[t].
// Two ways to hand h from step to step (the template's FLAGS):
//   FLAGS = 0, a grid barrier: a counter in global memory (ws[0]) that only grows within a launch: step s waits
//     until it reaches (s + 1) * gridDim.x; blocks then read h_{t-1} from out.
//   FLAGS = 1, no barrier (NCCL's LL protocol): each cell also stores (tag = s + 1, h as float bits) as ONE 64-bit
//     word into an exchange buffer xb (2 x N x H words, slot s & 1); step s + 1 polls the words of slot s & 1 until
//     each carries tag s + 1. The value and its tag travel in one single-copy-atomic store, so no fence is needed,
//     and a block waits only for the values it reads. Two slots suffice: a block writes step s + 2 into slot s & 1
//     only after reading all of step s + 1, which every block wrote after it had read all of step s.
// The launcher zeroes ws (and xb) before every launch (a memset node inside a captured graph, so replays start
// from zero too: tag 0 is never a step's). Hangs are impossible by construction: a wait gives up after
// LSTM_TIMEOUT_NS of the GPU's global timer (or LSTM_MAX_SPINS polls), sets ws[1], and every block that sees
// ws[1] gives up as well; a block that gave up writes NaN over all its outputs and counts itself in *timeouts
// (a persistent counter cupy_lstm.barrier_timeouts() reads), so a failed launch is loud, never silent.

constexpr int LSTM_THREADS = 256, LSTM_WARPS = LSTM_THREADS / 32;
constexpr unsigned long long LSTM_TIMEOUT_NS = 2000000000ull;  // 2 s; a real step takes microseconds
constexpr unsigned LSTM_MAX_SPINS = 1u << 24;                  // backstop should the timer not advance

__device__ __forceinline__ unsigned long long lstm_now() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__device__ __forceinline__ float lstm_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// Thread 0 of a block: wait until the counter reaches target. false when the wait timed out or another block
// gave up (ws[1] set).
__device__ bool lstm_wait(unsigned *ws, unsigned target) {
    volatile unsigned *count = ws, *abort = ws + 1;
    const unsigned long long t0 = lstm_now();
    for (unsigned spin = 0; *count < target; spin++) {
        if (*abort) return false;
        if (spin >= LSTM_MAX_SPINS || ((spin & 255) == 255 && lstm_now() - t0 > LSTM_TIMEOUT_NS)) return false;
    }
    return true;
}

// Poll one exchange word until it carries `tag`; false on timeout or when another block gave up.
__device__ bool lstm_poll(const volatile unsigned long long *p, unsigned tag, unsigned *ws, unsigned long long *v) {
    volatile unsigned *abort = ws + 1;
    const unsigned long long t0 = lstm_now();
    for (unsigned spin = 0;; spin++) {
        *v = *p;
        if ((unsigned)(*v >> 32) == tag) return true;
        if (*abort) return false;
        if (spin >= LSTM_MAX_SPINS || ((spin & 255) == 255 && lstm_now() - t0 > LSTM_TIMEOUT_NS)) return false;
    }
}

// The grid-wide barrier after step s (target = (s + 1) * gridDim.x), in cooperative_groups' pattern: every
// thread's writes are ordered before thread 0's fence and arrival by __syncthreads; the fence after the wait
// orders the following reads. Returns false (in every thread of the block) when the block must give up.
__device__ bool lstm_barrier(unsigned *ws, unsigned target, int *ok_s) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(ws, 1u);
        const bool ok = lstm_wait(ws, target);
        if (!ok) atomicExch(ws + 1, 1u);
        __threadfence();
        *ok_s = ok;
    }
    __syncthreads();
    return *ok_s;
}

// xw (L, N, 4H), h0 (N, H), c0 (N, H), w_hh (4H, H), b_hh (4H,) or null, all contiguous; out (L, N, H), h_n and
// c_n (N, H) contiguous; ws [counter, give-up flag] and (FLAGS) xb (2, N, H) zeroed by the launcher. Dynamic
// shared memory: W rows (4U x H of T, padded to 16 bytes), h (N x H floats), dot products (4U x N floats):
// smem_bytes in cupy_lstm.py.
template <typename T, int FLAGS>
__global__ void __launch_bounds__(LSTM_THREADS) lstm_layer(
        const T *__restrict__ xw, const T *__restrict__ h0, const T *__restrict__ c0, const T *__restrict__ w_hh,
        const T *__restrict__ b_hh, T *out, T *__restrict__ h_n, T *__restrict__ c_n, unsigned *ws,
        unsigned long long *xb, unsigned *timeouts, int L, int N, int H, int U, int reverse) {
    extern __shared__ __align__(16) unsigned char lstm_smem[];
    __shared__ int ok_s, give_s;
    const int R = 4 * U;  // weight rows of this block
    T *w_s = reinterpret_cast<T *>(lstm_smem);
    float *h_s = reinterpret_cast<float *>(lstm_smem + (((size_t)R * H * sizeof(T) + 15) & ~(size_t)15));
    float *g_s = h_s + (size_t)N * H;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int j0 = blockIdx.x * U;
    const size_t H4 = (size_t)4 * H, NH = (size_t)N * H;
    if (tid == 0) give_s = 0;  // seen after step 0's first __syncthreads, written only from step 1 on

    for (int i = tid; i < R * H; i += LSTM_THREADS) {  // row r = g*U + u <- W_hh row g*H + j0 + u (zero past H)
        const int r = i / H, k = i - r * H, g = r / U, u = r - g * U;
        w_s[i] = j0 + u < H ? w_hh[((size_t)g * H + j0 + u) * H + k] : from_f<T>(0.f);
    }
    // this thread's cell: unit u, batch row n (threads U*N and up have none)
    const int cu = tid % U, cn = tid / U, j = j0 + cu;
    const bool cell = tid < U * N && j < H;
    float c = cell ? to_f<T>(c0[(size_t)cn * H + j]) : 0.f, h = 0.f;
    float bias[4];
    #pragma unroll
    for (int g = 0; g < 4; g++) bias[g] = cell && b_hh ? to_f<T>(b_hh[(size_t)g * H + j]) : 0.f;

    bool alive = true;
    for (int s = 0; s < L; s++) {
        const int t = reverse ? L - 1 - s : s;
        if (FLAGS && s > 0) {  // h_{t-1} from the exchange words of step s - 1 (tag s)
            const volatile unsigned long long *src = xb + (size_t)((s - 1) & 1) * NH;
            bool ok = true;
            for (int i0 = tid; ok && i0 < N * H; i0 += 4 * LSTM_THREADS) {
                unsigned long long v[4];  // four loads in flight, then a poll only where a word was not ready
                #pragma unroll
                for (int q = 0; q < 4; q++)
                    if (i0 + q * LSTM_THREADS < N * H) v[q] = src[i0 + q * LSTM_THREADS];
                #pragma unroll
                for (int q = 0; q < 4; q++) {
                    const int i = i0 + q * LSTM_THREADS;
                    if (!ok || i >= N * H) continue;
                    if ((unsigned)(v[q] >> 32) != (unsigned)s) ok = lstm_poll(src + i, (unsigned)s, ws, &v[q]);
                    h_s[i] = __uint_as_float((unsigned)v[q]);
                }
            }
            if (!ok) {
                atomicExch(ws + 1, 1u);
                give_s = 1;
            }
        } else {
            const T *hp = s == 0 ? h0 : out + (size_t)(reverse ? t + 1 : t - 1) * NH;
            for (int i = tid; i < N * H; i += LSTM_THREADS) h_s[i] = to_f<T>(__ldcg(hp + i));
        }
        float xg[4];
        if (cell) {
            const T *xr = xw + ((size_t)t * N + cn) * H4 + j;
            #pragma unroll
            for (int g = 0; g < 4; g++) xg[g] = to_f<T>(xr[(size_t)g * H]);
        }
        __syncthreads();  // h_s staged (and, at s = 0, w_s)
        if (FLAGS && give_s) {
            alive = false;
            break;
        }
        for (int p = warp; p < R * N; p += LSTM_WARPS) {  // pair p = (row r, batch row n): g_s[p] = W_r . h_n
            const int r = p / N, n = p - r * N;
            const T *wr = w_s + (size_t)r * H;
            const float *hr = h_s + (size_t)n * H;
            float acc = 0.f;
            #pragma unroll 4
            for (int k = lane; k < H; k += 32) acc = fmaf(to_f<T>(wr[k]), hr[k], acc);
            acc = warp_sum(acc);
            if (lane == 0) g_s[p] = acc;
        }
        __syncthreads();
        if (cell) {
            float gv[4];
            #pragma unroll
            for (int g = 0; g < 4; g++) {
                const float dot = g_s[(g * U + cu) * N + cn];
                const float lin = rnd<T>(b_hh ? __fadd_rn(dot, bias[g]) : dot);  // linear(h, W_hh, b_hh)
                gv[g] = rnd<T>(__fadd_rn(xg[g], lin));                               // xw[t] + that
            }
            const float si = rnd<T>(lstm_sigmoid(gv[0])), sf = rnd<T>(lstm_sigmoid(gv[1]));
            const float tg = rnd<T>(tanhf(gv[2])), so = rnd<T>(lstm_sigmoid(gv[3]));
            const float fc = rnd<T>(__fmul_rn(sf, c)), ig = rnd<T>(__fmul_rn(si, tg));
            c = rnd<T>(__fadd_rn(fc, ig));
            h = rnd<T>(__fmul_rn(so, rnd<T>(tanhf(c))));
            out[((size_t)t * N + cn) * H + j] = from_f<T>(h);
            if (FLAGS) {  // (tag, value) in one 64-bit store
                volatile unsigned long long *dst = xb + (size_t)(s & 1) * NH + (size_t)cn * H + j;
                *dst = ((unsigned long long)(s + 1) << 32) | __float_as_uint(h);
            }
        }
        if (!FLAGS && s + 1 < L && !lstm_barrier(ws, (unsigned)(s + 1) * gridDim.x, &ok_s)) {
            alive = false;
            break;
        }
    }
    if (alive) {
        if (cell) {
            h_n[(size_t)cn * H + j] = from_f<T>(h);
            c_n[(size_t)cn * H + j] = from_f<T>(c);
        }
        return;
    }
    // gave up: NaN over every output of this block's units, and counted
    const T nan = from_f<T>(__int_as_float(0x7fffffff));
    if (cell) {
        for (int t = 0; t < L; t++) out[((size_t)t * N + cn) * H + j] = nan;
        h_n[(size_t)cn * H + j] = nan;
        c_n[(size_t)cn * H + j] = nan;
    }
    if (tid == 0 && timeouts) atomicAdd(timeouts, 1u);
}
