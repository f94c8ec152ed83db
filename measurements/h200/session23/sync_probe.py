"""Session 23: what a dependency between two phases of a decode step costs on the card, kernel boundary against
grid barrier (is a persistent decode kernel worth building? measurements/h200/NOTES.md, "Where Q4_K's 2.8x stands").

N phases, each block of a grid reading a value another block wrote in the phase before and writing its own
(a true grid-wide dependency, almost no work), timed as:
  launches  N kernels captured in one CUDA graph, each a programmatic dependent launch (cupy_launch, as the
            decode's GEMVs): griddepcontrol.wait at the start, launch_dependents right after it
  plain     the same N kernels captured without PDL
  barrier   one kernel of N phases with a grid barrier between them (an arrival counter and a generation word,
            release/acquire at gpu scope; every block resident: grid <= 2 a SM)
  barrier+  the same with 64 KB of global loads a block issued before each barrier (the next phase's
            "weights", as a GEMV prefetches them) and consumed after it, against launches+ (the same loads
            issued before griddepcontrol.wait)
Per phase: us (median of 20 graph replays / kernel runs of N = 256 phases, cupy events). Timing only.
"""
import json
import os
import sys

import cupy
import numpy as np

sys.path.insert(0, ".")
from engine.backends import cupy_launch  # noqa: E402

SRC = r"""
__device__ __forceinline__ unsigned ld_acquire(const unsigned *p) {
    unsigned v; asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory"); return v;
}
__device__ __forceinline__ void grid_barrier(unsigned *count, unsigned *gen, unsigned nblocks) {
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned g = ld_acquire(gen);
        unsigned arrived;
        asm volatile("atom.add.acq_rel.gpu.global.u32 %0, [%1], 1;" : "=r"(arrived) : "l"(count) : "memory");
        if (arrived == nblocks - 1) {
            *count = 0;
            asm volatile("st.release.gpu.global.u32 [%0], %1;" :: "l"(gen), "r"(g + 1) : "memory");
        } else {
            while (ld_acquire(gen) == g) {}
        }
    }
    __syncthreads();
}
#define NW 16  // float4 a thread: 64 KB a block of 256 threads
struct Held { float4 r[NW]; };
__device__ __forceinline__ void issue(Held &h, const float4 *w, bool on) {  // loads in flight into registers
    #pragma unroll
    for (int i = 0; i < NW; i++) h.r[i] = on ? __ldg(w + i * blockDim.x) : make_float4(0.f, 0.f, 0.f, 0.f);
}
__device__ __forceinline__ float consume(const Held &h) {
    float s = 0.f;
    #pragma unroll
    for (int i = 0; i < NW; i++) s += h.r[i].x + h.r[i].y + h.r[i].z + h.r[i].w;
    return s;
}
extern "C" __global__ void phase(float *buf, int p, int pdl, const float4 *w, int load) {
    const int b = blockIdx.x, n = gridDim.x;
    Held h;
    issue(h, w + (long)b * NW * blockDim.x + threadIdx.x, load);  // before the wait, as a GEMV's weights
    if (pdl) {
        asm volatile("griddepcontrol.wait;" ::: "memory");
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    }
    __shared__ float got;
    if (threadIdx.x == 0) got = buf[(p & 1) * n + (b + 1) % n];
    __syncthreads();
    const float pre = consume(h);
    if (threadIdx.x == 0) buf[((p + 1) & 1) * n + b] = got + 1.f + (pre == 12345.f);
}
extern "C" __global__ void persistent(float *buf, int phases, unsigned *sync, const float4 *w, int load) {
    const int b = blockIdx.x, n = gridDim.x;
    __shared__ float got;
    Held h;
    issue(h, w + (long)b * NW * blockDim.x + threadIdx.x, load);
    for (int p = 0; p < phases; p++) {
        if (threadIdx.x == 0) got = buf[(p & 1) * n + (b + 1) % n];
        __syncthreads();
        const float pre = consume(h);
        if (threadIdx.x == 0) buf[((p + 1) & 1) * n + b] = got + 1.f + (pre == 12345.f);
        // the next phase's loads go out before the barrier (its "weights": nothing in the step writes them)
        issue(h, w + ((long)((p + 1) & 7) * n + b) * NW * blockDim.x + threadIdx.x, load && p + 1 < phases);
        grid_barrier(sync, sync + 1, n);
    }
}
"""


def median_us(fn, reps=20):
    s, e = cupy.cuda.Event(), cupy.cuda.Event()
    fn()
    ts = []
    for _ in range(reps):
        s.record()
        fn()
        e.record()
        e.synchronize()
        ts.append(cupy.cuda.get_elapsed_time(s, e) * 1e3)
    return float(np.median(ts))


def main():
    mod = cupy.RawModule(code=SRC, options=("-std=c++17",))
    phase, persistent = mod.get_function("phase"), mod.get_function("persistent")
    sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
    N, T = 256, 256
    out = {"card": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "sms": sms, "phases": N}
    nw = 16  # NW: 64 KB a block
    w = cupy.ones(8 * 2 * sms * nw * T * 4, cupy.float32)  # 8 phases' worth of distinct bytes (beyond L2 at 2/SM)
    for grid in (sms, 2 * sms):
        buf = cupy.zeros(2 * grid, cupy.float32)
        sync = cupy.zeros(2, cupy.uint32)
        for tag, load in (("", 0), ("+", 1)):
            for mode in ("launches", "plain"):
                if mode == "plain" and load:
                    continue
                stream = cupy.cuda.Stream(non_blocking=True)
                with stream:
                    stream.begin_capture()
                    for p in range(N):
                        ww = w[((p & 7) * grid) * nw * T * 4:]
                        cupy_launch.launch(phase, (grid,), (T,), (buf, np.int32(p), np.int32(mode == "launches"),
                                                                   ww, np.int32(load)), pdl=(mode == "launches"))
                    g = stream.end_capture()
                with stream:
                    us = median_us(lambda: g.launch(stream))
                out[f"{mode}{tag} grid {grid}"] = us / N
            us = median_us(lambda: persistent((grid,), (T,), (buf, np.int32(N), sync, w, np.int32(load))))
            out[f"barrier{tag} grid {grid}"] = us / N
    for k, v in out.items():
        print(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}", flush=True)
    path = os.path.join(os.environ.get("OUT", "."), "sync_probe.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
