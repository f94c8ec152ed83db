"""Session 18: where a captured decode step's time goes, launch by launch and phase by phase (timing only).

The kernels' sources are edited in memory (nothing in the tree changes) so that each block stamps %globaltimer
(one clock for every SM) into a buffer: every kernel with pdl_wait at its entry and return (thread 0), and every
GEMV (fp16 gemv, qgemv_direct, qgemv_ring, qgemv_span...) at its start, its wait's return, the end of its prologue
(x staged / quantised, the barrier after it; direct, ring and the fp16 gemvs) and each warp's exit. Then, per GEMV
launch of the last decode step (the bench.gguf_decode method: Llama-2-7B shape, random weights quantised by our
converter, batch 1, 128-token prompt, int8 route):
  gap       the previous GEMV's last warp exit -> this one's first wait return (the kernels between, the launch)
  prologue  wait return -> prologue end (median over blocks)
  body      prologue end -> median warp exit
  tail      median warp exit -> last warp exit
Usage: python timeline.py OUT.json FORMAT[,FORMAT...] [VARIANT ...]
  VARIANT: direct | ring | ring:key=value... (as decode_ring.py), then +key=value... (cupy_quant.DIRECT settings)
"""
import ctypes
import functools
import json
import sys

import numpy as np

import cupy
import engine
from bench.gguf_decode import build
from engine.backends import cupy_decode
from engine.backends import cupy_kernels as K
from engine.backends import cupy_quant as Q
from engine.quant import quantize_module

SM_CAP = 1 << 14  # records of 4 u64 an SM, a ring (the latest kept)
CAP = 256 * SM_CAP

TL = r"""
__device__ unsigned long long *tl_ptr;  // [sm]: that SM's count; from [256]: SM s's ring of SM_CAP_ records of 4
__shared__ unsigned long long tl_key, tl_ret;
__device__ __forceinline__ unsigned long long tl_now() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
__device__ __forceinline__ unsigned tl_smid() { unsigned s; asm volatile("mov.u32 %0, %%smid;" : "=r"(s)); return s; }
__device__ __forceinline__ void tl_put(unsigned long long tag, unsigned long long a, unsigned long long b,
                                       unsigned long long c) {
    if (tl_ptr == nullptr) return;
    const unsigned sm = tl_smid() & 255;  // a counter an SM: no contention across the GPU
    const unsigned long long i = atomicAdd(tl_ptr + sm, 1ull) % SM_CAP_;
    unsigned long long *r = tl_ptr + 256 + 4 * (SM_CAP_ * sm + i);
    r[0] = tag | ((unsigned long long)blockIdx.x << 8) | ((unsigned long long)sm << 32) |
           ((unsigned long long)(threadIdx.x >> 5) << 48);
    r[1] = a; r[2] = b; r[3] = c;
}
__device__ __forceinline__ void pdl_wait() {
    const unsigned long long t0 = tl_now();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
    const unsigned long long t1 = tl_now();
    if (threadIdx.x == 0 && threadIdx.y == 0) {
        tl_ret = t1;
        tl_put(1, t0, t1, gridDim.x | ((unsigned long long)gridDim.y << 20) | ((unsigned long long)blockDim.x << 40));
    }
}
__device__ __forceinline__ void tl_mark() {  // thread 0, after the prologue's barrier
    if (threadIdx.x == 0) tl_put(3, tl_ret, tl_now(), tl_key);
}
struct TLEnd {  // a GEMV's: its key (weight pointer, N) for pdl_wait's stamp; each warp's exit
    unsigned long long key, t0;
    __device__ TLEnd(const void *w, int n) : key((unsigned long long)w | ((unsigned long long)n << 48)), t0(tl_now()) {
        if (threadIdx.x == 0) tl_key = key, tl_ret = 0;
    }
    __device__ ~TLEnd() {
        if ((threadIdx.x & 31) == 0) tl_put(4, t0, tl_now(), key);
    }
};
""".replace("SM_CAP_", str(SM_CAP))

WAIT = """__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
"""
HEADS = ("const T *__restrict__ biasc, int n0, int n1) {\n", "const T *__restrict__ biasc, int n0, int n1, int S, int pre) {\n")
MARKS = ("    __syncthreads();\n", "    __syncthreads();\n    int s = 0;\n",
         "    stage_x<T>(x, x_row, nw, eps, style, xs, K, rows, red);\n    __syncthreads();\n",
         "    stage_x8<T>(x, x_row, nw, eps, style, xs, K, rows, red);\n    __syncthreads();\n")


