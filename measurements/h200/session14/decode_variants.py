"""Session 14: the captured decode (bench.gguf_decode's method: Llama-2-7B shape, random weights quantised by our
converter, batch 1, 128-token prompt, 128 captured steps, median of 3) under variants of qgemv_direct's int8 route,
each format built and quantised once, each variant a fresh load and capture of the same module:
  base        the tree as it is
  noprologue  x neither staged nor quantised (timing only: an upper bound on what the prologue costs; the edits
              match call 1's tree, 47ffce0)
  prequant    x's int8 blocks, scales and sums copied from global memory as they would lie there had the kernel
              before written them (timing only: the bytes copied are x's own, reinterpreted): what a prologue costs
              that finds x quantised
  blocks=N, b=N, u=N, p=N   cupy_quant.DIRECT settings (blocks: the grid's cap)
Usage: python decode_variants.py OUT.json FORMATS VARIANT [VARIANT ...]
"""
import json
import sys

import numpy as np

import engine
from bench.gguf_decode import build, measure_decode
from engine.backends import cupy_kernels as K
from engine.backends import cupy_quant as Q
from engine.quant import quantize_module

BASE_SRC = K._SRC
STAGE = "    stage_x<T>(x, x_row, nw, eps, style, xs, K, rows, red);\n"
QUANT = "    if constexpr (D == 1) quantise_x<T>(xs, K, rows, xq, dxs, LI::PAD < 0 ? nullptr : sxs, LI::PAD);\n"
COPY = ("    if constexpr (D == 1) { const long nq = LI::xbytes((long)rows * K) / 16, ns = (long)rows * K / 32;\n"
        "        for (long i = threadIdx.x; i < nq; i += 256)\n"
        "            reinterpret_cast<uint4 *>(xq)[i] = reinterpret_cast<const uint4 *>(x)[i];\n"
        "        const float *gs = reinterpret_cast<const float *>(reinterpret_cast<const uint4 *>(x) + nq);\n"
        "        for (long i = threadIdx.x; i < ns; i += 256) {\n"
        "            dxs[i] = fminf(fabsf(gs[i]), 1e-3f); sxs[i] = __float_as_int(gs[ns + i]) & 0xFF; } }\n")
# scales and sums kept finite and small (the values are not x's: a NaN or huge scale would run through the decode)
NONE = ("    if constexpr (D == 1) { for (long i = threadIdx.x; i < (long)rows * K / 32; i += 256) {\n"
        "        dxs[i] = 1e-3f; sxs[i] = 0; } }\n")
BOTH = STAGE + "    __syncthreads();\n" + QUANT  # (stage_x's line alone is in gemv.cu too)
EDITS = {"noprologue": [(BOTH, NONE)], "prequant": [(BOTH, COPY)]}


def set_variant(v):
    src = BASE_SRC
    Q.QUANT_DOT["route"] = "int8"
    Q.DIRECT.update(Q.DIRECT_SETTINGS, blocks=None)
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


def main(out, formats, variants):
    K.QUANT_KERNELS["enabled"] = True
    res = {"fp16": measure_decode(build("llama-2-7b", "cuda", 0), "cuda", 128, 128, 3)["tokens_per_s"]}
    print(f"fp16 {res['fp16']:.1f} tok/s", flush=True)
    for fmt in formats.split(","):
        m = build("llama-2-7b", "cuda", 0)
        quantize_module(m, fmt)
        for v in variants:
            set_variant(v)
            try:
                r = measure_decode(m, "cuda", 128, 128, 3)
            except Exception as e:  # a variant that fails to build or run is reported, the rest go on
                print(f"{fmt} {v}: {type(e).__name__}: {e}", flush=True)
                continue
            r.pop("_logits")
            res[f"{fmt}@{v}"] = r["tokens_per_s"]
            print(f"{fmt:5s} {v:24s} {r['tokens_per_s']:7.1f} tok/s x{r['tokens_per_s'] / res['fp16']:.3f}", flush=True)
        del m
        engine.backend("cuda").pool.empty_cache()
    set_variant("base")
    with open(out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
