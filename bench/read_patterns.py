"""How fast a GPU reads device memory in the access patterns the GEMV kernels use: every lane's 16-byte loads
either coalesced (a warp's load covers 512 contiguous bytes, as gemv.cu's) or a run of C chunks of its own
(`C x 16` contiguous bytes a lane, lanes C x 16 bytes apart, as quant_direct.cu's units: Q4_K64's 2 chunks,
Q8_0's 17), through the no-allocate path (ld_stream) or the L1-cached one (__ldg); B blocks of 256 threads an
SM, each walking the buffer grid-stride. Prints GB/s (bytes read, median of --repeats event-timed launches over
a buffer many times L2's size) beside the device copy rate.

    python -m bench.read_patterns --out read_patterns.json
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

SRC = r"""
template <int C, int NA>
__global__ void __launch_bounds__(256) read_runs(const uint4 *__restrict__ p, long n16, unsigned *out) {
    // unit = C chunks; lane-run layout: thread t's units are t, t + T, ... (T threads in all); C = 0: coalesced
    const long T = (long)gridDim.x * blockDim.x, t = (long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned acc = 0;
    const int CC = C == 0 ? 1 : C;
    for (long u = t; (u + 1) * CC <= n16; u += T) {
        uint4 v[CC];
        #pragma unroll
        for (int i = 0; i < CC; i++) {
            const uint4 *a = p + u * CC + i;
            if (NA) asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                                 : "=r"(v[i].x), "=r"(v[i].y), "=r"(v[i].z), "=r"(v[i].w) : "l"(a));
            else v[i] = __ldg(a);
        }
        #pragma unroll
        for (int i = 0; i < CC; i++) acc ^= v[i].x ^ v[i].y ^ v[i].z ^ v[i].w;
    }
    if (acc == 0x9e3779b9u) out[0] = acc;  // keeps the loads
}
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", default="0,1,2,8,9,17", help="C values (0: coalesced)")
    p.add_argument("--blocks", default="1,2,4,8", help="blocks an SM")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out")
    a = p.parse_args(argv)
    import cupy

    from bench.probes import copy_gb_per_s
    from engine.io.atomic import atomic_write_text
    sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
    l2 = cupy.cuda.runtime.getDeviceProperties(0)["l2CacheSize"]
    nbytes = max(16 * l2, 1 << 30) // (17 * 16) * (17 * 16)
    buf = cupy.random.default_rng(0).integers(0, 2**31, nbytes // 4, dtype=cupy.uint32)
    out = cupy.zeros(1, cupy.uint32)
    names = [f"read_runs<{c},{na}>" for c in map(int, a.chunks.split(",")) for na in (1, 0)]
    mod = cupy.RawModule(code=SRC, options=("-std=c++17",), name_expressions=names)
    res = {"card": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "copy_gb_per_s": copy_gb_per_s("cuda"),
           "bytes": nbytes, "rows": []}
    print(f"{res['card']}: device copy {res['copy_gb_per_s']:.0f} GB/s; buffer {nbytes / 1e9:.2f} GB", flush=True)
    s, e = cupy.cuda.Event(), cupy.cuda.Event()
    for name in names:
        fn = mod.get_function(name)
        for b in map(int, a.blocks.split(",")):
            grid = (sms * b,)
            fn(grid, (256,), (buf, np.int64(nbytes // 16), out))
            ts = []
            for _ in range(a.repeats):
                s.record()
                fn(grid, (256,), (buf, np.int64(nbytes // 16), out))
                e.record()
                e.synchronize()
                ts.append(cupy.cuda.get_elapsed_time(s, e) * 1e-3)
            gbs = nbytes / float(np.median(ts)) / 1e9
            res["rows"].append({"kernel": name, "blocks_per_sm": b, "gb_per_s": round(gbs, 1)})
            print(f"  {name:22s} B={b}  {gbs:8.1f} GB/s", flush=True)
    if a.out:
        atomic_write_text(a.out, json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
