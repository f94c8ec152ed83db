"""Session 25 (timing only, wrong numbers): what the quantized GEMVs' prologue (x's 16-bit row loaded after the
wait, normed, quantised to int8 per 32 into shared memory: quant_span.cuh's quantise_x_after_wait) costs a captured
decode step, with the kernels' source edited in memory (the tree is not): "base"; "xonly" (x's chunks loaded after
the wait as before, nothing normed or quantised: the int8 blocks in shared memory are whatever was there, the cost
a producer-quantised x would still pay), "xonly_big" / "xonly_small" (that where K > 4096, down_proj's,
or only where K <= 4096); "nox" (nothing after the wait but the ring's remaining batches). Upper
bounds of a design where the kernel before writes x already normed-and-quantised. fp16 (no such prologue) once.
The edits anchor on the sources of e2e8db3 (before this session's prologue changes); run on that tree.
Usage: python decode_prologue.py OUT.json FORMATS VARIANTS
"""
import sys

sys.path.insert(0, "measurements/h200/session16")
from decode_attn import run  # noqa: E402

from engine.backends import cupy_kernels as K  # noqa: E402
from engine.backends import cupy_quant as Q  # noqa: E402

XONLY = """    {
        const uint4 *x4 = reinterpret_cast<const uint4 *>(x);
        uint4 c[XChunks<XJ, NW>::Q];
        #pragma unroll
        for (int j = 0; j < XChunks<XJ, NW>::Q; j++)
            if (threadIdx.x + 32 * NW * j < K / 8) c[j] = x4[threadIdx.x + 32 * NW * j];
        after();
        unsigned v = 0;
        #pragma unroll
        for (int j = 0; j < XChunks<XJ, NW>::Q; j++)
            if (threadIdx.x + 32 * NW * j < K / 8) v ^= c[j].x ^ c[j].w;
        if (v == 0x7fc00123u) xq[threadIdx.x] = 1;  // the loads kept, ~never taken
    }
"""


def variants():
    """The variants' sources (asserting this tree still has the anchors)."""
    SRC = K._SRC
    CALL = "    stage_quantise_x<T, XJ, NW>(x, nc.w, nc.hw, eps, style, K, xq, dxs, sxs, pad, red, after);\n"
    assert SRC.count(CALL) == 1
    # within stage_quantise_x: "nonorm" (no statistic, no norm applied: x quantised as it came), "noquant" (normed, the
    # int8 blocks not written: quantise_groups left out)
    STAT = "    float r = 1.f, s = 1.f;\n    if (style != 0) {\n"
    APPLY = "                if (style != 0) {\n                    float g[8];"
    QG = "        quantise_groups(v, idx, n8, xq, dxs, sxs, pad);\n    }\n}\n\n\n// The norm weight's chunks"
    assert SRC.count(STAT) == 1 and SRC.count(APPLY) == 1 and SRC.count(QG) == 1
    VARIANTS = {"base": SRC, "xonly": SRC.replace(CALL, XONLY), "nox": SRC.replace(CALL, "    after();\n"),
                "nonorm": SRC.replace(STAT, STAT.replace("style != 0", "false")).replace(
                    APPLY, APPLY.replace("style != 0", "false")),
                # x's prologue gone only where K > 4096 (down_proj) or only where K <= 4096 (the rest)
                "xonly_big": SRC.replace(CALL, "    if (K > 4096)\n" + XONLY + "    else\n" + CALL),
                "xonly_small": SRC.replace(CALL, "    if (K <= 4096)\n" + XONLY + "    else\n" + CALL),
                "noquant": SRC.replace(QG, "        if (v[0][0] == 1.2345e-30f) xq[t] = 1;  // v kept, ~never taken\n"
                                       + QG[QG.index("    }"):])}
    return VARIANTS


def use(src):
    """The kernels compiled from src from here on (cupy_kernels' and cupy_quant's caches emptied)."""
    K._SRC = src
    K._module.cache_clear()
    K._FNS.clear()
    Q._SPAN_LAUNCH.clear()


def switch(v):
    use(VARIANTS[v])


VARIANTS = {}


if __name__ == "__main__":
    VARIANTS.update(variants())
    run(sys.argv[1], sys.argv[2], sys.argv[3].split(","), switch, lambda: switch("base"), fp16_once=True)
