"""Session 13: where qgemv_direct's time goes at the decode's fused shapes (Llama-2-7B: q/k/v as one launch of
three segments, o_proj, gate/up as one GLU launch, down_proj, the LM head), int8 route, Q4_K and Q8_0: each shape
graph-timed (bench.kernel_profile.graph_timed: weights rotated through copies past 3x the L2) under variants
that change the kernel's source text (K._SRC, recompiled) or its settings (cupy_quant.DIRECT):
  base        the tree as it is
  noprologue  x neither staged nor quantised (timing only)
  staged      x staged in shared memory as T, then quantised (stage_x + quantise_x, call 4's path with its
              reciprocal), in place of stage_quantise_x
  (call 4 ran on the session's starting tree with the edits noquant (quantise_x left out) and rcp (q = rint(x * (1 /
  dx)) in place of rint(x / dx)); the edit texts are in measurements/h200/session13/call4's script copy)
  b=N, u=N    cupy_quant.DIRECT settings
Usage: python gemv_variants.py OUT.json [variant ...]
"""
import json
import sys

import cupy
import numpy as np

import engine  # noqa: F401  (the engine's pool owns cupy's memory)
from bench.kernel_profile import graph_timed
from engine.backends import cupy_kernels as K
from engine.backends import cupy_quant as Q
from engine.io.gguf import quantize_matrix

BASE_SRC = K._SRC
EDITS = {  # (session 13's tree: x from global memory straight into int8 blocks, stage_quantise_x)
    "noprologue": [("stage_quantise_x<T>(x, x_row, nw, eps, style, K, rows, xq, dxs, LI::PAD < 0 ? nullptr : sxs, "
                    "LI::PAD, red);", ";")],
    "staged": [("if constexpr (D == 1 && sizeof(T) == 2) {", "if constexpr (false) {")],
}
SHAPES = {"qkv": (4096, 4096, "seg"), "o_proj": (4096, 4096, "one"), "gate_up": (11008, 4096, "glu"),
          "down": (4096, 11008, "one"), "lm_head": (32000, 4096, "one")}


def set_variant(v):
    src = BASE_SRC
    Q.DIRECT.update(Q.DIRECT_SETTINGS)
    for part in v.split("+"):
        if part in EDITS:
            for old, new in EDITS[part]:
                assert src.count(old) == 1, (part, old)
                src = src.replace(old, new)
        elif "=" in part:
            k, val = part.split("=")
            Q.DIRECT[k] = int(val)
        elif part != "base":
            raise SystemExit(f"unknown variant {part}")
    K._SRC = src
    K._FNS.clear()
    K._module.cache_clear()
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
    main(sys.argv[1], sys.argv[2:] or ["base", "noquant", "noprologue", "rcp", "b=4", "b=3"])
