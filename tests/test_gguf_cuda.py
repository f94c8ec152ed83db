"""The CUDA path of quantized weights: the fused dequant-GEMV (qgemv) and dequantiser (qdequant_rows)
kernels of engine/backends/cuda/quant.cu, reached from the cupy backend's qlinear / qtake / dequantize,
and a GGUF model's captured decode.

Oracles: gguf-py's numpy dequantiser (the weights, bit for bit) and the plain composition (dequantise,
then a float64 matmul) for the products, within fp32 tolerance. Without a GPU, the block decoders of
quant_formats.cuh (the code every kernel goes through) are compiled for the host with g++ and checked
against gguf-py the same way, together with the GEMV's walk over units and runs.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="pip install gguf (the test extra brings it)")
from gguf import GGMLQuantizationType as G  # noqa: E402

import engine  # noqa: E402
from engine import functional as F  # noqa: E402
from engine.quant import QTYPES, QuantWeight  # noqa: E402
from helpers import DEVICE  # noqa: E402
from test_gguf import blocks  # noqa: E402

FORMATS = list(QTYPES)
CUDA_DIR = Path(__file__).resolve().parents[1] / "engine" / "backends" / "cuda"


@pytest.fixture(autouse=True)
def _quant_kernels_on(monkeypatch):
    """These tests verify the kernels on a device, so they run with them on whatever TAPER_QUANT_KERNELS
    says (cupy_kernels.QUANT_KERNELS)."""
    if DEVICE.type == "cuda":
        from engine.backends import cupy_kernels as K
        from engine.backends import cupy_quant as Q
        monkeypatch.setitem(K.QUANT_KERNELS, "enabled", True)
        # the float dot route unless a test asks for int8 (whose results differ from the composition by the
        # quantisation of x: the tests that compare with the composition in fp32 tolerance take float)
        monkeypatch.setitem(Q.QUANT_DOT, "route", "float")
FMT_ID = {"q4_0": 0, "q4_1": 1, "q8_0": 2, "q4_k": 3, "q6_k": 4}  # cupy_kernels.QFORMATS (no cupy import here)

# ---- host build of the decoders --------------------------------------------------------------------------------
_HOST = r"""
#define Q_HOST
#define __device__
#define __forceinline__ inline
#include <cstring>
#include <cmath>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmaf_rn(float a, float b, float c) { return std::fmaf(a, b, c); }
static inline float q_h2f(unsigned h) {  // IEEE half -> float
    const unsigned s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023;
    float v = e == 0 ? std::ldexp((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : std::ldexp((float)(m | 1024), (int)e - 25);
    return s ? -v : v;
}
static inline void q_u128(const unsigned char *p, unsigned *q) { std::memcpy(q, p, 16); }
struct uint4 { unsigned x, y, z, w; };
static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
static inline unsigned q_perm(unsigned x, unsigned y, unsigned s) {  // CUDA's __byte_perm
    const unsigned long long v = ((unsigned long long)y << 32) | x;
    unsigned r = 0;
    for (int j = 0; j < 4; j++) r |= (unsigned)((v >> (8 * ((s >> (4 * j)) & 7))) & 0xFF) << (8 * j);
    return r;
}
static inline float q_bits(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline void q_u64(const unsigned char *p, unsigned &lo, unsigned &hi) {
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
}
static inline uint4 q_ld16(const unsigned char *p) { uint4 v; std::memcpy(&v, p, 16); return v; }
static inline unsigned q_funnel(unsigned lo, unsigned hi, unsigned sh) {
    return (unsigned)((((unsigned long long)hi << 32) | lo) >> sh);
}
template <typename T> static inline void q_x8(const T *p, float *f) { for (int i = 0; i < 8; i++) f[i] = p[i]; }
static inline int q_dp4a(unsigned a, unsigned b, int c) {  // CUDA's __dp4a (signed bytes)
    for (int i = 0; i < 4; i++) c += (int)(signed char)(a >> (8 * i)) * (int)(signed char)(b >> (8 * i));
    return c;
}
#include "quant_formats.cuh"
#include "quant_span.cuh"

template <class Q> static void rows(const unsigned char *W, long row_bytes, int R, int K, const float *x, float *y, float *wout) {
    for (int r = 0; r < R; r++) {
        const unsigned char *wr = W + (long)r * row_bytes;
        float acc = 0.f;
        for (int u = 0; u < K / Q::BS * Q::U; u++) {  // the units of one row, as qgemv's lanes take them
            const int b = u / Q::U, s = u % Q::U;
            float w[Q::NR * Q::RL];
            int off[Q::NR];
            Q::decode(wr + (long)b * Q::TS, s, w, off);
            for (int k = 0; k < Q::NR; k++)
                for (int i = 0; i < Q::RL; i++) {
                    const long at = (long)b * Q::BS + off[k] + i;
                    wout[(long)r * K + at] = w[k * Q::RL + i];
                    acc = std::fma(w[k * Q::RL + i], x[at], acc);
                }
        }
        y[r] = acc;
    }
}
// qgemv_span's walk over R rows of row_bytes each, two at a time as a warp takes them (its 32 lanes in turn
// between the __syncwarp()s)
template <class L, bool I> static void span_rows(const unsigned char *W, long row_bytes, int R, int K, const float *x,
                                                 float *y, float *wout, const unsigned char *xq = nullptr,
                                                 const float *dx = nullptr, int *iout = nullptr) {
    alignas(16) static unsigned char bufs[2][L::CPL * 512];
    const int nblk = K / L::BS, nspan = (nblk + L::SB - 1) / L::SB;
    const long used = (long)nblk * L::TS;
    for (int r0 = 0; r0 < R; r0 += 2) {
        const int nr = r0 + 1 < R ? 2 : 1;
        const unsigned char *wr[2] = {W + (long)r0 * row_bytes, W + (long)(r0 + nr - 1) * row_bytes};
        unsigned char *wb[2] = {bufs[0], bufs[1]};
        const int mis[2] = {(int)((unsigned long long)wr[0] & 15), (int)((unsigned long long)wr[1] & 15)};
        static uint4 buf[32][2][L::CPL];
        float acc[32][2][1] = {};
        for (int l = 0; l < 32; l++)
            for (int r = 0; r < nr; r++) span_load<L>(wr[r], used, 0, l, buf[l][r]);
        for (int s = 0; s < nspan; s++) {
            std::memset(bufs, 0xFF, sizeof bufs);  // stale bytes would show
            for (int l = 0; l < 32; l++)
                for (int r = 0; r < nr; r++) span_store<L>(wr[r], used, s, l, buf[l][r], wb[r]);
            if (s + 1 < nspan)
                for (int l = 0; l < 32; l++)
                    for (int r = 0; r < nr; r++) span_load<L>(wr[r], used, s + 1, l, buf[l][r]);
            for (int l = 0; l < 32; l++) {
                if constexpr (I)
                    span_dot_i<L, 1, 2>(wb, mis, nr, s, nblk, l, xq, dx, K, 1, acc[l], iout + (long)r0 * K / 8);
                else
                    span_dot<L, float, 1, 2>(wb, mis, nr, s, nblk, l, x, K, 1, acc[l], wout + (long)r0 * K);
            }
        }
        for (int r = 0; r < nr; r++) {
            float v = 0.f;
            for (int l = 0; l < 32; l++) v += acc[l][r][0];
            y[r0 + r] = v;
        }
    }
}
extern "C" void span_run(int fmt, const unsigned char *W, long row_bytes, int R, int K, const float *x, float *y, float *w) {
    switch (fmt) {
        case 2: span_rows<QL_q8_0, false>(W, row_bytes, R, K, x, y, w); break;
        case 3: span_rows<QL_q4_k, false>(W, row_bytes, R, K, x, y, w); break;
        case 4: span_rows<QL_q6_k, false>(W, row_bytes, R, K, x, y, w); break;
    }
}
// the dp4a route (span_dot_i) over x quantised (xq, dx: numpy_quant.quantize_x_q8); iout: each lane's isum
extern "C" void span_run_i(int fmt, const unsigned char *W, long row_bytes, int R, int K, const unsigned char *xq,
                           const float *dx, float *y, int *iout) {
    switch (fmt) {
        case 2: span_rows<QL_q8_0, true>(W, row_bytes, R, K, nullptr, y, nullptr, xq, dx, iout); break;
        case 3: span_rows<QL_q4_k, true>(W, row_bytes, R, K, nullptr, y, nullptr, xq, dx, iout); break;
        case 4: span_rows<QL_q6_k, true>(W, row_bytes, R, K, nullptr, y, nullptr, xq, dx, iout); break;
    }
}
// div127_rn (quant_span.cuh) against the host's division with subnormals flushed (x86's FTZ and DAZ: what cupy's
// -ftz=true makes of the card's arithmetic) for the floats of bits lo .. hi - 1: how many differ, the first in *first
// (all ones: not an x86 host)
extern "C" unsigned long long div127_check(unsigned lo, unsigned hi, unsigned *first) {
#if defined(__x86_64__) || defined(__i386__)
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040u);  // FTZ | DAZ
    volatile float d127 = 127.f;
    unsigned long long bad = 0;
    for (unsigned long long i = lo; i < hi; i++) {
        const float a = q_bits((unsigned)i), got = div127_rn(a), want = a / d127;
        if (std::memcmp(&got, &want, 4) != 0 && !bad++) *first = (unsigned)i;
    }
    _mm_setcsr(csr);
    return bad;
#else
    return ~0ull;
#endif
}
extern "C" void run(int fmt, const unsigned char *W, long row_bytes, int R, int K, const float *x, float *y, float *w) {
    switch (fmt) {
        case 0: rows<QF_q4_0>(W, row_bytes, R, K, x, y, w); break;
        case 1: rows<QF_q4_1>(W, row_bytes, R, K, x, y, w); break;
        case 2: rows<QF_q8_0>(W, row_bytes, R, K, x, y, w); break;
        case 3: rows<QF_q4_k>(W, row_bytes, R, K, x, y, w); break;
        case 4: rows<QF_q6_k>(W, row_bytes, R, K, x, y, w); break;
    }
}
"""


@pytest.fixture(scope="module")
def host_lib(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ is needed to run the CUDA block decoders on the host")
    d = tmp_path_factory.mktemp("qhost")
    (d / "h.cpp").write_text(_HOST)
    so = d / "h.so"
    subprocess.run(["g++", "-std=c++17", "-O1", "-ffp-contract=off", "-shared", "-fPIC", "-I", str(CUDA_DIR),
                    str(d / "h.cpp"), "-o", str(so)], check=True, capture_output=True)
    lib = ctypes.CDLL(str(so))
    for f in (lib.run, lib.span_run):
        f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                      ctypes.c_void_p, ctypes.c_void_p]
    lib.span_run_i.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_int] + [
        ctypes.c_void_p] * 4
    lib.div127_check.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p]
    lib.div127_check.restype = ctypes.c_ulonglong
    return lib


# every float below 2^-98 (zero, the subnormals, the scaled ones and the boundary), every mantissa of [1, 2) (the
# unscaled path's rounding depends on the mantissa alone) and the top binade (the product's overflow)
@pytest.mark.parametrize("lo,hi", [(0, 0x0E800000), (0x3F800000, 0x40000000), (0x7F000000, 0x7F800000)])
def test_quantise_x_scale_on_the_host_with_subnormals_flushed(host_lib, lo, hi):
    """quant_span.cuh's div127_rn (x's block scale max|x| / 127, correctly rounded without __fdiv_rn's branch)
    against the host's float32 division under FTZ and DAZ, the card's arithmetic as cupy compiles it."""
    first = ctypes.c_uint(0)
    bad = host_lib.div127_check(lo, hi, ctypes.byref(first))
    if bad == 2**64 - 1:
        pytest.skip("this check sets flush-to-zero through x86's MXCSR register and this host is not x86; "
                    "test_quantise_x_scale_and_reciprocal_are_ieee_for_every_float32 checks the same on a GPU")
    assert bad == 0, f"{bad} floats differ, the first of bits {first.value:#010x}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_cuda_block_decoders_on_the_host(host_lib, fmt):
    """quant_formats.cuh's decoders give gguf-py's weights bit for bit, every position of a row covered
    once; the GEMV's walk (units -> runs -> x positions) equals the composition to fp32 rounding."""
    R, K = 6, 768
    raw = np.ascontiguousarray(blocks(fmt, R, K, seed=5))
    x = np.random.default_rng(6).standard_normal(K).astype(np.float32)
    y, w = np.zeros(R, np.float32), np.full((R, K), np.nan, np.float32)
    host_lib.run(FMT_ID[fmt], raw.ctypes.data, raw.shape[1], R, K, x.ctypes.data, y.ctypes.data, w.ctypes.data)
    ref = gguf.quants.dequantize(raw, G[fmt.upper()])
    np.testing.assert_array_equal(w, ref)
    want = ref.astype(np.float64) @ x.astype(np.float64)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("fmt,R,K", [
    ("q8_0", 5, 768), ("q8_0", 3, 96), ("q8_0", 4, 4128), ("q8_0", 3, 11008),  # K / 32: 24, 3, 129, 344 blocks
    ("q4_k", 5, 768), ("q4_k", 3, 17 * 256), ("q4_k", 2, 11008),  # 3, 17 (past two spans of 8), 43 blocks
    ("q6_k", 5, 768), ("q6_k", 3, 9 * 256), ("q6_k", 4, 11008)])  # rows of 630, 1890, 9030 bytes: not 16k
def test_span_walk_on_the_host(host_lib, fmt, R, K):
    """qgemv_span's indexing (quant_span.cuh), 32 lanes emulated: which chunks each lane loads (16-byte
    aligned from a row's start rounded down; rows whose length is not a multiple of 16 start mid-chunk), where
    they land in the warp's buffer, which weights lane_q decodes against which x: every weight of a row bit
    for bit gguf-py's, each position once, the sum the composition's within fp32 rounding."""
    raw = np.ascontiguousarray(blocks(fmt, R, K, seed=K + R))
    n = raw.size
    store = np.zeros(n + 64, np.uint8)  # the rows from a 16-byte aligned address, then bytes that must not count
    at = (-store.ctypes.data) % 16
    store[at:at + n] = raw.reshape(-1)
    store[at + n:] = 0xAB
    x = np.random.default_rng(K).standard_normal(K).astype(np.float32)
    y, w = np.zeros(R, np.float32), np.full((R, K), np.nan, np.float32)
    host_lib.span_run(FMT_ID[fmt], store.ctypes.data + at, raw.shape[1], R, K, x.ctypes.data, y.ctypes.data,
                      w.ctypes.data)
    ref = gguf.quants.dequantize(raw, G[fmt.upper()])
    np.testing.assert_array_equal(w, ref)
    want = ref.astype(np.float64) @ x.astype(np.float64)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


SPAN_CASES = [
    ("q8_0", 5, 768), ("q8_0", 3, 96), ("q8_0", 4, 4128), ("q8_0", 3, 11008),
    ("q4_k", 5, 768), ("q4_k", 3, 17 * 256), ("q4_k", 2, 11008),
    ("q6_k", 5, 768), ("q6_k", 3, 9 * 256), ("q6_k", 4, 11008)]


@pytest.mark.parametrize("fmt,R,K", SPAN_CASES)
def test_dp4a_span_walk_on_the_host(host_lib, fmt, R, K):
    """qgemv_span's int8 route (span_dot_i, lane_i and a host __dp4a), 32 lanes emulated over the same walk:
    each lane's integer sum, added up per scale group, equals numpy_quant.qdot_int8's exact int64 sums; y its
    float64 combination within fp32 rounding of the sum."""
    from engine.backends.numpy_quant import int_groups, qdot_int8, quantize_x_q8
    raw = np.ascontiguousarray(blocks(fmt, R, K, seed=K + R))
    n = raw.size
    store = np.zeros(n + 64, np.uint8)
    at = (-store.ctypes.data) % 16
    store[at:at + n] = raw.reshape(-1)
    store[at + n:] = 0xAB
    x = np.random.default_rng(K).standard_normal((1, K)).astype(np.float32)
    xq, dx = quantize_x_q8(x)
    y, iout = np.zeros(R, np.float32), np.full(R * K // 8, -(1 << 30), np.int32)
    host_lib.span_run_i(FMT_ID[fmt], store.ctypes.data + at, raw.shape[1], R, K, xq.ctypes.data, dx.ctypes.data,
                        y.ctypes.data, iout.ctypes.data)
    want, isum = qdot_int8(x, raw, fmt, K)
    G = int_groups(raw, fmt, K)[3]
    np.testing.assert_array_equal(iout.astype(np.int64).reshape(R, K // G, G // 8).sum(axis=2), isum[0])
    np.testing.assert_allclose(y, want[0], rtol=1e-5, atol=1e-5 * np.abs(want).max())


# ---- on the GPU --------------------------------------------------------------------------------------------------
cuda = pytest.mark.cuda
DTYPES = {"float32": (1e-5, 1e-5), "float16": (2e-3, 2e-3), "bfloat16": (1.6e-2, 1.6e-2)}


def gpu_weight(raw, fmt, cols, dtype="float32"):
    return QuantWeight(engine.tensor(raw, device=DEVICE), fmt, (raw.shape[0], cols), dtype=getattr(engine, dtype))


@cuda
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8])
def test_qgemv_equals_the_composition(fmt, dtype, m):
    """The fused kernel (qlinear, m <= 8 rows) against dequantise-then-matmul in float64, rounded once."""
    from engine.backends import cupy_kernels as K
    N, cols = 72, 512
    raw = blocks(fmt, N, cols, seed=m)
    ref_w = gguf.quants.dequantize(raw, G[fmt.upper()]).astype(np.float64)
    rng = np.random.default_rng(m)
    dt = getattr(engine, dtype)
    x = engine.tensor(rng.standard_normal((m, cols)).astype(np.float32), device=DEVICE).to(dt)
    b = engine.tensor(rng.standard_normal(N).astype(np.float32), device=DEVICE).to(dt)
    w = gpu_weight(raw, fmt, cols, dtype)
    assert K.qgemv_ok(x.array, w.data.array, fmt)
    y = F.linear(x, w, b)
    assert y.shape == (m, N) and y.dtype is dt
    want = x.float().numpy().astype(np.float64) @ ref_w.T + b.float().numpy()
    rtol, atol = DTYPES[dtype]
    np.testing.assert_allclose(y.float().numpy(), want, rtol=rtol, atol=atol * np.abs(want).max())
    y3 = F.linear(x.reshape(1, m, cols), w)  # leading dims, no bias
    np.testing.assert_allclose(y3.float().numpy()[0], want - b.float().numpy(), rtol=rtol,
                               atol=atol * np.abs(want).max())


@cuda
@pytest.mark.parametrize("fmt", FORMATS)
def test_qgemv_on_llama_shapes(fmt):
    """Rows of 4096 and 11008 weights (43 super-blocks: not a multiple of 8), one row of x in float16."""
    for n, cols in ((40, 4096), (24, 11008)):
        raw = blocks(fmt, n, cols, seed=cols)
        x = np.random.default_rng(1).standard_normal((1, cols)).astype(np.float16)
        y = F.linear(engine.tensor(x, device=DEVICE), gpu_weight(raw, fmt, cols, "float16")).float().numpy()
        want = x.astype(np.float64) @ gguf.quants.dequantize(raw, G[fmt.upper()]).astype(np.float64).T
        np.testing.assert_allclose(y, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())


@cuda
@pytest.mark.parametrize("fmt,n,cols,m", [
    ("q8_0", 13, 96, 1), ("q8_0", 9, 4128, 3), ("q8_0", 5, 11008, 4),  # 3 blocks; 129 (past a span of 32); 344
    ("q4_k", 11, 17 * 256, 2), ("q4_k", 3, 11008, 4), ("q4_k", 21, 4096, 1),  # 17 blocks (a span is 8); 43
    ("q6_k", 7, 11008, 3), ("q6_k", 17, 9 * 256, 8), ("q6_k", 6, 768, 1)])  # rows of 9030 / 1890 / 630 bytes
@pytest.mark.parametrize("dot", ["float", "int8"])
def test_qgemv_span_edge_shapes(monkeypatch, fmt, n, cols, m, dot):
    """qgemv_span (cupy_quant.py; qgemv_direct off) where its walk has edges: rows not a multiple of 8 a block,
    K not a multiple of a span, row lengths not a multiple of 16 bytes, a GLU whose gate and up rows stream back
    to back; plain and fused against the composition in float32 (the int8 route: against
    numpy_quant.qdot_int8), and the plain launch equal to the fused one."""
    from engine.backends import cupy_quant as Q
    monkeypatch.setitem(Q.QUANT_DOT, "route", dot)
    monkeypatch.setitem(Q.DIRECT, "enabled", False)
    _edge_shapes(fmt, n, cols, m, dot, Q.span_ok)


DIRECT_SHAPES = [(11, 17 * 256, 2), (3, 11008, 2), (21, 4096, 1), (40, 256, 8)]  # 17, 43, 16, 1 units of 256
DIRECT_CASES = [(f, *c, d) for f in ("q4_k", "q8_0") for c in DIRECT_SHAPES for d in ("float", "int8")
                if (f, d) != ("q8_0", "float")]  # Q8_0's float route is qgemv_span's (test_qgemv_span_edge_shapes)


@cuda
@pytest.mark.parametrize("fmt,n,cols,m,dot", DIRECT_CASES)
@pytest.mark.parametrize("blocks", [None, 1, 3])
@pytest.mark.parametrize("ubp", [(None, None, None), (None, None, 0), (2, 2, 1), (1, 4, 1)])
def test_qgemv_direct_edge_shapes(monkeypatch, fmt, n, cols, m, dot, blocks, ubp):
    """qgemv_direct (cupy_quant.py) with its grid at most `blocks` (a warp then walks several row pairs), each
    dot route (Q8_0: int8 alone), and its settings (U units in flight, B blocks an SM, P pipelined: a lane's next batch, within the
    row pair or the next pair's first, loads while it sums; all None: the defaults, with cupy_quant's one-wave
    settings where the pairs fit; p=0: the route's own everywhere): odd row counts (a warp's second row absent), K whose
    units do not fill a lane's U; plain and fused against the composition in float32 (the int8 route: against
    numpy_quant.qdot_int8), the plain launch equal to the fused one."""
    from engine.backends import cupy_quant as Q
    monkeypatch.setitem(Q.DIRECT, "blocks", blocks)
    for k, v in zip("ubp", ubp):
        monkeypatch.setitem(Q.DIRECT, k, v)
    monkeypatch.setitem(Q.QUANT_DOT, "route", dot)
    _edge_shapes(fmt, n, cols, m, dot, Q.direct_ok)



@cuda
@pytest.mark.parametrize("fmt", ["q4_k", "q8_0"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("cols", [256, 2048, 4352, 11008, 12288, 14336])
@pytest.mark.parametrize("style", [None, "llama", "gemma", "torch"])
@pytest.mark.parametrize("merge", [0, 1])
def test_qgemv_direct_x_in_registers_equals_the_staged_prologue(monkeypatch, fmt, dtype, cols, style, merge):
    """qgemv_direct's int8 route with one 16-bit x row normed and quantised in registers (cupy_quant's X,
    stage_quantise_x: from 1 to 6 chunks a thread, 14336 past it) equals the staged prologue (X = 0: stage_x into
    shared memory, then quantise_x) bit for bit, with and without each norm style and the one-wave settings; also
    in merged blocks (cupy_quant's M = 1: one block of 8 B warps an SM, the statistic in row_sumsq's order), in a
    grid of one such block too (warps walking more than one pair)."""
    from engine.backends import cupy_quant as Q
    from engine.backends.fused import QOperand
    monkeypatch.setitem(Q.QUANT_DOT, "route", "int8")
    be = engine.backend(DEVICE)
    dt = getattr(engine, dtype)
    rng = np.random.default_rng(cols)
    n = 48
    w = QOperand(engine.tensor(blocks(fmt, n, cols, seed=cols), device=DEVICE).array, fmt, cols)
    x = engine.tensor(rng.standard_normal((1, cols)).astype(np.float32), device=DEVICE).to(dt).array
    x[0, :64] = 0  # a block of zeros (scale 0) beside the rest
    nw = engine.tensor((1 + 0.1 * rng.standard_normal(cols)).astype(np.float32), device=DEVICE).to(dt).array
    norm = (nw, 1e-5, style) if style else None
    assert Q.direct_ok(x, fmt, (w.data,))
    outs = []
    # (merged: also in one block, so warps walk two pairs, the second's batch loading under the first's sums)
    for xs, m, nb in ((0, 0, None), (None, merge, None)) + (((None, 1, 1),) if merge else ()):
        monkeypatch.setitem(Q.DIRECT, "x", xs)
        monkeypatch.setitem(Q.DIRECT, "m", m)
        monkeypatch.setitem(Q.DIRECT, "blocks", nb)
        outs.append(be.linear_fused(x, w, None, dt, norm=norm).get())
    targs, grid = Q.direct_launch(fmt, n // 2, 1, cols, 2)
    assert targs[-1] == (8 * Q.direct_settings(fmt, n // 2)[1] if merge and cols <= 12288 else 8)
    assert Q._xj(1, cols, 2, Q.direct_settings(fmt)[4]) == (0 if cols > 12288 else -(-cols // 4096) * 2)
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


@cuda
@pytest.mark.parametrize("fmt", ["q4_k", "q8_0"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("cols", [256, 4096, 11008, 12288])
@pytest.mark.parametrize("case", ["plain", "norm", "residual", "glu_plain", "glu", "segments", "one_block",
                                  "two_slots", "other_u", "glu_pre0", "norm_pre1", "norm_gemma", "norm_torch"])
def test_qgemv_ring_equals_qgemv_direct(monkeypatch, fmt, dtype, cols, case):
    """qgemv_ring (cupy_quant's RING: the weights brought into shared memory by bulk copies, S batches a warp
    ahead) equals qgemv_direct's int8 route bit for bit: odd row counts (a pair's second row repeated), the llama,
    gemma and torch norms (compiled into the ring's prologue, read at run time by qgemv_direct), a residual, GLU
    with and without the norm, q/k/v segments of other lengths, a grid of one block (each
    warp walks many pairs, its ring wrapping across them), two slots a warp, one and two units a lane a batch, none
    or one batch issued before the wait (the rest once x's loads are out); K from one batch to a split pair's batch
    across both rows."""
    from engine.backends import cupy_quant as Q
    from engine.backends.cupy_launch import sm90
    from engine.backends.fused import QOperand
    if not sm90():
        pytest.skip("qgemv_ring needs an sm_90 GPU or later (Hopper's bulk copies, cp.async.bulk); older GPUs keep "
                    "qgemv_direct, which the other int8-route tests cover")
    monkeypatch.setitem(Q.QUANT_DOT, "route", "int8")
    be = engine.backend(DEVICE)
    dt = getattr(engine, dtype)
    rng = np.random.default_rng(cols)
    n = 75
    op = lambda k, s: QOperand(engine.tensor(blocks(fmt, k, cols, seed=s), device=DEVICE).array, fmt, cols)
    w, w2 = op(n, cols), op(n, cols + 1)
    x = engine.tensor(rng.standard_normal((1, cols)).astype(np.float32), device=DEVICE).to(dt).array
    x[0, :64] = 0
    nw = engine.tensor((1 + 0.1 * rng.standard_normal(cols)).astype(np.float32), device=DEVICE).to(dt).array
    res = engine.tensor(rng.standard_normal((1, n)).astype(np.float32), device=DEVICE).to(dt).array
    call_plain = lambda: be.linear_fused(x, w, None, dt)  # noqa: E731
    call = {"norm": lambda: be.linear_fused(x, w, None, dt, norm=(nw, 1e-5, "llama")),
            "residual": lambda: be.linear_fused(x, w, None, dt, residual=res),
            "glu_plain": lambda: be.linear_fused(x, w, None, dt, glu=(w2, None, "silu")),
            "glu": lambda: be.linear_fused(x, w, None, dt, norm=(nw, 1e-5, "llama"), glu=(w2, None, "silu")),
            "glu_pre0": lambda: be.linear_fused(x, w, None, dt, norm=(nw, 1e-5, "llama"), glu=(w2, None, "silu")),
            "norm_pre1": lambda: be.linear_fused(x, w, None, dt, norm=(nw, 1e-5, "llama")),
            "norm_gemma": lambda: be.linear_fused(x, w, None, dt, norm=(nw, 1e-6, "gemma")),
            "norm_torch": lambda: be.linear_fused(x, w, None, dt, norm=(nw, 1e-5, "torch")),
            "segments": lambda: be.linear_group(x, [w, op(16, 3), op(21, 4)], [None] * 3, dt,
                                                norm=(nw, 1e-5, "llama"))}.get(case, call_plain)
    if case == "one_block":
        monkeypatch.setitem(Q.DIRECT, "sms", 1)  # a grid of one block (qgemv_direct's too)
    if case.endswith(("_pre0", "_pre1")):
        monkeypatch.setitem(Q.RING, "pre", int(case[-1]))
    if case == "two_slots":
        monkeypatch.setitem(Q.RING, "s", 2)
    if case == "other_u":  # the batch of the format's own units a lane (_RING_OWN's u) and of the other, 1 or 2
        monkeypatch.setitem(Q.RING, "u", 3 - Q._RING_OWN[fmt]["u"])
        monkeypatch.setitem(Q.RING, "smem", 200_000)
    monkeypatch.setitem(Q.RING, "formats", ("q4_k", "q8_0"))
    assert Q.ring_plan(x, fmt, (w.data,)) is not None
    outs = []
    for on in (False, True):
        monkeypatch.setitem(Q.RING, "enabled", on)
        out = call()
        outs.append([o.get() for o in out] if isinstance(out, list) else [out.get()])
    for a, b in zip(*outs):  # (GLU of these random blocks overflows float16 in places: inf for inf)
        np.testing.assert_array_equal(b, a)


_DIVS = r"""
extern "C" __global__ void divs_check(unsigned long long *bad, unsigned *first) {
    const unsigned long long n = 0x7f800000ull, step = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n; i += step) {
        const float a = __uint_as_float((unsigned)i), d = __fdiv_rn(a, 127.f);
        if (__float_as_uint(div127_rn(a)) != __float_as_uint(d)) {
            atomicAdd(bad, 1ull);
            atomicMin(first, (unsigned)i);
        }
        if (__float_as_uint(rcp_rn(d)) != __float_as_uint(__frcp_rn(d))) {
            atomicAdd(bad + 1, 1ull);
            atomicMin(first + 1, (unsigned)i);
        }
    }
}
"""


@cuda
def test_quantise_x_scale_and_reciprocal_are_ieee_for_every_float32():
    """quant_span.cuh's div127_rn and rcp_rn (x's block scale max|x| / 127 and its reciprocal, without the
    intrinsics' branches to a slow path) equal __fdiv_rn(a, 127) and __frcp_rn(a / 127) bit for bit for every
    finite float32 a >= 0, zero and the subnormals included, so x's int8 blocks are bit for bit those the
    intrinsics gave (numpy_quant.quantize_x_q8's wherever no subnormal is flushed)."""
    import cupy

    from engine.backends import cupy_kernels as K
    fn = cupy.RawModule(code=K._SRC + _DIVS, options=("-std=c++17",)).get_function("divs_check")
    bad, first = cupy.zeros(2, cupy.uint64), cupy.full(2, 0xFFFFFFFF, cupy.uint32)
    fn((4 * 132 * 8,), (256,), (bad, first))
    assert bad.get().tolist() == [0, 0], f"mismatches (scale, reciprocal) {bad.get()}, first at a = {first.get()}"


def _edge_shapes(fmt, n, cols, m, dot, takes):
    from engine.backends import cupy_quant as Q
    from engine.backends.fused import FusedOps, QOperand
    from engine.backends.numpy_quant import qdot_int8
    be = engine.backend(DEVICE)
    rng = np.random.default_rng(n)
    raw, raw2 = blocks(fmt, n, cols, seed=n), blocks(fmt, n, cols, seed=n + 1)
    x = engine.tensor(rng.standard_normal((m, cols)).astype(np.float32), device=DEVICE)
    if dot == "int8" and not takes(x.array, fmt, (engine.tensor(raw, device=DEVICE).array,)):
        pytest.skip(f"{m} x {cols} float32 rows and their int8 blocks exceed shared memory, so the int8 route does "
                    "not take this shape (the float route's case of the same shape covers the qgemv that serves it)")
    assert takes(x.array, fmt, (engine.tensor(raw, device=DEVICE).array,))
    assert Q.direct_ok(x.array, fmt, (engine.tensor(raw, device=DEVICE).array,)) == (takes is Q.direct_ok)
    want = (x.numpy().astype(np.float64) @ gguf.quants.dequantize(raw, G[fmt.upper()]).astype(np.float64).T
            if dot == "float" else qdot_int8(x.numpy(), raw, fmt, cols)[0])
    y = F.linear(x, gpu_weight(raw, fmt, cols))
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    w, w2 = [QOperand(engine.tensor(r, device=DEVICE).array, fmt, cols) for r in (raw, raw2)]
    assert (be.linear_fused(x.array, w, None, engine.float32) == y.array).all()
    nw = engine.tensor((1 + 0.1 * rng.standard_normal(cols)).astype(np.float32), device=DEVICE).array
    res = engine.tensor(rng.standard_normal((m, n)).astype(np.float32), device=DEVICE).array
    kw = dict(norm=(nw, 1e-5, "llama"), glu=(w2, None, "silu"), residual=res)
    got = be.linear_fused(x.array, w, None, engine.float32, **kw)
    ref = FusedOps.linear_fused(be, x.array, w, None, engine.float32, **kw)
    np.testing.assert_allclose(got.get(), ref.get(), rtol=1e-5, atol=1e-5 * np.abs(ref.get()).max())


INT8_CASES = [(f, m, k) for f in ("q8_0", "q4_k", "q6_k") for k, ms in ((256, (1, 3, 8)), (4096, (1, 2, 8)),
                                                                        (11008, (1, 3))) for m in ms]


@cuda
@pytest.mark.parametrize("fmt,m,K", INT8_CASES)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_qgemv_int8_route_equals_its_reference(monkeypatch, fmt, m, K, dtype):
    """qgemv_span's int8 route (cupy_quant.QUANT_DOT: x quantised in shared memory, __dp4a) against
    numpy_quant.qdot_int8 (the same quantisation of x, exact integer sums, float64 combination), rounded once:
    equal within fp32 rounding of the sums (that reference is within int8_bound of the composition: test_gguf)."""
    from engine.backends import cupy_quant as Q
    from engine.backends.numpy_quant import qdot_int8
    monkeypatch.setitem(Q.QUANT_DOT, "route", "int8")
    N = 40
    raw = blocks(fmt, N, K, seed=K + m)
    rng = np.random.default_rng(K + m)
    dt = getattr(engine, dtype)
    x = engine.tensor(rng.standard_normal((m, K)).astype(np.float32), device=DEVICE).to(dt)
    b = engine.tensor(rng.standard_normal(N).astype(np.float32), device=DEVICE).to(dt)
    w = gpu_weight(raw, fmt, K, dtype)
    assert Q.span_ok(x.array, fmt, (w.data.array,))
    y = F.linear(x, w, b)
    assert y.shape == (m, N) and y.dtype is dt
    want = qdot_int8(x.float().numpy(), raw, fmt, K)[0] + b.float().numpy().astype(np.float64)
    rtol, atol = DTYPES[dtype]
    np.testing.assert_allclose(y.float().numpy(), want, rtol=rtol, atol=atol * np.abs(want).max())


@cuda
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("m", [1, 3, 8])
@pytest.mark.parametrize("dot", ["float", "int8"])
def test_qgemv_fused_equals_the_composition(monkeypatch, fmt, dtype, m, dot):
    """qgemv_fused (linear_fused / linear_group over QOperands: the captured decode's launches) against the
    backend's own composition (fused.FusedOps: rms_norm, qlinear, act, mul, add op by op), which rounds
    the same way: equal within fp32 tolerance of the sums. Both dot routes of qgemv_span (cupy_quant.QUANT_DOT:
    with int8 the composition's qlinear quantises the same normed x the fused prologue does)."""
    from engine.backends import cupy_kernels as K
    from engine.backends import cupy_quant as Q
    from engine.backends.fused import FusedOps, QOperand
    monkeypatch.setitem(Q.QUANT_DOT, "route", dot)
    be = engine.backend(DEVICE)
    dt = getattr(engine, dtype)
    cols, n = 512, 40
    rng = np.random.default_rng(m)

    def arr(a):
        return engine.tensor(a.astype(np.float32), device=DEVICE).to(dt).array

    def qop(seed, rows=n):
        raw = blocks(fmt, rows, cols, seed=seed)
        return QOperand(engine.tensor(raw, device=DEVICE).array, fmt, cols)
    x = arr(rng.standard_normal((m, cols)))
    nw, b, b2 = arr(1 + 0.1 * rng.standard_normal(cols)), arr(rng.standard_normal(n)), arr(rng.standard_normal(n))
    res = arr(rng.standard_normal((m, n)))
    w, w2, wb, wc = qop(1), qop(2), qop(3, 24), qop(4, 16)
    assert K.qgemv_fused_ok(x, w.data, fmt, [w2.data])
    rtol, atol = DTYPES[dtype]

    def close(got, want):
        g, r = [engine.Tensor._wrap(a, be).float().numpy() for a in (got, want)]
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol * max(1.0, np.abs(r).max()))
    for norm in (None, (nw, 1e-5, "llama")):
        for glu in (None, (w2, b2, "silu")):
            for residual in (None, res):
                close(be.linear_fused(x, w, b, dt, norm=norm, glu=glu, residual=residual),
                      FusedOps.linear_fused(be, x, w, b, dt, norm=norm, glu=glu, residual=residual))
        outs = be.linear_group(x, [w, wb, wc], [b, None, None], dt, norm=norm)
        want = FusedOps.linear_group(be, x, [w, wb, wc], [b, None, None], dt, norm=norm)
        assert [o.shape for o in outs] == [(m, 40), (m, 24), (m, 16)]
        for o, r in zip(outs, want):
            close(o, r)


@cuda
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_qdequant_is_gguf_exact(fmt, dtype):
    """dequantize() and index_select (embedding rows) on the GPU: float32 equals gguf-py bit for bit, the
    16-bit dtypes that value rounded once."""
    raw = blocks(fmt, 9, 512, seed=2)
    ref = gguf.quants.dequantize(raw, G[fmt.upper()])
    w = gpu_weight(raw, fmt, 512, dtype)
    dt = getattr(engine, dtype)
    want = engine.tensor(ref).to(dt).float().numpy()
    np.testing.assert_array_equal(w.dequantize().float().numpy(), want)
    ids = engine.tensor(np.array([8, 0, 3, 3], np.int64), device=DEVICE)
    np.testing.assert_array_equal(w.index_select(0, ids).float().numpy(), want[[8, 0, 3, 3]])


@cuda
@pytest.mark.parametrize("fmt", ["q8_0", "q4_k"])
def test_prefill_rows_take_the_tiled_path(fmt):
    """More than 8 rows: dequantised tiles (the kernel) and a float32 product."""
    raw = blocks(fmt, 64, 512, seed=3)
    x = np.random.default_rng(2).standard_normal((2, 9, 512)).astype(np.float32)
    y = F.linear(engine.tensor(x, device=DEVICE), gpu_weight(raw, fmt, 512)).numpy()
    want = x.astype(np.float64) @ gguf.quants.dequantize(raw, G[fmt.upper()]).astype(np.float64).T
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@cuda
@pytest.mark.parametrize("fmt", FORMATS)
def test_quantising_on_the_gpu(fmt):
    """The converter's quantiser on a cupy array gives the blocks it gives on the CPU, byte for byte (its
    sums accumulate in float64, so reduction order does not matter; the legacy formats: gguf-py's)."""
    import cupy
    from engine.io.gguf import quantize_matrix
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((64, 1024)) * 0.02).astype(np.float32)
    a[:8] *= np.linspace(0.1, 10, 1024, dtype=np.float32)  # rows whose scale drifts across super-blocks
    a[8:16] = (rng.standard_t(3, (8, 1024)) * 0.01).astype(np.float32)  # heavy tails
    on_gpu = cupy.asnumpy(quantize_matrix(cupy.asarray(a), fmt))
    on_cpu = quantize_matrix(a, fmt)
    bad = np.flatnonzero((on_gpu != on_cpu).any(1))
    assert bad.size == 0, f"{fmt}: rows {bad[:8].tolist()} differ ({bad.size} of {a.shape[0]})"


# ---- the captured decode of a quantized model (any device: on the CPU the plan runs eagerly) ----------------
def quantized_llama(q, dtype="float32"):
    from engine import models
    from engine.quant import quantize_module
    m = models.from_preset("llama", "tiny", hidden_size=256, intermediate_size=512, num_attention_heads=4,
                           num_key_value_heads=2, num_hidden_layers=2, seed=1)
    quantize_module(m, q)  # on the CPU, then moved: the same blocks on every device
    return m.to(device=DEVICE, dtype=getattr(engine, dtype))


@pytest.mark.parametrize("q", ["q8_0", "q4_k_m"])
def test_fusion_plan_takes_quantized_linears(q):
    """qlinear calls fuse as linear ones do: per layer q/k/v in one group with the norm, gate/up with the
    norm and the GLU, o_proj and down_proj with the residual, lm_head with the final norm; q4_k_m's
    Q6_K v_proj (layer 1) stays out of the Q4_K q/k group, and its Q6_K down_proj fuses alone."""
    from engine.capture import Fused
    from engine.generation import Decoder
    m = quantized_llama(q)
    dec = Decoder(m, 1, 24, capture=True)
    dec.prefill(engine.tensor([[1, 2, 3]], device=DEVICE))
    for _ in range(3):
        dec.step()
    fused = [f for f in dec.step_fn.the_plan.values() if isinstance(f, Fused)]
    got = {"norm": sum(f.norm is not None for f in fused), "glu": sum(f.act is not None for f in fused),
           "residual": sum(f.residual is not None for f in fused), "grouped": sum(len(f.group) + 1 for f in fused if f.group)}
    grouped = 6 if q == "q8_0" else 5  # layer 1's v_proj is Q6_K (llama-quantize's recipe), q and k Q4_K
    norms = 5 if q == "q8_0" else 6  # ... so it takes the norm on its own
    assert got == {"norm": norms, "glu": 2, "residual": 4, "grouped": grouped}


@pytest.mark.parametrize("q", ["q8_0", "q4_k_m"])
@pytest.mark.parametrize("dot", ["float", "int8"])
def test_captured_decode_of_a_quantized_model(monkeypatch, q, dot):
    """The planned step (fused ops; on CUDA a graph over the fused qgemv kernels, each dot route of
    cupy_quant.QUANT_DOT) gives the tokens of the plain step, greedy and sampled, batch 1 and 2."""
    from engine.generation import generate
    if DEVICE.type == "cuda":
        from engine.backends import cupy_quant as Q
        monkeypatch.setitem(Q.QUANT_DOT, "route", dot)
    elif dot == "int8":
        pytest.skip("the int8 dot route exists only in the CUDA kernels (the numpy backend has one route: the float "
                    "case covers it)")
    dtypes = ["float32", "float16"] if DEVICE.type == "cuda" else ["float32"]
    for dtype in dtypes:
        m = quantized_llama(q, dtype)
        for prompts in ([[5, 9, 33, 2, 71, 100, 3]], [[5, 9, 33, 2, 71, 100, 3], [17, 4, 250]]):
            kw = dict(max_new_tokens=10, stop_token_ids=[])
            plain = generate(m, prompts, capture="plain", **kw).tokens
            for mode in (False, True):
                assert generate(m, prompts, capture=mode, **kw).tokens == plain, (dtype, mode)
        kw = dict(max_new_tokens=8, stop_token_ids=[], temperature=0.9, top_k=40, seed=5)
        assert generate(m, [3, 1, 4], capture=True, **kw).tokens == generate(m, [3, 1, 4], capture="plain", **kw).tokens


@cuda
@pytest.mark.parametrize("quantize", ["q8_0", "q4_k_m"])
def test_captured_decode_of_a_gguf_model(tmp_path, quantize):
    """A GGUF llama on CUDA in float16: the captured decode (CUDA graph over qgemv, qdequant and the
    rest) gives the tokens of the uncaptured one, and the first step's logits match the CPU's."""
    from engine import models
    from engine.generation import generate
    from test_models_llm import hf_model
    from test_gguf import write_tiny
    m = hf_model("llama", dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2))
    path = write_tiny(tmp_path, m, quantize)
    gm = models.from_pretrained(path, device=DEVICE, dtype=engine.float16)
    ids = np.random.default_rng(0).integers(0, 256, (1, 7))
    kw = dict(max_new_tokens=12, stop_token_ids=[])
    eager = generate(gm, ids[0].tolist(), capture=False, **kw).tokens
    graph = generate(gm, ids[0].tolist(), capture=True, **kw).tokens
    assert graph == eager and len(graph[0]) == 12
    cpu = models.from_pretrained(path)
    got = gm(engine.tensor(ids, device=DEVICE)).float().numpy()
    want = cpu(engine.tensor(ids)).numpy()
    assert np.abs(got - want).max() <= 2e-2 * np.ptp(want)


@cuda
def test_shared_memory_limit_is_the_devices_and_shapes_past_it_fall_back(monkeypatch):
    """cupy_kernels.smem_limit is the current device's opt-in maximum (227 KiB on an H200, 163 KiB on an A100, 99 KiB
    on sm_86/sm_89: not sm_90's on every GPU); under a smaller one (an sm_89 part, pretended) the GEMVs whose staged x
    rows no longer fit are refused and F.linear gives the same product through the fallback."""
    import cupy
    from engine.backends import cupy_kernels as K
    dev = cupy.cuda.runtime.getDevice()
    assert K.smem_limit() == cupy.cuda.Device().attributes["MaxSharedMemoryPerBlockOptin"]
    rng = np.random.default_rng(0)
    x = engine.tensor(rng.standard_normal((8, 8192)).astype(np.float16), device=DEVICE)
    w = engine.tensor((0.01 * rng.standard_normal((40, 8192))).astype(np.float16), device=DEVICE)
    assert K.gemv_ok(x.array, w.array)  # 8 rows x 8192 fp16 = 128 KiB staged
    want = F.linear(x, w).numpy()
    monkeypatch.setitem(K._SMEM_OPTIN, dev, 99 * 1024)
    assert not K.gemv_ok(x.array, w.array)
    np.testing.assert_allclose(F.linear(x, w).numpy().astype(np.float32), want.astype(np.float32), rtol=2e-2, atol=2e-2)
