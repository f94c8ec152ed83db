"""Session 16: the captured decode (bench.gguf_decode's method: Llama-2-7B shape, random weights quantised by our
converter, batch 1, 128-token prompt, 128 captured steps, median of 3, int8 route) with the decode attention as
attn_fused (tickets, session 15's tree) and as attn_cluster (one thread-block cluster a head) in chunks of 128
and of 64 positions, fp16 and each format, the variants back to back on one model.
Usage: python decode_attn.py OUT.json FORMATS
"""
import json
import sys

import engine
from bench.gguf_decode import build, measure_decode
from engine.backends import cupy_decode
from engine.backends import cupy_kernels as K
from engine.backends import cupy_quant as Q
from engine.quant import quantize_module


def _cluster(v):
    cupy_decode.CLUSTER_ATTENTION["enabled"] = v != "fused"
    cupy_decode.CLUSTER_ATTENTION["chunks"] = (64, 128) if v == "c64" else (128,)


def run(out, formats, variants, switch, reset, fp16_once=False):
    """Each format's model built (and quantised) once, then the captured decode under each variant (switch(v)
    sets it), back to back; reset() restores the defaults; tokens/s to out (JSON, rewritten after each
    measurement). fp16_once: fp16 under the first variant only (variants of the quantized GEMVs)."""
    K.QUANT_KERNELS["enabled"] = True
    Q.QUANT_DOT["route"] = "int8"
    res = {}
    for fmt in ["fp16"] + formats.split(","):
        m = build("llama-2-7b", "cuda", 0)
        if fmt != "fp16":
            quantize_module(m, fmt)
        for v in variants[:1] if fp16_once and fmt == "fp16" else variants:
            switch(v)
            r = measure_decode(m, "cuda", 128, 128, 3)
            res[f"{fmt}@{v}"] = r["tokens_per_s"]
            print(f"{fmt:5s} {v:8s} {r['tokens_per_s']:7.1f} tok/s", flush=True)
            with open(out, "w") as f:
                json.dump(res, f, indent=1)
        del m
        engine.backend("cuda").pool.empty_cache()
    reset()


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], ("fused", "c64", "c128"), _cluster,
        lambda: cupy_decode.CLUSTER_ATTENTION.update(enabled=True, chunks=(64, 128)))