def edit(src: str) -> str:
    assert src.count(WAIT) == 1
    src = src.replace(WAIT, TL)
    for h in HEADS:
        src = src.replace(h, h + "    TLEnd tl_end_((const void *)W, N);\n")
    src = src.replace("    __syncthreads();\n    // no barriers from here on",
                      "    __syncthreads();\n    tl_mark();\n    // no barriers from here on")
    for m in MARKS[1:]:
        src = src.replace(m, m + "    tl_mark();\n")
    return src


BUF = {"mods": []}


def _recording(f):
    """f (an lru-cached module factory) as one that also keeps each module it makes."""
    @functools.lru_cache(maxsize=None)
    def g(*a):
        m = f.__wrapped__(*a)
        BUF["mods"].append(m)
        return m
    return g


def install():
    BUF["buf"] = cupy.zeros(256 + 4 * CAP, dtype=cupy.uint64)
    K._SRC = edit(K._SRC)
    cupy_decode._SRC = edit(cupy_decode._SRC)
    K._module = _recording(K._module)
    cupy_decode._module = _recording(cupy_decode._module)
    cupy_decode._cluster_module = _recording(cupy_decode._cluster_module)
    K._FNS.clear()


def arm():
    """Every edited module's tl_ptr at the buffer (a device global, read when a kernel runs: captured graphs too)."""
    p = ctypes.c_uint64(BUF["buf"].data.ptr)
    n = 0
    for m in BUF["mods"]:
        try:
            g = m.get_global("tl_ptr")
        except Exception:  # noqa: BLE001  (a module of unedited source)
            continue
        g.copy_from_host(ctypes.addressof(p), 8)
        n += 1
    return n


def resolution() -> float:
    """The smallest step of %globaltimer seen by one thread (ns)."""
    k = cupy.RawKernel(r"""extern "C" __global__ void res(unsigned long long *o) {
        unsigned long long a, b, m = ~0ull; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(a));
        for (int i = 0; i < 100000; i++) { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(b));
            if (b != a) { m = min(m, b - a); a = b; } }
        o[0] = m; }""", "res")
    o = cupy.zeros(1, cupy.uint64)
    k((1,), (1,), (o,))
    return float(o.get()[0])


def records():
    """Every record still in the SMs' rings (the latest SM_CAP an SM), in no order."""
    b = BUF["buf"].get()
    n = np.minimum(b[:256], SM_CAP)
    r = b[256:].reshape(256, SM_CAP, 4)
    return np.concatenate([r[s, :n[s]] for s in range(256) if n[s]])


def analyse(r) -> dict:
    tag = r[:, 0] & 0xFF
    ends, marks, waits = r[tag == 4], r[tag == 3], r[tag == 1]
    keys = {}
    for k in np.unique(ends[:, 3]):
        e = ends[ends[:, 3] == k]
        keys[int(k)] = e
    # GEMV launches: a key's warp exits cluster into launches (a step each); split where exits are > 20 us apart
    launches = []
    for k, e in keys.items():
        t = np.sort(e[:, 2])
        cut = np.where(np.diff(t) > 20_000)[0]
        lo = 0
        for hi in list(cut + 1) + [len(t)]:
            launches.append((int(t[lo]), int(t[hi - 1]), k, t[lo:hi]))
            lo = hi
    launches.sort()
    # the last step: from the last LM head (largest N) before the final one... take the last complete set between
    # the two last LM-head launches
    ns = [(k >> 48) for _, _, k, _ in launches]
    big = max(ns)
    heads = [i for i, n in enumerate(ns) if n == big]
    a, b = heads[-2] + 1, heads[-1] + 1
    rows = []
    prev_end = launches[a - 1][1]
    mk_t = marks[:, 2].astype(np.int64)
    wt = waits[:, 2].astype(np.int64)
    for first_exit, last_exit, k, exits in launches[a:b]:
        m = marks[(marks[:, 3] == k) & (mk_t > prev_end) & (mk_t <= last_exit)]
        ret = m[:, 1].astype(np.int64) if len(m) else np.array([0])
        pro = m[:, 2].astype(np.int64) if len(m) else np.array([0])
        st = keys[k]
        st = st[(st[:, 2].astype(np.int64) > prev_end) & (st[:, 2].astype(np.int64) <= last_exit)][:, 1].astype(np.int64)
        # non-GEMV kernels between: their waits' returns after prev_end and before this launch's first return
        between = int(((wt > prev_end) & (wt < ret.min())).sum()) if len(m) else 0
        med_exit = int(np.median(exits))
        rows.append({"N": int(k >> 48), "blocks": int(len(m)), "warps": int(len(exits)),
                     "first_start_vs_prev_end_us": (int(st.min()) - prev_end) / 1e3,
                     "gap_us": (int(ret.min()) - prev_end) / 1e3 if len(m) else None,
                     "ret_spread_us": (int(ret.max()) - int(ret.min())) / 1e3 if len(m) else None,
                     "prologue_us": (int(np.median(pro)) - int(np.median(ret))) / 1e3 if len(m) else None,
                     "body_us": (med_exit - int(np.median(pro))) / 1e3 if len(m) else None,
                     "tail_us": (last_exit - med_exit) / 1e3,
                     "span_us": (last_exit - prev_end) / 1e3, "waits_between": between})
        prev_end = last_exit
    step = (launches[b - 1][1] - launches[a - 1][1]) / 1e3
    return {"step_us": step, "launches": rows}


