"""Session 25 (timing only): qgemv_ring as one block of 16 warps an SM (x normed and quantised once an SM, not once
in each of two blocks of 8: calls 3-4 found that prologue costing Q4_K's step ~160 us) with its launch bounds
fixed for it. Session 20 measured this layout at 659.0 tok/s against 686.7 (Q8_0 392.7 against 454.3), but
__launch_bounds__(32 NW, 2) then capped a 512-thread block at 64 registers; here (32 NW, NW >= 16 ? 1 : 2), the
source edited in memory. Variants: "base" (two blocks of 8 warps an SM), "w16" (one of 16, the whole SM's shared
memory for its rings), "w16x" (w16 with decode_prologue.py's "xonly": what is left of the prologue's cost).
bench.gguf_decode's method via session 16's run().
The edits anchor on the sources of e2e8db3 (before this session's prologue changes); run on that tree.
Usage: python decode_w16.py OUT.json FORMATS VARIANTS
"""
import sys

sys.path.insert(0, "measurements/h200/session16")
from decode_attn import run  # noqa: E402

from engine.backends import cupy_kernels as K  # noqa: E402
from engine.backends import cupy_quant as Q  # noqa: E402

sys.path.insert(0, "measurements/h200/session25")
from decode_prologue import VARIANTS, use  # noqa: E402

SRC = K._SRC
BOUND = "__launch_bounds__(32 * NW, 2) qgemv_ring("
assert SRC.count(BOUND) == 1
LB = "__launch_bounds__(32 * NW, NW >= 16 ? 1 : 2) qgemv_ring("
SOURCES = {"base": SRC, "w16": SRC.replace(BOUND, LB), "w16x": VARIANTS["xonly"].replace(BOUND, LB)}


def switch(v):
    w16 = v.startswith("w16")
    Q.RING.update(nw=16, per_sm=1, smem=225 * 1024) if w16 else Q.RING.update(nw=None, per_sm=None, smem=None)
    use(SOURCES[v])


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3].split(","), switch, lambda: switch("base"), fp16_once=True)
