"""Session 20: the captured decode (bench.gguf_decode's method: Llama-2-7B shape, random weights quantised by our
converter, batch 1, 128-token prompt, 128 captured steps, median of 3, int8 route) with a step's position work as
one launch each (cupy_step.STEP_OPS: rope, causal_mask, advance) or as the compositions (s0), and Q8_0's GLU
ring launches with the last round split by row (split=1, cupy_quant.RING["split"]); variants back to back on one
model, fp16 in the same run.
Usage: python decode_steps.py OUT.json FORMATS VARIANT[,VARIANT...] [once]
  VARIANT: s0 | s1, then :key=value... (cupy_quant.RING settings: split=1 on the glu-split branch, pre=N,
  formats=q4_k+q8_0; early=0|1 on branch attn-early)
  once: fp16 under the first variant only
"""
import sys

sys.path.insert(0, "measurements/h200/session16")
from decode_attn import run  # noqa: E402

from engine.backends import cupy_decode as D  # noqa: E402
from engine.backends import cupy_step as S  # noqa: E402
from engine.backends import cupy_quant as Q  # noqa: E402

DEFAULT = dict(Q.RING)


def switch(v):
    Q.RING.update(DEFAULT)
    S.STEP_OPS["enabled"] = v.split(":")[0] == "s1"
    D.CLUSTER_ATTENTION["early"] = True
    for kv in v.split(":")[1:]:
        k, val = kv.split("=")
        if k == "early":  # attn_cluster's mask and K/V prefetches before pdl_wait (branch attn-early)
            D.CLUSTER_ATTENTION["early"] = bool(int(val))
        else:
            Q.RING[k] = tuple(val.split("+")) if k == "formats" else int(val)


def reset():
    Q.RING.update(DEFAULT)
    S.STEP_OPS["enabled"] = True
    D.CLUSTER_ATTENTION["early"] = True


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3].split(","), switch, reset, fp16_once=sys.argv[4:] == ["once"])