def summarise(res: dict) -> str:
    rows = res["launches"]
    out = [f"step {res['step_us']:.1f} us, {len(rows)} GEMV launches"]
    by = {}
    for i, r in enumerate(rows):
        by.setdefault(r["N"], []).append(r)
    for n, rs in by.items():
        f = lambda key: np.mean([r[key] for r in rs if r[key] is not None])  # noqa: E731
        out.append(f"N={n:6d} x{len(rs):3d}: span {f('span_us'):6.2f}  gap {f('gap_us'):5.2f}  prologue "
                   f"{f('prologue_us'):5.2f}  body {f('body_us'):6.2f}  tail {f('tail_us'):5.2f}  first start "
                   f"{f('first_start_vs_prev_end_us'):6.2f}  ret spread {f('ret_spread_us'):5.2f}  "
                   f"blocks {f('blocks'):.0f}  waits between {f('waits_between'):.1f}")
    tot = {k: sum(r[k] or 0 for r in rows) for k in ("span_us", "gap_us", "prologue_us", "body_us", "tail_us")}
    out.append("sums (us): " + "  ".join(f"{k[:-3]} {v:.1f}" for k, v in tot.items()))
    return "\n".join(out)


def main(out, formats, variants):
    install()
    print(f"globaltimer step: {resolution():.0f} ns", flush=True)
    sys.path.insert(0, "measurements/h200/session17")
    from decode_ring import switch  # noqa: E402
    import impls
    from suites.timing import step_seconds
    K.QUANT_KERNELS["enabled"] = True
    Q.QUANT_DOT["route"] = "int8"
    res = {}
    for fmt in formats.split(","):
        m = build("llama-2-7b", "cuda", 0)
        if fmt != "fp16":
            quantize_module(m, fmt)
        for v in variants if fmt != "fp16" else variants[:1]:
            switch(v.split("+")[0])
            Q.DIRECT.update(Q.DIRECT_SETTINGS)
            for kv in v.split("+")[1:]:  # +key=value: cupy_quant.DIRECT settings (qgemv_direct's u, b, p)
                k, val = kv.split("=")
                Q.DIRECT[k] = int(val)
            Q._SPAN_LAUNCH.clear()
            lm = impls.get("engine", "cuda", "float16").load(None, module=m)
            ids = np.random.default_rng(0).integers(0, m.config.vocab_size, (1, 128))
            step_seconds(lm, ids, 128)  # warm-up: eager steps, record, plan, capture (bench.gguf_decode's)
            t_plain = min(step_seconds(lm, ids, 64) for _ in range(2))  # (call 3: the first run after it is slow)
            print(f"armed {arm()} modules", flush=True)
            BUF["buf"][:256] = 0
            cupy.cuda.runtime.deviceSynchronize()
            t = step_seconds(lm, ids, 64)  # the captured steps, stamped; the last full one analysed
            a = analyse(records())
            a["stamped_step_us"], a["plain_step_us"] = t * 1e6, t_plain * 1e6
            res[f"{fmt}@{v}"] = a
            print(f"== {fmt} {v}: plain {t_plain * 1e6:.1f} us a step, stamped {t * 1e6:.1f}", flush=True)
            print(summarise(a), flush=True)
            with open(out, "w") as f:
                json.dump(res, f, indent=1)
            lm.decoder = None
        del m
        engine.backend("cuda").pool.empty_cache()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:] or ["direct"])
