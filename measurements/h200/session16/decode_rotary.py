"""Session 16: the captured decode (bench.gguf_decode's method: Llama-2-7B shape, random weights quantised by our
converter, batch 1, 128-token prompt, 128 captured steps, median of 3, int8 route) with the plan's rotary + cache
group and the attention as two launches a layer (rotary_cache, attn_cluster) and joined into one
(attn_rotary_cluster: capture_plan's ROTARY_ATTENTION), fp16 and each format, back to back on one model.
Runs on a tree with call5_rotary_attention.patch applied (ROTARY_ATTENTION is that patch's; not merged).
Usage: python decode_rotary.py OUT.json FORMATS
"""
import importlib.util
import sys
from pathlib import Path

from engine import capture_plan

_spec = importlib.util.spec_from_file_location("decode_attn", Path(__file__).with_name("decode_attn.py"))
decode_attn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(decode_attn)


def _join(v):
    capture_plan.ROTARY_ATTENTION["enabled"] = v == "joined"


if __name__ == "__main__":
    decode_attn.run(sys.argv[1], sys.argv[2], ("two", "joined"), _join, lambda: _join("joined"))
