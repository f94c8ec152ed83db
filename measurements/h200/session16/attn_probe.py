"""Session 16: the decode attention alone, as a decode step runs it: one launch a layer, 32 layers (each its own
K/V cache, so the reads come from DRAM as in a step, not from L2), captured in a graph (each launch a PDL),
replayed; microseconds a launch. Llama-2-7B's shape (batch 1, 32 heads of 128, float16), static caches of S slots
with the first `live` positions readable (the mask). Variants: attn_cluster (the new one-cluster kernel) with chunks
of 128, 64 or 32 positions where they fit a cluster of 8 (cN: the first of N, 64, 128 that fits), attn_fused
(tickets), attn_partial + attn_combine (two launches), and a PDL kernel that only waits (the floor of a launch in
this graph). Every variant's output is checked equal, bit for bit, to the two launches' in chunks of its size.
Usage: python attn_probe.py OUT.json
"""
import json
import sys

import cupy
import numpy as np

from engine.backends import cupy_decode, cupy_kernels as K
from engine.backends.cupy_launch import launch

LAYERS, REPLAYS = 32, 200
NULL = cupy.RawKernel(r'''
extern "C" __global__ void null_pdl(float *x) {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0) x[0] += 1.f;
}''', "null_pdl")


CHUNKS = {"c128": (128,), "c64": (64, 128), "c32": (32, 64, 128)}


def set_variant(v):
    cupy_decode.ONE_LAUNCH_ATTENTION["enabled"] = v != "two"
    cupy_decode.CLUSTER_ATTENTION["enabled"] = v in CHUNKS
    cupy_decode.CLUSTER_ATTENTION["chunks"] = CHUNKS.get(v, (128,))


def run(v, qs, ks, vs, mask, outs, grid):
    if v == "null":
        for o in outs:
            launch(NULL, grid, (128,), (o,))
        return
    for q, k, vv, o in zip(qs, ks, vs, outs):
        cupy_decode.attention(q, k, vv, mask, 128 ** -0.5, o, cupy.cuda.get_current_stream().is_capturing())


def main(out):
    res = {"device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "rows": []}
    rng = np.random.default_rng(0)
    for S, live in ((264, 200), (264, 136), (136, 130), (520, 400), (1024, 1000)):
        qs = [cupy.asarray(rng.standard_normal((1, 32, 1, 128)).astype(np.float16)) for _ in range(LAYERS)]
        ks = [cupy.asarray(rng.standard_normal((1, 32, S, 128)).astype(np.float16)) for _ in range(LAYERS)]
        vs = [cupy.asarray(rng.standard_normal((1, 32, S, 128)).astype(np.float16)) for _ in range(LAYERS)]
        mask = cupy.asarray(np.where(np.arange(S) < live, 0, -65504).astype(np.float16).reshape(1, 1, 1, S))
        cupy_decode.counters(32, False)
        wants = {}
        for ch in K.ATTN_CHUNKS:
            ws = [cupy.zeros((1, 1, 32 * 128), cupy.float16) for _ in range(LAYERS)]
            for q, k, vv, o in zip(qs, ks, vs, ws):
                K.attention(q, k, vv, mask, 128 ** -0.5, o, chunk=ch)
            wants[ch] = cupy.asnumpy(cupy.stack(ws))
        for v in ("two", "fused", "c128", "c64", "c32", "null"):
            set_variant(v)
            outs = [cupy.zeros((1, 1, 32 * 128), cupy.float16) for _ in range(LAYERS)]
            grid = (32, -(-S // 128))
            run(v, qs, ks, vs, mask, outs, grid)  # compile, tickets, uncaptured result
            cupy.cuda.runtime.deviceSynchronize()
            stream = cupy.cuda.Stream(non_blocking=True)
            with stream:
                stream.begin_capture()
                run(v, qs, ks, vs, mask, outs, grid)
                g = stream.end_capture()
                g.launch(stream)
                stream.synchronize()
                got = cupy.asnumpy(cupy.stack(outs))
                cc = cupy_decode.cluster_size(S) if v in CHUNKS else None
                same = bool(np.array_equal(got, wants[cc[1] if cc else 128])) if v != "null" else None
                t = []
                for _ in range(3):
                    s, e = cupy.cuda.Event(), cupy.cuda.Event()
                    s.record(stream)
                    for _ in range(REPLAYS):
                        g.launch(stream)
                    e.record(stream)
                    e.synchronize()
                    t.append(cupy.cuda.get_elapsed_time(s, e) * 1e3 / (REPLAYS * LAYERS))
            us = float(np.median(t))
            res["rows"].append({"S": S, "live": live, "variant": v, "us_per_launch": round(us, 3), "equal": same,
                                "cluster": cc, "kv_mb_read": round(live * 32 * 128 * 2 * 2 / 1e6, 2)})
            print(f"S {S:5d} live {live:5d} {v:8s} {us:7.2f} us/launch  equal {same}  (C, CH) {cc}", flush=True)
        del qs, ks, vs
    with open(out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
