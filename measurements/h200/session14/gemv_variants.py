"""Session 14: qgemv_direct per shape at the decode's fused shapes (Llama-2-7B: q/k/v as one launch of three
segments, o_proj, gate/up as one GLU launch, down_proj, the LM head), int8 route, Q4_K and Q8_0: each shape
graph-timed (bench.kernel_profile.graph_timed: weights rotated through copies past 3x the L2) under settings
(cupy_quant.DIRECT, e.g. x=0: x staged in shared memory, then quantised; base: the defaults). Session 13's copy
of this script also edited the kernel source; this one takes settings only.
Usage: python gemv_variants.py OUT.json [variant ...]
"""
import json
import sys

import cupy
import numpy as np

import engine  # noqa: F401  (the engine's pool owns cupy's memory)
from bench.kernel_profile import graph_timed
from engine.backends import cupy_quant as Q
from engine.io.gguf import quantize_matrix

SHAPES = {"qkv": (4096, 4096, "seg"), "o_proj": (4096, 4096, "one"), "gate_up": (11008, 4096, "glu"),
          "down": (4096, 11008, "one"), "lm_head": (32000, 4096, "one")}


def set_variant(v):
    Q.DIRECT.update(Q.DIRECT_SETTINGS)
    for part in v.split("+"):
        if "=" in part:
            k, val = part.split("=")
            Q.DIRECT[k] = int(val)
        elif part != "base":
            raise SystemExit(f"unknown variant {part}")
    Q._SPAN_LAUNCH.clear()


def main(out, variants):
    Q.QUANT_DOT["route"] = "int8"
    rng = cupy.random.default_rng(0)
    l2 = cupy.cuda.runtime.getDeviceProperties(0)["l2CacheSize"]
    rows = []
    for fmt in ("q4_k", "q8_0"):
        for name, (N, Kd, kind) in SHAPES.items():
            x = rng.standard_normal((1, Kd), dtype=cupy.float32).astype(cupy.float16)
            per = 3 if kind == "seg" else 2 if kind == "glu" else 1
            one = quantize_matrix(rng.standard_normal((N, Kd), dtype=cupy.float32) * 0.02, fmt)
            copies = per * max(2, int(np.ceil(3 * l2 / (per * one.nbytes))))
            Ws = [one] + [one.copy() for _ in range(copies - 1)]
            out_ = cupy.empty((1, N * (3 if kind == "seg" else 1)), cupy.float16)

            def run(i):
                W = [Ws[(per * i + j) % copies] for j in range(per)]
                if kind == "seg":
                    Q.qgemv_fused(x, W[0], fmt, out_, segments=[(W[1], None), (W[2], None)])
                elif kind == "glu":
                    Q.qgemv_fused(x, W[0], fmt, out_, W2=W[1], act="silu")
                else:
                    Q.qgemv_fused(x, W[0], fmt, out_)
            for v in variants:
                set_variant(v)
                us = graph_timed(run, 40)
                nbytes = per * one.nbytes
                rows.append({"format": fmt, "shape": name, "variant": v, "us": round(us, 2),
                             "gb_per_s": round(nbytes / us / 1e3, 1)})
                print(f"  {fmt} {name:8s} {v:22s} {us:7.2f} us {rows[-1]['gb_per_s']:7.1f} GB/s", flush=True)
            del Ws, one
            cupy.get_default_memory_pool().free_all_blocks()
    set_variant("base")
    with open(out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or ["base", "x=0"])
