"""Session 26 (timing only; every variant but "base" computes wrong or differently rounded numbers): where the rest
of the Q4_K step's x prologue goes on today's tree (59a82c5, the norm style compiled into qgemv_ring, div127_rn /
rcp_rn), the kernels' source edited in memory (the tree is not): "base"; "xonly0" (qgemv_ring launches without a
norm, ST = 0, o_proj's and down_proj's, load x after the wait and neither norm nor quantise it: the upper bound of
x written already quantised by the kernel before); "xonlyN" (the same for the launches that norm, qkv and gate_up);
"normfast" (the norm statistic's IEEE division, square root and reciprocal as a product, rsqrtf and __fdividef: no
branches to slow paths, the bits not always the same); "pre2" (no edit: Q4_K's ring issues both of its slots'
batches before pdl_wait, where its own setting issues one).
Usage: python decode_probe.py OUT.json FORMATS VARIANTS
"""
import sys

sys.path.insert(0, "measurements/h200/session16")
from decode_attn import run  # noqa: E402

from engine.backends import cupy_kernels as K  # noqa: E402
from engine.backends import cupy_quant as Q  # noqa: E402

sys.path.insert(0, "measurements/h200/session25")
from decode_prologue import XONLY, use  # noqa: E402

SRC = K._SRC
CALL = "    stage_quantise_x<T, XJ, NW, ST>(x, nc.w, nc.hw, eps, style, K, xq, dxs, sxs, pad, red, after);\n"
STAT = ("        s = __fsqrt_rn(__fadd_rn(__fdiv_rn(block_total<NW>(ss, red), (float)K), eps));\n"
        "        r = __fdiv_rn(1.f, s);\n")
assert SRC.count(CALL) == 1 and SRC.count(STAT) == 1
FAST = ("        r = rsqrtf(__fmul_rn(block_total<NW>(ss, red), __fdividef(1.f, (float)K)) + eps);\n"
        "        s = __fdividef(1.f, r);\n")
VARIANTS = {"base": SRC, "pre2": SRC, "normfast": SRC.replace(STAT, FAST),
            "xonly0": SRC.replace(CALL, "    if constexpr (ST == 0)\n" + XONLY + "    else\n" + CALL),
            "xonlyN": SRC.replace(CALL, "    if constexpr (ST > 0)\n" + XONLY + "    else\n" + CALL)}


def switch(v):
    Q.RING["pre"] = 2 if v == "pre2" else None
    use(VARIANTS[v])


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3].split(","), switch, lambda: switch("base"), fp16_once=True)
