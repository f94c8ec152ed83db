// prelude.cuh: CUDA sources of engine/backends/cupy_kernels.py (compiled by cupy's NVRTC, not on their own).
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
// the value after rounding to T, as a float
template <typename T> __device__ __forceinline__ float rnd(float v) { return to_f<T>(from_f<T>(v)); }

// 16 bytes of T as floats: 8 halves / bf16s or 4 floats
template <typename T> struct Vec { static constexpr int N = 16 / sizeof(T); };
template <typename T>
__device__ __forceinline__ void unpack(const uint4 &u, float *f) {
    const T *h = reinterpret_cast<const T *>(&u);
    #pragma unroll
    for (int i = 0; i < Vec<T>::N; i++) f[i] = to_f<T>(h[i]);
}
template <typename T>
__device__ __forceinline__ uint4 pack(const float *f) {
    uint4 u;
    T *h = reinterpret_cast<T *>(&u);
    #pragma unroll
    for (int i = 0; i < Vec<T>::N; i++) h[i] = from_f<T>(f[i]);
    return u;
}

__device__ __forceinline__ float warp_sum(float v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}

// Programmatic dependent launch (sm_90 on; cupy_launch.launch with pdl): such a kernel may start while the kernel
// before it in the stream still runs. pdl_wait() returns once that kernel has finished and its writes are visible,
// so a kernel reads nothing an earlier kernel writes (x, residuals, routing ids), and writes nothing, before it;
// weights it may load before only where the launcher says no kernel writes them (cupy_launch). pdl_trigger()
// lets the stream's next such launch start (its blocks take SMs as this kernel's leave). Both are no-ops in a
// kernel launched the usual way.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// a pointer into this block's shared memory as the 32-bit shared-window address PTX's .shared operands take
__device__ __forceinline__ unsigned smem_addr(const void *p) { return (unsigned)__cvta_generic_to_shared(p); }
