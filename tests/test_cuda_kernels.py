"""Fused CUDA kernels against the unfused composition (cupy ops in float32), and the graph decoder
against transformers and against itself uncaptured. Needs cupy and a GPU; skipped otherwise."""
import math

import numpy as np
import pytest

cupy = pytest.importorskip("cupy", reason="the fused kernels need cupy and an NVIDIA GPU")
try:
    cupy.cuda.runtime.getDeviceCount()
except Exception as e:  # cupy installed but no driver/GPU
    pytest.skip(f"no CUDA device: {e}", allow_module_level=True)

from engine.backends import cupy_kernels as K  # noqa: E402

pytestmark = pytest.mark.cuda
DTYPES = ["float16", "bfloat16"]


def _rand(shape, dtype, scale=1.0, seed=0):
    import ml_dtypes
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(shape) * scale).astype(np.float32)
    return cupy.asarray(a.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16))


def _f(a):
    return a.astype(cupy.float32)


def _rel(got, ref):
    got, ref = cupy.asnumpy(_f(got)).astype(np.float64), cupy.asnumpy(_f(ref)).astype(np.float64)
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


TOL = {"float16": 2e-3, "bfloat16": 1.6e-2}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,k_split", K.GEMV_VARIANTS)
@pytest.mark.parametrize("N,Kd", [(1000, 4096), (4096, 11008), (37, 64)])
def test_gemv_plain(dtype, rows, k_split, N, Kd):
    W, x = _rand((N, Kd), dtype, 0.02), _rand(Kd, dtype, seed=1)
    out = cupy.empty(N, W.dtype)
    K.gemv(W, x, out, rows=rows, k_split=k_split)
    assert _rel(out, _f(W) @ _f(x)) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemv_rmsnorm_f32_out(dtype):
    W, x, nw = _rand((512, 1024), dtype, 0.02), _rand(1024, dtype, seed=1), _rand(1024, dtype, seed=2)
    out = cupy.empty(512, cupy.float32)
    K.gemv(W, x, out, mode=1, norm_weight=nw, eps=1e-5)
    xf = _f(x)
    xin = xf / cupy.sqrt((xf * xf).mean() + 1e-5) * _f(nw)
    assert _rel(out, _f(W) @ xin) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemv_residual(dtype):
    W, x, res = _rand((256, 688), dtype, 0.02), _rand(688, dtype, seed=1), _rand(256, dtype, seed=2)
    out = cupy.empty(256, W.dtype)
    K.gemv(W, x, out, residual=res)
    assert _rel(out, _f(res) + _f(W) @ _f(x)) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,k_split", [v for v in K.GEMV_VARIANTS if v[0] % 2 == 0])
def test_gemv_glu(dtype, rows, k_split):
    I, H = 688, 256
    gate, up, x = _rand((I, H), dtype, 0.05), _rand((I, H), dtype, 0.05, seed=1), _rand(H, dtype, seed=2)
    out = cupy.empty(I, gate.dtype)
    K.gemv(K.interleave_glu(gate, up), x, out, glu=True, rows=rows, k_split=k_split)
    g, u = _f(gate) @ _f(x), _f(up) @ _f(x)
    assert _rel(out, g / (1 + cupy.exp(-g)) * u) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pos", [0, 7, 300])
