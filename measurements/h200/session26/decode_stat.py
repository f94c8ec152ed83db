"""Session 26 (timing only): qgemv_ring's norm statistic as the tree has it (rms_stat_rn: correctly rounded without
branches, refined in double; "exact"), as the intrinsics give it (__fdiv_rn, __fsqrt_rn, __fdiv_rn(1, s): the same
bits; "ieee"), and as approximations ("fast": other bits), back to back on one model (decode_attn.run's method).
The edits anchor on the tree of this session's call 3.
Usage: python decode_stat.py OUT.json FORMATS VARIANTS
"""
import sys

sys.path.insert(0, "measurements/h200/session16")
from decode_attn import run  # noqa: E402

from engine.backends import cupy_kernels as K  # noqa: E402

sys.path.insert(0, "measurements/h200/session25")
from decode_prologue import use  # noqa: E402

SRC = K._SRC
STAT = "        rms_stat_rn(block_total<NW>(ss, red), K, eps, s, r);  // norm_row's bits, without branches\n"
assert SRC.count(STAT) == 1
IEEE = ("        s = __fsqrt_rn(__fadd_rn(__fdiv_rn(block_total<NW>(ss, red), (float)K), eps));\n"
        "        r = __fdiv_rn(1.f, s);\n")
FAST = ("        r = rsqrtf(__fmul_rn(block_total<NW>(ss, red), __fdividef(1.f, (float)K)) + eps);\n"
        "        s = __fdividef(1.f, r);\n")
VARIANTS = {"exact": SRC, "ieee": SRC.replace(STAT, IEEE), "fast": SRC.replace(STAT, FAST)}


def switch(v):
    use(VARIANTS[v])


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3].split(","), switch, lambda: switch("exact"), fp16_once=True)
