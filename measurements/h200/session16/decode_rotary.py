"""Session 16: the captured decode (bench.gguf_decode's method: Llama-2-7B shape, random weights quantised by our
converter, batch 1, 128-token prompt, 128 captured steps, median of 3, int8 route) with the plan's rotary + cache
group and the attention as two launches a layer (rotary_cache, attn_cluster) and joined into one
(attn_rotary_cluster: capture_plan's ROTARY_ATTENTION), fp16 and each format, back to back on one model.
Usage: python decode_rotary.py OUT.json FORMATS
"""
import json
import sys

import engine
from bench.gguf_decode import build, measure_decode
from engine import capture_plan
from engine.backends import cupy_kernels as K
from engine.backends import cupy_quant as Q
from engine.quant import quantize_module


def main(out, formats):
    K.QUANT_KERNELS["enabled"] = True
    Q.QUANT_DOT["route"] = "int8"
    res = {}
    for fmt in ["fp16"] + formats.split(","):
        m = build("llama-2-7b", "cuda", 0)
        if fmt != "fp16":
            quantize_module(m, fmt)
        for v in ("two", "joined"):
            capture_plan.ROTARY_ATTENTION["enabled"] = v == "joined"
            r = measure_decode(m, "cuda", 128, 128, 3)
            res[f"{fmt}@{v}"] = r["tokens_per_s"]
            print(f"{fmt:5s} {v:8s} {r['tokens_per_s']:7.1f} tok/s", flush=True)
        del m
        engine.backend("cuda").pool.empty_cache()
    capture_plan.ROTARY_ATTENTION["enabled"] = True
    with open(out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