def test_rope_kv(dtype, pos):
    Hq, Hkv, D, S = 8, 2, 64, 512
    qkv = _rand((Hq + 2 * Hkv) * D, dtype)
    inv = 1.0 / (10000 ** (np.arange(0, D, 2) / D))
    t = np.arange(S)[:, None] * inv[None]
    cos, sin = cupy.asarray(np.cos(t), cupy.float32), cupy.asarray(np.sin(t), cupy.float32)
    q = cupy.zeros(Hq * D, qkv.dtype)
    kc, vc = cupy.zeros((Hkv, S, D), qkv.dtype), cupy.zeros((Hkv, S, D), qkv.dtype)
    K.rope_kv(qkv, cupy.asarray([pos], cupy.int32), cos, sin, q, kc, vc, Hq, Hkv, D)

    def rot(v):
        v = _f(v).reshape(-1, D)
        a, b = v[:, :D // 2], v[:, D // 2:]
        return cupy.concatenate([a * cos[pos] - b * sin[pos], b * cos[pos] + a * sin[pos]], -1)
    assert _rel(q, rot(qkv[:Hq * D]).reshape(-1)) < TOL[dtype]
    assert _rel(kc[:, pos], rot(qkv[Hq * D:(Hq + Hkv) * D])) < TOL[dtype]
    assert bool((vc[:, pos] == qkv[(Hq + Hkv) * D:].reshape(Hkv, D)).all())
    assert float(cupy.abs(_f(kc[:, pos + 1:])).sum()) == 0.0  # nothing else written


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pos,window,D", [(0, 0, 128), (5, 0, 64), (700, 0, 128), (1000, 256, 128), (130, 0, 256)])
def test_attention_split(dtype, pos, window, D):
    Hq, Hkv, S = 8, 2, 1024
    q = _rand(Hq * D, dtype)
    kc, vc = _rand((Hkv, S, D), dtype, seed=1), _rand((Hkv, S, D), dtype, seed=2)
    part = cupy.zeros((Hq, S // K.ATTN_CHUNK, D + 2), cupy.float32)
    out = cupy.zeros(Hq * D, q.dtype)
    K.attention(q, kc, vc, cupy.asarray([pos], cupy.int32), part, out, Hq, Hkv, D, window=window)
    lo = max(0, pos - window + 1) if window else 0
    k = cupy.repeat(_f(kc[:, lo:pos + 1]), Hq // Hkv, axis=0)
    v = cupy.repeat(_f(vc[:, lo:pos + 1]), Hq // Hkv, axis=0)
    s = cupy.einsum("hd,htd->ht", _f(q).reshape(Hq, D), k) / math.sqrt(D)
    p = cupy.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    assert _rel(out, cupy.einsum("ht,htd->hd", p, v).reshape(-1)) < TOL[dtype]


def test_argmax_advance_ties_take_first_index():
    logits = cupy.asarray(np.r_[np.zeros(5000), 3.0, np.zeros(100), 3.0], cupy.float32)
    tok, out, step, pos = (cupy.zeros(1, cupy.int32), cupy.zeros(4, cupy.int32), cupy.zeros(1, cupy.int32),
                           cupy.asarray([9], cupy.int32))
    K.argmax_advance(logits, tok, out, step, pos)
    assert int(tok[0]) == 5000 and int(out[0]) == 5000 and int(step[0]) == 1 and int(pos[0]) == 10


# ---- prefill kernels (engine/backends/cupy_prefill.py) -------------------------------------------
from engine.backends import cupy_prefill as P  # noqa: E402


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefill_rms_rows(dtype):
    x, w = _rand((5, 256), dtype), _rand(256, dtype, seed=1)
    xf = _f(x)
    ref = _f(w) * (xf / cupy.sqrt((xf * xf).mean(-1, keepdims=True) + 1e-5))
    assert _rel(P.rms_rows(x, w, 1e-5), ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefill_linear_accumulate(dtype):
    x, W, res = _rand((7, 64), dtype), _rand((48, 64), dtype, seed=1), _rand((7, 48), dtype, seed=2)
    ref = _f(res) + _f(x) @ _f(W).T
    P.linear(x, W, out=res, accumulate=True)
    assert _rel(res, ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Hq,Hkv,window", [(4, 4, 0), (8, 2, 0), (8, 2, 5)])
def test_prefill_rope_and_attention(dtype, Hq, Hkv, window):
    T, D, S = 12, 64, 64
    qkv = _rand((T, (Hq + 2 * Hkv) * D), dtype)
    inv = 1.0 / (10000 ** (np.arange(0, D, 2) / D))
    ang = np.arange(S)[:, None] * inv[None]
    cos, sin = cupy.asarray(np.cos(ang), cupy.float32), cupy.asarray(np.sin(ang), cupy.float32)
    kc, vc = cupy.zeros((Hkv, S, D), qkv.dtype), cupy.zeros((Hkv, S, D), qkv.dtype)
    q = P.rope_rows(qkv, cos, sin, kc, vc, 0, Hq, Hkv, D)
    out = P.attention(q, kc, vc, 0, window, D ** -0.5)

    def rot(v):  # (T, H, D)
        a, b = v[..., :D // 2], v[..., D // 2:]
        c, s = cos[:T, None], sin[:T, None]
        return cupy.concatenate([a * c - b * s, b * c + a * s], -1)
    x = _f(qkv)
    qr = rot(x[:, :Hq * D].reshape(T, Hq, D))
    kr = rot(x[:, Hq * D:(Hq + Hkv) * D].reshape(T, Hkv, D))
    v = x[:, (Hq + Hkv) * D:].reshape(T, Hkv, D)
    assert _rel(q, qr.transpose(1, 0, 2)) < TOL[dtype]
    assert _rel(kc[:, :T], kr.transpose(1, 0, 2)) < TOL[dtype]
    k = cupy.repeat(kr.transpose(1, 0, 2), Hq // Hkv, 0)
    vv = cupy.repeat(v.transpose(1, 0, 2), Hq // Hkv, 0)
    sc = qr.transpose(1, 0, 2) @ k.transpose(0, 2, 1) / np.sqrt(D)
    i, j = np.arange(T)[:, None], np.arange(T)[None]
    keep = (j <= i) & ((j > i - window) if window else True)
    sc = cupy.where(cupy.asarray(keep), sc, -cupy.inf)
    p = cupy.exp(sc - sc.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = (p @ vv).transpose(1, 0, 2).reshape(T, Hq * D)
    assert _rel(out, ref) < 2 * TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefill_glu_rows(dtype):
    gate, up = _rand((6, 40), dtype), _rand((6, 40), dtype, seed=1)
    gu = cupy.stack([gate, up], axis=-1).reshape(6, 80)
    g = _f(gate)
    assert _rel(P.glu_rows(gu), g / (1 + cupy.exp(-g)) * _f(up)) < TOL[dtype]
