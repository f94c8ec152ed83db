"""Session 19 (timing only, wrong numbers): what the decode step's rotary_cache and attention launches cost in the
captured decode (bench.gguf_decode's method via session 16's decode_attn.run), as the step time with each left out
of the graph: "base"; "norot" (cupy_decode.rotary_cache launches nothing: q goes on unrotated, the cache is not
written); "noattn" (cupy_decode.attention launches nothing); "neither". An upper bound on what folding the rotary
into the attention (or the attention into fewer launches) could give back. fp16 and each format.
Usage: python decode_skip.py OUT.json FORMATS VARIANTS
"""
import sys

sys.path.insert(0, "measurements/h200/session16")
from decode_attn import run  # noqa: E402

from engine.backends import cupy_decode as D  # noqa: E402

ROT, ATTN = D.rotary_cache, D.attention


def switch(v):
    D.rotary_cache = (lambda q, k, v_, cos, sin, kc, vc, slots, q_out: q_out if q_out is not None else q) \
        if v in ("norot", "neither") else ROT
    D.attention = (lambda *a, **kw: None) if v in ("noattn", "neither") else ATTN


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3].split(","), switch, lambda: switch("base"))
