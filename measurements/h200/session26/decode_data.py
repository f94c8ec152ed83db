"""Prepared in session 26 for the next (timing only): is the approximated norm statistic's gain (session 26 calls 2b
and 4: Q4_K 708.7 -> 728.8 tok/s) its code or the other numbers it gives every later kernel? Variants, the kernels'
source edited in memory: "ieee" (the tree: `__fdiv_rn`, `__fsqrt_rn`, `__fdiv_rn(1, s)`), "ieee_ulp" (the same code,
r one part in 2^23 larger: other data), "fast" (a product, rsqrtf, `__fdividef`: other code and other data).
The edits anchor on the tree of session 26's last commit.
Usage: python decode_data.py OUT.json FORMATS VARIANTS
"""
import sys

sys.path.insert(0, "measurements/h200/session16")
from decode_attn import run  # noqa: E402

from engine.backends import cupy_kernels as K  # noqa: E402

sys.path.insert(0, "measurements/h200/session25")
from decode_prologue import use  # noqa: E402

SRC = K._SRC
STAT = ("        s = __fsqrt_rn(__fadd_rn(__fdiv_rn(block_total<NW>(ss, red), (float)K), eps));\n"
        "        r = __fdiv_rn(1.f, s);\n")
assert SRC.count(STAT) == 1
ULP = STAT.replace("r = __fdiv_rn(1.f, s);", "r = __fmul_rn(__fdiv_rn(1.f, s), 1.00000012f);")
FAST = ("        r = rsqrtf(__fmul_rn(block_total<NW>(ss, red), __fdividef(1.f, (float)K)) + eps);\n"
        "        s = __fdividef(1.f, r);\n")
VARIANTS = {"ieee": SRC, "ieee_ulp": SRC.replace(STAT, ULP), "fast": SRC.replace(STAT, FAST)}


def switch(v):
    use(VARIANTS[v])


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3].split(","), switch, lambda: switch("ieee"), fp16_once=True)
