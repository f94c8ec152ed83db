// conv.cu: CUDA sources of engine/backends/cupy_kernels.py, compiled apart from the others (after prelude.cuh
// and common.cuh) since <mma.h> needs CUDA's crt/ headers, which some installs (pip's nvidia/cu13) lack:
// without them only conv2d_igemm is unavailable.
#include <mma.h>

// ---- 2-d convolution as an implicit GEMM on tensor cores (16-bit, float32 accumulate) -----------------------------
// out (N, O, OH, OW) = W (O, K) @ cols (K, N*OH*OW), K = C*KH*KW, where cols is never stored: each K x 64 tile is
// gathered from x (N, C, H, W) (zero outside the padding) into shared memory. x, W contiguous; out contiguous.
// Tiles: 64 output channels x 64 positions x 32 of K per step, 4 warps of 2 x 2 wmma 16x16x16 fragments. The sum
// is rounded once to T, then the bias is added and rounded again (as the composition: matmul, then out += bias);
// act (1 silu, 2 gelu_tanh, 3 gelu; 0 none) then computes in float32 from that and rounds (conv_act).
constexpr int CV_BM = 64, CV_BN = 64, CV_BK = 32;

template <typename T>
__global__ void __launch_bounds__(128) conv2d_igemm(const T *__restrict__ x, const T *__restrict__ W,
        const T *__restrict__ bias, T *__restrict__ out, int N, int C, int H, int Wd, int O, int KH, int KW,
        int OH, int OW, int sh, int sw, int ph, int pw, int dh, int dw, int act) {
    using namespace nvcuda;
    __shared__ __align__(32) T As[CV_BM][CV_BK + 8];
    __shared__ __align__(32) T Bs[CV_BK][CV_BN + 8];
    __shared__ __align__(32) float Cs[CV_BM][CV_BN + 4];
    const int K = C * KH * KW, KK = KH * KW;
    const long P = (long)OH * OW, cols = (long)N * P;
    const int m0 = blockIdx.y * CV_BM;
    const long n0 = (long)blockIdx.x * CV_BN;
    const int warp = threadIdx.x >> 5, wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    // the 64 columns of this block: each thread owns one column for the B gathers (two threads per column)
    const int bcol = threadIdx.x & 63, bk0 = threadIdx.x >> 6;  // rows bk0, bk0 + 2, ... of the K tile
    const long col = n0 + bcol;
    const bool col_ok = col < cols;
    int img = 0, oh = 0, ow = 0;
    if (col_ok) { img = (int)(col / P); const long p = col % P; oh = (int)(p / OW); ow = (int)(p % OW); }
    const T *ximg = x + (size_t)img * C * H * Wd;
    const int ih0 = oh * sh - ph, iw0 = ow * sw - pw;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
    #pragma unroll
    for (int i = 0; i < 2; i++)
        #pragma unroll
        for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.f);
    const T zero = from_f<T>(0.f);
    for (int k0 = 0; k0 < K; k0 += CV_BK) {
        for (int i = threadIdx.x; i < CV_BM * CV_BK; i += 128) {  // A: weight rows, contiguous along K
            const int mm = i / CV_BK, kk = i % CV_BK, m = m0 + mm, k = k0 + kk;
            As[mm][kk] = (m < O && k < K) ? W[(size_t)m * K + k] : zero;
        }
        #pragma unroll 4
        for (int kk = bk0; kk < CV_BK; kk += 2) {  // B: the im2col column of this thread, gathered from x
            const int k = k0 + kk;
            T v = zero;
            if (col_ok && k < K) {
                const int c = k / KK, r = k % KK, ih = ih0 + (r / KW) * dh, iw = iw0 + (r % KW) * dw;
                if (ih >= 0 && ih < H && iw >= 0 && iw < Wd) v = ximg[((size_t)c * H + ih) * Wd + iw];
            }
            Bs[kk][bcol] = v;
        }
        __syncthreads();
        #pragma unroll
        for (int kk = 0; kk < CV_BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> bf[2];
            #pragma unroll
            for (int i = 0; i < 2; i++) wmma::load_matrix_sync(a[i], &As[wm + 16 * i][kk], CV_BK + 8);
            #pragma unroll
            for (int j = 0; j < 2; j++) wmma::load_matrix_sync(bf[j], &Bs[kk][wn + 16 * j], CV_BN + 8);
            #pragma unroll
            for (int i = 0; i < 2; i++)
                #pragma unroll
                for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], a[i], bf[j], acc[i][j]);
        }
        __syncthreads();
    }
    #pragma unroll
    for (int i = 0; i < 2; i++)
        #pragma unroll
        for (int j = 0; j < 2; j++)
            wmma::store_matrix_sync(&Cs[wm + 16 * i][wn + 16 * j], acc[i][j], CV_BN + 4, wmma::mem_row_major);
    __syncthreads();
    for (int i = threadIdx.x; i < CV_BM * CV_BN; i += 128) {
        const int mm = i / CV_BN, nn = i % CV_BN, m = m0 + mm;
        const long c2 = n0 + nn;
        if (m >= O || c2 >= cols) continue;
        float v = rnd<T>(Cs[mm][nn]);
        if (bias != nullptr) v = __fadd_rn(v, to_f<T>(bias[m]));
        if (act) v = act_fn(rnd<T>(v), act);
        out[((size_t)(c2 / P) * O + m) * P + c2 % P] = from_f<T>(v);
    }
}
