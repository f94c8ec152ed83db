"""Session 21: the captured decode (bench.gguf_decode's method: Llama-2-7B shape, random weights quantised by our
converter, batch 1, 128-token prompt, 128 captured steps, median of 3, int8 route) on the merged tree (attn_cluster
EARLY) under settings chosen before EARLY: the ring's pre, the formats on the ring, the cluster's chunk sizes;
variants back to back on one model, fp16 under the first only.
Usage: python decode_tune.py OUT.json FORMATS VARIANT[,VARIANT...]
  VARIANT: base, or key=value[:key=value...]: pre=N, formats=q8_0+q4_k (cupy_quant.RING), chunks=64+128
  (cupy_decode.CLUSTER_ATTENTION)
"""
import sys

sys.path.insert(0, "measurements/h200/session16")
from decode_attn import run  # noqa: E402

from engine.backends import cupy_decode as CD  # noqa: E402
from engine.backends import cupy_quant as Q  # noqa: E402

RING, CLUSTER = dict(Q.RING), dict(CD.CLUSTER_ATTENTION)


def reset():
    Q.RING.update(RING)
    CD.CLUSTER_ATTENTION.update(CLUSTER)


def switch(v):
    reset()
    for kv in v.split(":") if v != "base" else []:
        k, val = kv.split("=")
        if k == "chunks":
            CD.CLUSTER_ATTENTION["chunks"] = tuple(int(c) for c in val.split("+"))
        elif k == "formats":
            Q.RING["formats"] = tuple(val.split("+"))
        else:
            Q.RING[k] = int(val)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3].split(","), switch, reset, fp16_once=True)
