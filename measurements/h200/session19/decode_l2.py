"""Session 19: the captured decode (bench.gguf_decode's method via session 16's decode_attn.run: Llama-2-7B shape,
random weights quantised by our converter, batch 1, 128-token prompt, 128 captured steps, median of 3, int8 route)
with each format's default GEMV (Q8_0 qgemv_ring, Q4_K qgemv_direct) prefetching the rows of its warps' first
l2 pairs into L2 before pdl_wait (cupy_quant.L2), back to back on one model; fp16 once.
Usage: python decode_l2.py OUT.json FORMATS L2[,L2...]
"""
import sys

sys.path.insert(0, "measurements/h200/session16")
from decode_attn import run  # noqa: E402

from engine.backends import cupy_quant as Q  # noqa: E402

DEFAULT = dict(Q.L2)


def switch(v):
    Q.L2.update(dict.fromkeys(Q.L2, int(v)))


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3].split(","), switch, lambda: Q.L2.update(DEFAULT), fp16_once=True)
