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
def test_gemv_silu_gate_residual(dtype):
    I, H = 688, 256
    W, gu, res = _rand((H, I), dtype, 0.02), _rand(2 * I, dtype, seed=1), _rand(H, dtype, seed=2)
    out = cupy.empty(H, W.dtype)
    K.gemv(W, gu, out, mode=2, residual=res)
    g, u = _f(gu[:I]), _f(gu[I:])
    ref = _f(res) + _f(W) @ (g / (1 + cupy.exp(-g)) * u)
    assert _rel(out, ref) < TOL[dtype]


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
