// mma.cuh: CUDA sources of engine/backends/cupy_kernels.py and cupy_flash.py (after prelude.cuh).
// One tensor-core product, mma.sync m16n8k16 with float32 accumulate, by inline PTX (no <mma.h>: some
// NVRTC installs lack its crt/ headers). Fragments (g = lane / 4, t = lane % 4), each register two
// 16-bit values, the lower index in the low half: A (16 x 16, row) a0 = A[g][2t..], a1 = A[g+8][2t..],
// a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]; B (16 x 8, col) b0 = B[2t..][g], b1 = B[2t+8..][g];
// C (16 x 8) c[0..1] = C[g][2t..], c[2..3] = C[g+8][2t..].
template <typename T>
__device__ __forceinline__ void mma16816(float *c, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0,
                                         unsigned b1);
template <>
__device__ __forceinline__ void mma16816<__half>(float *c, unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                                 unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};" : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float *c, unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                                        unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};" : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

