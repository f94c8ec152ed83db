"""Session 17: the captured decode (bench.gguf_decode's method: Llama-2-7B shape, random weights quantised by our
converter, batch 1, 128-token prompt, 128 captured steps, median of 3, int8 route) with the quantized GEMVs as
qgemv_direct (weights into registers) and as qgemv_ring (weights into shared memory by bulk copies) under
cupy_quant.RING settings, back to back on one model (session 16's decode_attn.run; fp16 once, under the first).
Usage: python decode_ring.py OUT.json FORMATS VARIANT[,VARIANT...]
  direct | ring (the format's own settings, cupy_quant._RING_OWN) | ring:key=value:... (nw, u, s, smem, per_sm)
"""
import sys

sys.path.insert(0, "measurements/h200/session16")
from decode_attn import run  # noqa: E402

from engine.backends import cupy_quant as Q  # noqa: E402

DEFAULT = dict(Q.RING)


def switch(v):
    Q.RING.update(DEFAULT)
    Q.RING["enabled"] = v != "direct"
    Q.RING["formats"] = ("q4_k", "q8_0")
    for kv in v.split(":")[1:]:
        k, val = kv.split("=")
        Q.RING[k] = int(val)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3].split(","), switch, lambda: Q.RING.update(DEFAULT), fp16_once=True)
