"""Session 13 probe: does an L2 prefetch issued by one kernel (cp.async.bulk.prefetch.L2, or per-line
prefetch.global.L2) let the next kernel read its weights from L2, and does the step then keep the DRAM busy?

Chains of CUDA-graph-captured kernels over distinct buffers (together far past the L2), timed per kernel:
  read:        reader(W_i) back to back, no prefetch (a GEMV's streaming reads: 16-byte no-allocate loads)
  read+pf:     reader(W_i) prefetching W_{i+1} (up to `cap` bytes) at its start
  spin/read:   spin(us) -> reader(W_i)  (a latency-bound kernel such as the decode attention between GEMVs)
  spin+pf/read: spin prefetching W_i, then reader(W_i)
Usage: python prefetch_probe.py OUT.json
"""
import json
import sys

import cupy as cp

SRC = r'''
__device__ __forceinline__ uint4 ld_stream(const uint4 *p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}
__device__ __forceinline__ void prefetch(const unsigned char *pf, long pn, int chunk, int mode) {
    // pieces spread over the blocks first (piece c: block c % grid), so every SM's copy engine takes a share
    if (pn <= 0) return;
    const long t = (long)threadIdx.x * gridDim.x + blockIdx.x, nt = (long)gridDim.x * blockDim.x;
    if (mode == 1) {  // cp.async.bulk.prefetch.L2 of `chunk` bytes a piece
        const long nch = (pn + chunk - 1) / chunk;
        for (long c = t; c < nch; c += nt) {
            const long off = c * chunk;
            const unsigned sz = (unsigned)min((long)chunk, pn - off);
            asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" :: "l"(pf + off), "r"(sz) : "memory");
        }
    } else if (mode == 2) {  // prefetch.global.L2 of every 32-byte sector
        for (long off = t * 32; off < pn; off += nt * 32)
            asm volatile("prefetch.global.L2::evict_normal [%0];" :: "l"(pf + off));
    } else if (mode == 4) {  // every byte as the reader loads it (16-byte no-allocate loads), spread over blocks
        unsigned acc = 0;
        const uint4 *p4 = reinterpret_cast<const uint4 *>(pf);
        for (long i = t; i < pn / 16; i += nt) {
            const uint4 v = ld_stream(p4 + i);
            acc ^= v.x ^ v.y ^ v.z ^ v.w;
        }
        if (acc == 0x9e3779b9u) asm volatile("trap;");
    } else {  // mode 3: a 4-byte load a 128-byte line with the 128-byte L2 fetch hint (a real load)
        unsigned acc = 0;
        for (long off = t * 128; off < pn; off += nt * 128) {
            unsigned v;
            asm volatile("ld.global.nc.L1::no_allocate.L2::128B.u32 %0, [%1];" : "=r"(v) : "l"(pf + off));
            acc ^= v;
        }
        if (acc == 0x9e3779b9u) asm volatile("trap;");
    }
}
extern "C" __global__ void reader(const uint4 *__restrict__ w, long n16, unsigned *out,
                                  const unsigned char *pf, long pn, int chunk, int mode) {
    // a GEMV's pattern: a warp reads consecutive 16-byte chunks, 4 loads a lane in flight
    const long st = (long)gridDim.x * blockDim.x;
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    uint4 a = i < n16 ? ld_stream(w + i) : make_uint4(0, 0, 0, 0);
    prefetch(pf, pn, chunk, mode);
    unsigned acc = a.x ^ a.y ^ a.z ^ a.w;
    for (i += st; i + 3 * st < n16; i += 4 * st) {
        const uint4 b = ld_stream(w + i), c = ld_stream(w + i + st), d = ld_stream(w + i + 2 * st),
                    e = ld_stream(w + i + 3 * st);
        acc += (b.x ^ b.y ^ b.z ^ b.w) + (c.x ^ c.y ^ c.z ^ c.w) + (d.x ^ d.y ^ d.z ^ d.w) + (e.x ^ e.y ^ e.z ^ e.w);
    }
    for (; i < n16; i += st) { const uint4 b = ld_stream(w + i); acc += b.x ^ b.y ^ b.z ^ b.w; }
    if (acc == 0x9e3779b9u) out[0] = acc;
}
extern "C" __global__ void spin(long ns, const unsigned char *pf, long pn, int chunk, int mode) {
    prefetch(pf, pn, chunk, mode);
    if (threadIdx.x == 0) {
        unsigned long long t0, t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
        do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while ((long)(t - t0) < ns);
    }
}
'''


