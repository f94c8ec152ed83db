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
