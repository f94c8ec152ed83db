"""Session 21: the captured decode (bench.gguf_decode's method: Llama-2-7B shape, random weights quantised by our
converter, batch 1, 128-token prompt, 128 captured steps, median of 3, int8 route) with each layer's rotary_cache
folded into its attention (capture_plan.ROTARY_ATTENTION: one attn_cluster launch, fold1) or launched before it
(fold0); variants back to back on one model, fp16 in the same run.
Runs on the tree with `session21/rotary_attention.patch` applied (not merged: the fold lost on the quantized decodes).
Usage: python decode_fold.py OUT.json FORMATS VARIANT[,VARIANT...]   (VARIANT: fold1 | fold0 [:nopf] [:pre=N])
"""
import sys

sys.path.insert(0, "measurements/h200/session16")
from decode_attn import run  # noqa: E402

from engine import capture_plan as P  # noqa: E402
from engine.backends import cupy_decode as CD  # noqa: E402
from engine.backends import cupy_quant as Q  # noqa: E402

DEFAULT = dict(Q.RING)


def switch(v):  # fold1 | fold0, then :nopf (the fold without K/V prefetches) or :key=value (cupy_quant.RING)
    P.ROTARY_ATTENTION["enabled"] = v.split(":")[0] == "fold1"
    if "weights" in P.ROTARY_ATTENTION:  # fold_preload.patch: every kind (the per-kind choice is what this measures)
        P.ROTARY_ATTENTION["weights"] = None
    CD.ROTARY_ATTENTION["prefetch"] = "nopf" not in v.split(":")
    Q.RING.update(DEFAULT)
    for kv in v.split(":")[1:]:
        if "=" in kv:
            k, val = kv.split("=")
            Q.RING[k] = int(val)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3].split(","), switch, lambda: switch("fold1"))