MODES = {1: "bulk", 2: "sectors", 3: "ld128", 4: "full read"}


def main(out_path):
    mod = cp.RawModule(code=SRC, options=("-std=c++17", "-arch=sm_90"))
    reader, spin = mod.get_function("reader"), mod.get_function("spin")
    dev = cp.cuda.Device()
    sms, l2 = dev.attributes["MultiProcessorCount"], dev.attributes["L2CacheSize"]
    print(f"SMs {sms}, L2 {l2 / 2**20:.1f} MiB", flush=True)
    out = cp.zeros(4, cp.uint32)
    res = {"sms": sms, "l2_bytes": l2, "rows": []}
    stream = cp.cuda.Stream(non_blocking=True)
    i64, i32 = cp.int64, cp.int32
    null = cp.uint64(0)

    def timed(build, n_kernels, reps=10):
        with stream:
            stream.begin_capture()
            build()
            g = stream.end_capture()
            g.launch(stream)
            stream.synchronize()
            e0, e1 = cp.cuda.Event(), cp.cuda.Event()
            e0.record(stream)
            for _ in range(reps):
                g.launch(stream)
            e1.record(stream)
            e1.synchronize()
        return cp.cuda.get_elapsed_time(e0, e1) * 1e3 / reps / n_kernels  # us a kernel (pair)

    for size_mb in (9.4, 25.4, 50.7):
        nbytes = int(size_mb * 1e6) // 16 * 16
        n = max(8, int(2.5e9 // nbytes))  # buffers: 2.5 GB in all, far past the L2
        bufs = [cp.empty(nbytes, cp.uint8) for _ in range(n)]
        for b in bufs:
            b.fill(1)
        grid = (sms * 4,)

        def rd(i, pf=None, pn=0, chunk=4096, mode=1):
            reader(grid, (256,), (bufs[i], i64(nbytes // 16), out, pf if pf is not None else null, i64(pn),
                                  i32(chunk), i32(mode)))

        def chain(cap, chunk, mode):
            def build():
                for i in range(n):
                    nxt = bufs[(i + 1) % n]
                    rd(i, nxt if cap else None, min(cap, nbytes) if cap else 0, chunk, mode)
            return build

        def spin_chain(us, pf, chunk=16384, mode=1, cap=None):
            def build():
                for i in range(n):
                    pn = min(cap or nbytes, nbytes)
                    spin((sms,), (128,), (i64(int(us * 1000)), bufs[i] if pf else null, i64(pn if pf else 0),
                                          i32(chunk), i32(mode)))
                    rd(i)
            return build

        base = timed(chain(0, 4096, 1), n)
        rows = [("read", base)]
        twice = timed(lambda: [(rd(i), rd(i)) for i in range(n)], 2 * n)
        rows.append(("read, then the same buffer again (a pair / 2)", twice))
        for cap_mb in (8, 24, 48):
            for chunk, mode in ((4096, 1), (16384, 1), (65536, 1), (0, 2), (0, 3)):
                if cap_mb * 1e6 > nbytes * 1.5 and cap_mb != 8:
                    continue
                t = timed(chain(int(cap_mb * 1e6) // 16 * 16, chunk, mode), n)
                rows.append((f"read+pf cap {cap_mb} MB {MODES[mode]} {chunk or ''}", t))
        for us in (4, 8):
            s_only = timed(lambda: [spin((sms,), (128,), (i64(us * 1000), null, i64(0), i32(4096), i32(1)))
                                    for _ in range(n)], n)
            rows.append((f"spin {us} us alone", s_only))
            rows.append((f"spin {us} us -> read", timed(spin_chain(us, False), n)))
            for chunk, mode in ((4096, 1), (16384, 1), (65536, 1), (0, 2), (0, 3), (0, 4)):
                rows.append((f"spin {us} us +pf {MODES[mode]} {chunk or ''} -> read",
                             timed(spin_chain(us, True, chunk, mode), n)))
        for name, t in rows:
            gbs = nbytes / (t * 1e-6) / 1e9
            print(f"  {size_mb:5.1f} MB  {name:44s} {t:8.2f} us  ({gbs:7.1f} GB/s of the buffer)", flush=True)
            res["rows"].append({"mb": size_mb, "case": name, "us": t})
        del bufs
        cp.get_default_memory_pool().free_all_blocks()
    with open(out_path, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
