"""Session 17: the captured decode (bench.gguf_decode's method: Llama-2-7B shape, random weights quantised by our
converter, batch 1, 128-token prompt, 128 captured steps, median of 3, int8 route) with the quantized GEMVs as
qgemv_direct (weights into registers) and as qgemv_ring (weights into shared memory by bulk copies) under
cupy_quant.RING settings, back to back on one model (session 16's decode_attn.run).
Usage: python decode_ring.py OUT.json FORMATS VARIANT[,VARIANT...]
  direct | ring (the format's own settings, cupy_quant._RING_OWN) | ring:key=value:... (nw, u, s, smem, per_sm)
"""
import json
import sys

import engine
from bench.gguf_decode import build, measure_decode
from engine.backends import cupy_kernels as K
from engine.backends import cupy_quant as Q
from engine.quant import quantize_module

DEFAULT = dict(Q.RING)


def switch(v):
    Q.RING.update(DEFAULT)
    Q.RING["enabled"] = v != "direct"
    Q.RING["formats"] = ("q4_k", "q8_0")
    for kv in v.split(":")[1:]:
        k, val = kv.split("=")
        Q.RING[k] = int(val)


def run(out, formats, variants):
    """fp16 once, then each format's model built (and quantised) once and decoded under each variant."""
    K.QUANT_KERNELS["enabled"] = True
    Q.QUANT_DOT["route"] = "int8"
    res = {}
    for fmt in ["fp16"] + formats.split(","):
        m = build("llama-2-7b", "cuda", 0)
        if fmt != "fp16":
            quantize_module(m, fmt)
        for v in (variants if fmt != "fp16" else ["-"]):
            switch(v)
            r = measure_decode(m, "cuda", 128, 128, 3)
            res[f"{fmt}@{v}"] = r["tokens_per_s"]
            print(f"{fmt:5s} {v:28s} {r['tokens_per_s']:7.1f} tok/s", flush=True)
            with open(out, "w") as f:
                json.dump(res, f, indent=1)
        del m
        engine.backend("cuda").pool.empty_cache()
    Q.RING.update(DEFAULT)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3].split(","))
