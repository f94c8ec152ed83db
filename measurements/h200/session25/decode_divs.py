"""Session 25 (timing only; "fastdiv" changes numbers): which instructions of the quantized GEMVs' x prologue cost
the Q4_K step (calls 3-4: ~100 us a step in quantise_groups, ~40 in the norm's application), the kernels' source
edited in memory: "base"; "fastdiv" (quantise_groups' correctly rounded amax / 127 and 1 / dx, each an inline
sequence with a branch to a slow path, as one multiply and one approximate division: no branches, the bits not
always the same); "style1" (stage_quantise_x applies the norm as llama's style 1 known when compiling rather than
the launch's style read at run time: the same bits for a llama); "both".
The edits anchor on the sources of e2e8db3 (before this session's prologue changes); run on that tree.
Usage: python decode_divs.py OUT.json FORMATS VARIANTS
"""
import sys

sys.path.insert(0, "measurements/h200/session16")
from decode_attn import run  # noqa: E402

from engine.backends import cupy_kernels as K  # noqa: E402

sys.path.insert(0, "measurements/h200/session25")
from decode_prologue import use  # noqa: E402

SRC = K._SRC
DIV = "const float dx = __fdiv_rn(amax[h], 127.f), r = __frcp_rn(dx);"
FAST = "const float dx = __fmul_rn(amax[h], 0.007874015748031496f), r = __fdividef(1.f, dx);"
APPLY = "v[h][i] = norm_apply<T>(v[h][i], r, s, hw ? g[i] : 1.f, style);"
assert SRC.count(DIV) == 1 and SRC.count(APPLY) == 1
ONE = APPLY.replace("style);", "1);")
VARIANTS = {"base": SRC, "fastdiv": SRC.replace(DIV, FAST), "style1": SRC.replace(APPLY, ONE),
            "both": SRC.replace(DIV, FAST).replace(APPLY, ONE)}


def switch(v):
    use(VARIANTS[v])


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3].split(","), switch, lambda: switch("base"), fp16_once=True)
