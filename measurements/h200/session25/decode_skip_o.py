"""Session 25 (timing only, wrong numbers): what the decode step's o_proj launch costs beyond its bytes, as the step
time with it left out of the captured graph ("noo": CupyBackend.linear_fused hands back the residual for a square
weight with a residual, o_proj in the Llama-2-7B shape; down_proj's is 4096 x 11008) beside "base". The upper
bound of folding o_proj into the decode attention (each head's cluster multiplying its 128 outputs by its slice of
o_proj's columns, every format): that would still read o_proj's bytes (Q4_K 9.4 MB a layer, ~2.2 us at the copy
rate) but save its launch, dependency, prologue and tail. bench.gguf_decode's method via session 16's run().
Usage: python decode_skip_o.py OUT.json FORMATS VARIANTS
"""
import sys

sys.path.insert(0, "measurements/h200/session16")
from decode_attn import run  # noqa: E402

from engine.backends.cupy_backend import CupyBackend  # noqa: E402

FUSED = CupyBackend.linear_fused


def _skipping(self, x, w, b, out_dtype, norm=None, glu=None, residual=None, frozen=False):
    if residual is not None and glu is None and norm is None and w.shape[0] == w.shape[1]:
        return residual
    return FUSED(self, x, w, b, out_dtype, norm=norm, glu=glu, residual=residual, frozen=frozen)


def switch(v):
    CupyBackend.linear_fused = _skipping if v == "noo" else FUSED


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3].split(","), switch, lambda: switch("base"))
