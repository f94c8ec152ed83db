"""The fused backend ops (engine/backends/fused.py) against torch with transformers' rounding, on the
device under test; on CUDA also each kernel against the plain composition it replaces, bit for bit
(that equality is what lets a captured decode step equal the eager one)."""
import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import engine
from engine import sampling
from engine.backends.fused import FusedOps
from helpers import DEVICE, NP, TORCH, compare, compare_reduced, needs_device

pytestmark = needs_device
RNG = np.random.default_rng(0)
ON_CUDA = DEVICE.type == "cuda"
DTYPES = ["float32", "float16", "bfloat16"]


def arr(shape, dtype, scale=1.0, seed=0):
    a = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
    return a.astype(NP[dtype])


def E(a):
    return engine.tensor(a, device=DEVICE)


def T(a):
    return torch.from_numpy(np.asarray(a, np.float32)).to(TORCH[str(a.dtype) if a.dtype != NP["bfloat16"]
                                                               else "bfloat16"])


def run(name, *args, **kw):
    """backend.<name>(arrays..., out_dtype, **kw) on engine tensors; the result as an engine tensor."""
    x = next(a for a in args if isinstance(a, engine.Tensor))
    b = x.backend
    out = getattr(b, name)(*[a.array if isinstance(a, engine.Tensor) else a for a in args], x.dtype, **kw)
    return engine.Tensor._wrap(out, b, engine.dtype.get(out.dtype))


def composition(name, *args, **kw):
    """The same op through FusedOps' plain composition on the same backend."""
    x = next(a for a in args if isinstance(a, engine.Tensor))
    b = x.backend
    fn = getattr(FusedOps, name)
    out = fn(b, *[a.array if isinstance(a, engine.Tensor) else a for a in args], x.dtype, **kw)
    return engine.Tensor._wrap(out, b, engine.dtype.get(out.dtype))


def against_torch(got, want, want64, dtype):
    """float32 within the table's tolerance of torch; 16-bit by the reduced-precision rule (torch's own
    error against float64 as the yardstick); accumulating ops take scale 4."""
    if dtype == "float32":
        compare(got, want, scale=4)
    else:
        compare_reduced(got, want, want64, scale=4)


def same(a, b):
    np.testing.assert_array_equal(a.float().numpy(), b.float().numpy())


# ---- torch references with transformers' rounding ------------------------------------------------------------
def t_norm(x, w, eps, style):
    h = x.float()
    if style == "torch":
        return TF.rms_norm(h, (x.shape[-1],), w.float(), eps).to(x.dtype)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (h * (1.0 + w.float())).to(x.dtype) if style == "gemma" else w * h.to(x.dtype)


ACT = {"silu": TF.silu, "gelu_tanh": lambda t: TF.gelu(t, approximate="tanh"), "gelu": TF.gelu}


def t_linear_fused(x, w, b, norm=None, glu=None, residual=None):
    if norm is not None:
        x = t_norm(x, *norm)
    y = TF.linear(x, w, b)
    if glu is not None:
        y = ACT[glu[2]](y) * TF.linear(x, glu[0], glu[1])
    return residual + y if residual is not None else y


CASES = [  # (rows, N, K, norm style, act, bias, residual)
    (2, 64, 64, None, "silu", False, True), (1, 32, 64, None, None, True, False),
    (1, 96, 64, None, None, False, False), (1, 200, 128, "llama", None, False, False),
    (3, 96, 64, None, None, True, True), (1, 64, 256, "gemma", "gelu_tanh", False, False),
    (2, 128, 64, "llama", "silu", True, False), (8, 64, 128, "torch", None, False, True),
    (5, 48, 64, "llama", "silu", False, True), (1, 64, 512, None, "gelu", False, False),
    # 5..8 rows of 16-bit x on a GPU: the tensor-core GEMV (N not a multiple of its 16-row tiles; K of 3 chunks
    # over 4 slices; a long K)
    (8, 200, 4096, "llama", "silu", True, True), (6, 40, 96, None, None, True, False), (7, 24, 2048, "gemma", None, False, True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,N,K,style,act,bias,res", CASES)
def test_linear_fused(dtype, rows, N, K, style, act, bias, res):
    x, w = arr((rows, K), dtype), arr((N, K), dtype, 0.1, 1)
    b = arr((N,), dtype, 0.1, 2) if bias else None
    nw = arr((K,), dtype, 0.5, 3) + NP[dtype](1) if style else None
    up = (arr((N, K), dtype, 0.1, 4), arr((N,), dtype, 0.1, 5) if bias else None, act) if act else None
    r = arr((rows, N), dtype, 1.0, 6) if res else None
    e = lambda a: None if a is None else E(a)  # noqa: E731
    kw = dict(norm=(e(nw).array, 1e-5, style) if style else None, glu=(e(up[0]).array, None if up[1] is None else
              e(up[1]).array, act) if act else None, residual=e(r).array if res else None)
    got = run("linear_fused", E(x), E(w), e(b), **kw)
    t = lambda a: None if a is None else T(a)  # noqa: E731
    args = [T(x), T(w), t(b), (T(nw), 1e-5, style) if style else None, (T(up[0]), t(up[1]), act) if act else None,
            t(r)]
    d = lambda a: a.double() if isinstance(a, torch.Tensor) else a  # noqa: E731
    ref = t_linear_fused(*[tuple(d(v) for v in a) if isinstance(a, tuple) else d(a) for a in args])
    compare_reduced(got, t_linear_fused(*args), ref, scale=4)
    if ON_CUDA:  # the kernel equals the ops it replaces, rounding for rounding
        same(got, composition("linear_fused", E(x), E(w), e(b), **kw))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,K,style", [(1, 64, "llama"), (7, 256, "gemma"), (3, 128, "torch"), (2, 4096, "llama")])
def test_rms_norm_styles(dtype, rows, K, style):
    x, w = arr((rows, K), dtype), arr((K,), dtype, 0.3, 1)
    got = run("rms_norm", E(x), 1, E(w), 1e-6, style=style)
    ref = t_norm(T(x).double(), T(w).double(), 1e-6, style)
    compare_reduced(got, t_norm(T(x), T(w), 1e-6, style), ref, scale=2)


@pytest.mark.parametrize("shape", [(1, 1, 576), (3, 64), (2, 5, 4096)])
def test_rms_norm_llama_float32_is_the_general_path_bit_for_bit(shape):
    """numpy_nn's float32 "llama" rms_norm (in place, one pooled output) against the general path's operations
    written out in numpy, in their order: x * (1 / sqrt(sum(x^2) / n + eps)), then w times it."""
    if ON_CUDA:
        pytest.skip("numpy_nn's float32 rms_norm override is CPU-only; on CUDA the rms_norm kernel is checked "
                    "against torch by test_rms_norm_styles")
    x, w = arr(shape, "float32"), arr(shape[-1:], "float32", 0.3, 1)
    f32 = np.float32
    r = f32(1.0) / np.sqrt(np.sum(np.square(x), axis=(-1,), keepdims=True) / f32(shape[-1]) + f32(1e-5))
    want = np.multiply(w, x * r)
    np.testing.assert_array_equal(run("rms_norm", E(x), 1, E(w), 1e-5, style="llama").numpy(), want)
    np.testing.assert_array_equal(run("rms_norm", E(x), 1, None, 1e-5, style="llama").numpy(), x * r)


@pytest.mark.parametrize("small", [True, False], ids=["small-rows", "chunked"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,K,affine,big", [(5, 768, True, False), (3, 320, False, False), (2, 1280, True, True),
                                               (4, 8, True, False)])
def test_layer_norm_rows(dtype, rows, K, affine, big, small, monkeypatch):
    """backend.layer_norm over the last dim (on CUDA one kernel a row) against torch and float64; on CUDA
    also against the numpy backend's composition on the same device. big: a row of values past 2^64
    (bfloat16 and float32 reach them: the row is scaled first) and rows holding nan and inf. small: numpy's
    path for few elements (one chunk on the calling thread), else its chunked path."""
    from engine.backends.numpy_nn import NnKernels
    if not small:
        monkeypatch.setattr(NnKernels, "NORM_SMALL", 0)
    x, w, b = arr((rows, K), dtype), arr((K,), dtype, 0.3, 1), arr((K,), dtype, 0.3, 2)
    if big and dtype != "float16":
        x[0] *= np.asarray(2.0 ** 80, x.dtype)
        x[1, 3], x[1, 5] = np.nan, np.inf
    args = (E(w), E(b)) if affine else (None, None)
    got = run("layer_norm", E(x), 1, *args, 1e-5)
    tw, tb = (T(w), T(b)) if affine else (None, None)
    want = TF.layer_norm(T(x), (K,), tw, tb, 1e-5)
    d = lambda a: None if a is None else a.double()  # noqa: E731
    ref = TF.layer_norm(T(x).double(), (K,), d(tw), d(tb), 1e-5)
    if big and dtype != "float16":  # torch's float32 kernel gives nan for the huge row: the fp64 one is the oracle
        want = ref.to(want.dtype)
    compare_reduced(got, want, ref, scale=2)
    if ON_CUDA:
        be = got.backend
        plain = NnKernels.layer_norm(be, E(x).array, 1, *(a.array if a is not None else None for a in args), 1e-5,
                                   got.dtype)
        compare(got.float(), torch.from_numpy(be.to_numpy(plain).astype(np.float32)), scale=4)


@pytest.mark.skipif(ON_CUDA, reason="compares the numpy backend's small-row and chunked layer-norm paths; CUDA runs its own layer-norm kernel (test_layer_norm_rows checks it)")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 1, 384), (1, 1, 512), (10, 384), (1, 8), (3, 1)])
def test_layer_norm_small_rows_same_bits(shape, dtype, monkeypatch):
    """numpy: a layer norm of at most NORM_SMALL elements (a decode step's row) on the calling thread gives the
    chunked path's bits (OpenBLAS runs such GEMVs on one thread whatever its thread count)."""
    from engine.backends.numpy_nn import NnKernels
    x, w, b = arr(shape, dtype), arr(shape[-1:], dtype, 0.3, 1), arr(shape[-1:], dtype, 0.3, 2)
    assert x.size <= NnKernels.NORM_SMALL
    got = engine.functional.layer_norm(E(x), shape[-1:], E(w), E(b))
    monkeypatch.setattr(NnKernels, "NORM_SMALL", 0)
    np.testing.assert_array_equal(got.numpy(), engine.functional.layer_norm(E(x), shape[-1:], E(w), E(b)).numpy())
    compare(got.float(), TF.layer_norm(T(x).double(), shape[-1:], T(w).double(), T(b).double()).float(), scale=2)


def t_rotary(x, cos, sin_signed):
    rot = cos.shape[-1]
    half = rot // 2
    c, s = cos[:, None], sin_signed[:, None]
    xr = x[..., :rot]
    out = xr * c + torch.cat([xr[..., half:], xr[..., :half]], -1) * s
    return torch.cat([out, x[..., rot:]], -1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,L,D,rot,cb", [(1, 4, 1, 64, 64, 1), (2, 3, 5, 96, 64, 2), (1, 2, 3, 128, 128, 1)])
def test_rotary(dtype, B, H, L, D, rot, cb):
    xs = arr((B, L, H, D), dtype)  # (B, L, H, D) then a transposed view, as the models make it
    cos, sin = arr((cb, L, rot), dtype, 1.0, 1), arr((cb, L, rot), dtype, 1.0, 2)
    got = run("rotary", E(xs).transpose(1, 2), E(cos), E(sin))
    compare(got, t_rotary(T(xs).transpose(1, 2), T(cos), T(sin)), scale=1)
    # the CUDA kernel, and numpy's float32 override (numpy_nn.rotary), equal the composition bit for bit
    same(got, composition("rotary", E(xs).transpose(1, 2), E(cos), E(sin)))


def t_rope(pos, inv, scale, dtype):
    """transformers' rotary embedding (LlamaRotaryEmbedding.forward) in torch: cos, sin of cat(freqs, freqs)."""
    freqs = torch.from_numpy(pos).float()[..., None] * torch.from_numpy(inv)
    emb = torch.cat([freqs, freqs], -1)
    return (emb.cos() * scale).to(TORCH[dtype]), (emb.sin() * scale).to(TORCH[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pos,half,scale", [([[5]], 64, 1.0), ([[0, 1, 2, 4095]], 64, 1.0), ([[7], [300]], 20, 1.0),
                                            ([[3, 2048, 131071]], 32, 0.5), ([[1]], 1, 1.0)])
def test_rope(dtype, pos, half, scale):
    pos = np.array(pos, np.int64)
    inv = (1.0 / 10000.0 ** (np.arange(0, 2 * half, 2, dtype=np.float32) / np.float32(2 * half))).astype(np.float32)
    b = engine.backend(DEVICE)
    p, i = E(pos), E(inv)
    dt = engine.dtype.get(dtype)
    got = [engine.Tensor._wrap(a, b, dt) for a in b.rope(p.array, i.array, scale, dt)]
    want = [engine.Tensor._wrap(a, b, dt) for a in FusedOps.rope(b, p.array, i.array, scale, dt)]
    same(got[0], want[0])  # the one launch equals the composition bit for bit
    same(got[1], want[1])
    tc, ts = t_rope(pos, inv, scale, dtype)
    compare(got[0], tc, scale=4)
    compare(got[1], ts, scale=4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("q,kp,window", [([5], range(8), None), ([5], range(8), 3), ([0, 1, 2], [2, -1, 0, 1, 7], None),
                                         ([300], range(520), 64), ([9, 10], [-1] * 4, 2)])
def test_causal_mask(dtype, q, kp, window):
    q, kp = np.array(q, np.int64), np.array(list(kp), np.int64)
    ok = (kp[None] <= q[:, None]) & (kp[None] >= 0) & ((kp[None] > q[:, None] - window) if window else True)
    lo = {"float32": np.finfo(np.float32).min, "float16": -65504.0,
          "bfloat16": float(ml_dtypes.finfo(NP["bfloat16"]).min)}
    want = np.where(ok, 0.0, lo[dtype])[None].astype(NP[dtype])
    b, dt = engine.backend(DEVICE), engine.dtype.get(dtype)
    got = b.causal_mask(E(q).array, E(kp).array, window, dt)
    np.testing.assert_array_equal(b.to_numpy(got), want)
    np.testing.assert_array_equal(b.to_numpy(FusedOps.causal_mask(b, E(q).array, E(kp).array, window, dt)), want)


@pytest.mark.parametrize("B,cols,n", [(1, 64, 0), (1, 64, 63), (3, 10, 4)])
def test_advance(B, cols, n):
    b = engine.backend(DEVICE)
    toks = np.arange(B, dtype=np.int64) * 7 + 3
    for fn in (b.advance, lambda *a: FusedOps.advance(b, *a)):
        tok, out, nn = E(np.zeros((B, 1), np.int64)), E(np.full((B, cols), -5, np.int64)), E(np.array([n], np.int64))
        fn(E(toks).array, tok.array, out.array, nn.array)
        want = np.full((B, cols), -5, np.int64)
        want[:, n] = toks
        np.testing.assert_array_equal(tok.numpy(), toks[:, None])
        np.testing.assert_array_equal(out.numpy(), want)
        assert int(nn.item()) == n + 1


def t_attention(q, k, v, mask, scale):
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = (q @ k.transpose(-1, -2)) * scale
    if mask is not None:
        s = s + mask
    p = torch.softmax(s, -1, dtype=torch.float32).to(q.dtype)
    o = p @ v
    b, h, L, d = o.shape
    return o.transpose(1, 2).reshape(b, L, h * d)


def _mask(B, S, pos, window, dtype, hole=False):
    """(B, 1, 1, S) additive mask: row b reads positions up to pos[b] (the last `window` of them if window), less
    the two at pos[b] // 2 when hole."""
    kp = np.arange(S)[None, :]
    ok = (kp <= pos[:, None]) & ((kp > pos[:, None] - window) if window else True)
    if hole:
        ok &= (kp != pos[:, None] // 2) & (kp != pos[:, None] // 2 + 1)
    m = np.where(ok, 0.0, np.finfo(np.float32).min if dtype == "float32" else -65504.0 if dtype == "float16"
                 else float(np.finfo(np.float32).min))
    return m.astype(NP[dtype]).reshape(B, 1, 1, S)


def _decode_mask(B, S, kind, dtype):
    """A static KV cache's mask, row b holding positions 0 .. S // 2 + 3 b: None; "causal" (those live);
    "window" (their last 64 live: earlier chunks wholly masked); "hole" (causal less two in the middle)."""
    if kind is None:
        return None
    return _mask(B, S, np.array([S // 2 + 3 * b for b in range(B)]), 64 if kind == "window" else 0, dtype,
                 hole=kind == "hole")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,Hq,Hkv,S,D,mask", [
    (1, 4, 2, 20, 64, "causal"), (2, 8, 8, 300, 128, "window"), (1, 4, 4, 77, 32, None), (2, 6, 2, 129, 96, "causal"),
    (1, 4, 1, 1, 128, None),  # one cached position, GQA 4:1
    (2, 8, 2, 1, 32, "causal"),  # one position, masked
    (1, 8, 2, 100, 256, "hole"),  # fewer positions than a chunk, two dead in the middle of the live ones
    (2, 4, 1, 520, 128, "causal"),  # the Llama decode's static cache: half of it live, whole chunks masked
    (1, 4, 1, 1000, 96, "window"),  # chunks before the window wholly masked
    (2, 4, 4, 385, 256, "hole"),  # S not a multiple of the chunk, D = 256
    (1, 2, 1, 33000, 64, "window"),  # more chunks (258) than the combine's 128 at a time
])
def test_decode_attention(dtype, B, Hq, Hkv, S, D, mask):
    q, k, v = arr((B, Hq, 1, D), dtype), arr((B, Hkv, S, D), dtype, 1, 1), arr((B, Hkv, S, D), dtype, 1, 2)
    m = _decode_mask(B, S, mask, dtype)
    if ON_CUDA:  # the rows are the decode kernel's (cupy_kernels.attention_ok), not a fallback's
        from engine.backends import cupy_kernels
        assert cupy_kernels.attention_ok(*(E(a).array for a in (q, k, v)), None if m is None else E(m).array)
    got = run("attention", E(q), E(k), E(v), None if m is None else E(m), D ** -0.5)
    args = [T(q), T(k), T(v), None if m is None else T(m)]
    ref = t_attention(*[a.double() if a is not None else None for a in args], D ** -0.5)
    compare_reduced(got, t_attention(*args, D ** -0.5), ref, scale=2)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("B,Hq,Hkv,S,D,masked", [(1, 6, 6, 1500, 64, False), (2, 4, 2, 1, 8, True), (2, 4, 2, 1, 8, False),
                                                 (1, 4, 4, 7, 32, True), (2, 6, 3, 33, 16, True)])
def test_decode_attention_keys_transposed(dtype, B, Hq, Hkv, S, D, masked):
    """One query row (numpy: _attention_one) against keys laid out by attention_keys (numpy: each head's K^T
    contiguous), a length-1 cache, masks, a power-of-two scale; float64 takes the composition."""
    from engine.nn.attention import attention, attention_keys
    q, k, v = arr((B, Hq, 1, D), dtype), arr((B, Hkv, S, D), dtype, 1, 1), arr((B, Hkv, S, D), dtype, 1, 2)
    mask = _mask(B, S, np.array([S // 2 + b for b in range(B)]), 0, dtype) if masked else None
    kt = attention_keys(E(k))
    np.testing.assert_array_equal(kt.numpy(), k)
    got = attention(E(q), kt, E(v), None if mask is None else E(mask), 0.125)
    want = t_attention(T(q).double(), T(k).double(), T(v).double(), None if mask is None else T(mask).double(), 0.125)
    compare(got.float(), want.float(), scale=2)


@pytest.mark.parametrize("L,masked", [(1, False), (1, True), (3, True), (40, False)])
def test_attention_power_of_two_scale_same_bits(L, masked):
    """A power-of-two scale (numpy: q scaled in the op when q is smaller than the scores) gives the bits of
    scaling q first and attending with scale 1 (Whisper's order), one query row or several."""
    from engine.nn.attention import attention
    B, Hq, Hkv, S, D = 2, 4, 2, 24, 16
    q, k, v = arr((B, Hq, L, D), "float32"), arr((B, Hkv, S, D), "float32", 1, 1), arr((B, Hkv, S, D), "float32", 1, 2)
    mask = E(_causal(B, L, S, "float32")) if masked else None
    for scale in (0.125, 4.0):
        got = attention(E(q), E(k), E(v), mask, scale)
        want = attention(E(q) * scale, E(k), E(v), mask, 1.0)
        same(got, want)


def _causal(B, L, S, dtype):
    """(B, 1, L, S) additive causal mask: query l (at position S - L + l) reads keys up to itself."""
    low = -65504.0 if dtype == "float16" else float(np.finfo(np.float32).min)
    ok = np.arange(S)[None, :] <= (S - L + np.arange(L))[:, None]
    return np.broadcast_to(np.where(ok, 0.0, low), (B, 1, L, S)).astype(NP[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,Hq,Hkv,L,S,D", [(1, 4, 2, 7, 7, 64), (2, 4, 4, 33, 40, 32), (1, 2, 1, 16, 1100, 64)])
def test_prefill_attention(dtype, B, Hq, Hkv, L, S, D):
    """Several query rows (prefill): on CUDA cuBLAS around the fused scale + mask + softmax kernel
    (a warp a row up to 1024 positions, a block a row beyond)."""
    q, k, v = arr((B, Hq, L, D), dtype), arr((B, Hkv, S, D), dtype, 1, 1), arr((B, Hkv, S, D), dtype, 1, 2)
    mask = _causal(B, L, S, dtype)
    got = run("attention", E(q), E(k), E(v), E(mask), D ** -0.5)
    args = [T(q), T(k), T(v), T(mask)]
    ref = t_attention(*[a.double() for a in args], D ** -0.5)
    compare_reduced(got, t_attention(*args, D ** -0.5), ref, scale=2)


@pytest.mark.parametrize("Hq,Hkv,mask_b", [(4, 4, 5), (4, 2, 5), (4, 4, 1), (2, 1, None)])
def test_attention_batch_blocks(Hq, Hkv, mask_b, monkeypatch):
    """numpy: the batch in blocks of whole rows (2 of 5 rows a block here, the last block short), q as the
    models' transposed view, a per-row padding mask or one mask for every row."""
    from engine.backends.numpy_attention import AttentionKernels
    B, L, S, D = 5, 6, 7, 8
    monkeypatch.setattr(AttentionKernels, "ATTENTION_ROWS", 2 * Hq * L * S)
    q = arr((B, L, Hq, D), "float32")
    k, v = arr((B, Hkv, S, D), "float32", 1, 1), arr((B, Hkv, S, D), "float32", 1, 2)
    mask = None
    if mask_b:
        mask = np.zeros((mask_b, 1, L, S), np.float32)
        for i in range(mask_b):  # row i: its last 1 + i % 3 keys padded
            mask[i, ..., S - 1 - i % 3:] = np.finfo(np.float32).min
    got = run("attention", E(q).transpose(1, 2), E(k), E(v), None if mask is None else E(mask), D ** -0.5)
    args = [T(q).transpose(1, 2), T(k), T(v), None if mask is None else T(mask)]
    compare(got, t_attention(*args, D ** -0.5), scale=2)


@pytest.mark.parametrize("Hq,Hkv,L", [(4, 4, 6), (4, 2, 9), (2, 2, 1)])
def test_attention_padding_mask_rows_without_padding(Hq, Hkv, L, monkeypatch):
    """numpy: a padding mask as the models pass it, (B, 1, L, S) expanded from (B, 1, 1, S), rows 1 and 3 padded
    and the others all zero (their blocks skip the add), in blocks of 2 batch rows."""
    from engine.backends.numpy_attention import AttentionKernels
    B, S, D = 5, 7, 8
    monkeypatch.setattr(AttentionKernels, "ATTENTION_ROWS", 2 * Hq * L * S)
    q = arr((B, L, Hq, D), "float32")
    k, v = arr((B, Hkv, S, D), "float32", 1, 1), arr((B, Hkv, S, D), "float32", 1, 2)
    mask = np.zeros((B, 1, 1, S), np.float32)
    mask[1, ..., 4:] = mask[3, ..., 6:] = np.finfo(np.float32).min
    got = run("attention", E(q).transpose(1, 2), E(k), E(v), E(mask).expand(B, 1, L, S), D ** -0.5)
    compare(got, t_attention(T(q).transpose(1, 2), T(k), T(v), T(mask).expand(B, 1, L, S), D ** -0.5), scale=2)


@pytest.mark.parametrize("Hq,Hkv,L,whole", [(4, 2, 40, 1 << 26), (4, 2, 40, 16), (2, 2, 9, 1 << 26)])
def test_attention_query_blocks(Hq, Hkv, L, whole, monkeypatch):
    """numpy: a batch row's scores past ATTENTION_ROWS go a kv head's block of query rows at a time (16 rows a
    block here, the last short), with a full causal mask: copied transposed for the transposed-scores layout, or
    (past ATTENTION_WHOLE, or too few rows for it) added to row-major scores."""
    from engine.backends.numpy_attention import AttentionKernels
    B, S, D = 2, 50, 8
    monkeypatch.setattr(AttentionKernels, "ATTENTION_ROWS", (Hq // Hkv) * 16 * S)
    monkeypatch.setattr(AttentionKernels, "ATTENTION_WHOLE", whole)
    q, k, v = arr((B, Hq, L, D), "float32"), arr((B, Hkv, S, D), "float32", 1, 1), arr((B, Hkv, S, D), "float32", 1, 2)
    mask = _causal(B, L, S, "float32")
    got = run("attention", E(q), E(k), E(v), E(mask), D ** -0.5)
    compare(got, t_attention(T(q), T(k), T(v), T(mask), D ** -0.5), scale=2)


# ---- choosing tokens: the backend's `sample` against engine.sampling on the host ----------------------------------
def _sample(logits, temperature, top_k=None, top_p=None, seen=None, penalty=1.0, seed=3, counter=0):
    x = E(logits)
    c = engine.tensor(np.array([counter], np.int64), device=DEVICE)
    s = E(seen) if seen is not None else None
    out = x.backend.sample(x.array, None if s is None else s.array, penalty, temperature, top_k, top_p, seed, c.array)
    assert int(c.item()) == counter + 1  # one draw advances the counter once
    return engine.Tensor._wrap(out, x.backend, engine.int64).numpy()


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_greedy_and_penalty(dtype):
    logits = arr((3, 500), dtype, 2.0)
    np.testing.assert_array_equal(_sample(logits, 0.0), logits.astype(np.float32).argmax(-1))
    seen = RNG.random((3, 500)) < 0.3
    want = sampling.sample(logits.astype(np.float32), seen, 1.7)
    np.testing.assert_array_equal(_sample(logits, 0.0, seen=seen, penalty=1.7), want)


@pytest.mark.parametrize("k,p,t", [(None, None, 1.0), (20, None, 0.7), (None, 0.8, 1.3), (50, 0.9, 0.9), (1, None, 2.0)])
def test_sample_draws_as_the_host(k, p, t):
    logits = arr((4, 300), "float32", 3.0, 7)
    for counter in range(6):
        want = sampling.sample(logits, None, 1.0, t, k, p, seed=11, counter=counter)
        np.testing.assert_array_equal(_sample(logits, t, k, p, seed=11, counter=counter), want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T_,E_,k", [(1, 4, 2), (3, 8, 2), (2, 4, 3)])
def test_moe(dtype, T_, E_, k):
    H, I = 64, 96
    x = arr((T_, H), dtype)
    wg, wu, wd = ([arr(s, dtype, 0.1, seed=10 * j + e) for e in range(E_)] for j, s in enumerate([(I, H), (I, H), (H, I)]))
    experts = np.stack([RNG.choice(E_, k, replace=False) for _ in range(T_)]).astype(np.int64)
    w = RNG.random((T_, k)).astype(np.float32)
    w /= w.sum(-1, keepdims=True)
    b = E(x).backend
    out = b.moe(E(x).array, E(w).array, E(experts).array, *[[E(a).array for a in ws] for ws in (wg, wu, wd)], "silu",
                engine.dtype.get(dtype))
    got = engine.Tensor._wrap(out, b, engine.dtype.get(dtype))
    ref = torch.zeros(T_, H, dtype=TORCH[dtype])
    for e in range(E_):  # transformers' order: experts ascending, each token's weighted output added
        for t in range(T_):
            for j in range(k):
                if experts[t, j] == e:
                    xt = T(x)[t:t + 1]
                    y = TF.linear(TF.silu(TF.linear(xt, T(wg[e]))) * TF.linear(xt, T(wu[e])), T(wd[e]))
                    ref[t] = ref[t] + (y[0] * float(w[t, j])).to(TORCH[dtype])
    compare(got, ref, scale=4)
    if ON_CUDA:
        comp = FusedOps.moe(b, E(x).array, E(w).array, E(experts).array,
                            *[[E(a).array for a in ws] for ws in (wg, wu, wd)], "silu", engine.dtype.get(dtype))
        same(got, engine.Tensor._wrap(comp, b, engine.dtype.get(dtype)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,ns,K,bias,style", [(1, (64, 32, 32), 128, False, "llama"), (3, (96, 48), 64, True, None),
                                                  (8, (32, 64, 32), 256, True, "gemma")])
def test_linear_group(dtype, rows, ns, K, bias, style):
    x = arr((rows, K), dtype)
    ws = [arr((n, K), dtype, 0.1, i + 1) for i, n in enumerate(ns)]
    bs = [arr((n,), dtype, 0.1, 10 + i) if bias else None for i, n in enumerate(ns)]
    nw = arr((K,), dtype, 0.5, 9) if style else None
    b = E(x).backend
    norm = (E(nw).array, 1e-5, style) if style else None
    outs = b.linear_group(E(x).array, [E(w).array for w in ws], [None if v is None else E(v).array for v in bs],
                          engine.dtype.get(dtype), norm=norm)
    for o, w, bb in zip(outs, ws, bs):
        got = engine.Tensor._wrap(o, b, engine.dtype.get(dtype)) if o.flags.c_contiguous else \
            engine.Tensor._wrap(o.copy(), b, engine.dtype.get(dtype))
        one = run("linear_fused", E(x), E(w), None if bb is None else E(bb), norm=norm)
        same(got, one)  # each member equals its own linear, bit for bit


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("rows,N,K", [(8, 200, 4096), (5, 4096, 96), (6, 33, 11008)])
def test_gemv_tensor_cores_agree_with_the_fma_kernel(dtype, rows, N, K, monkeypatch):
    """5..8 rows on tensor cores (mma.sync) against the FMA GEMV and torch in float64: the same products,
    summed in another order."""
    from engine.backends import cupy_kernels as K_
    from engine.backends import cupy_lt
    monkeypatch.setitem(cupy_lt.LT_CONFIG, "enabled", False)  # these rows would go to cuBLASLt
    x, w, b = arr((rows, K), dtype), arr((N, K), dtype, 0.05, 1), arr((N,), dtype, 0.1, 2)
    got = run("linear", E(x), E(w), E(b))
    monkeypatch.setitem(K_.GEMV_CONFIG, "mma_rows", None)
    fma = run("linear", E(x), E(w), E(b))
    ref = TF.linear(T(x).double(), T(w).double(), T(b).double())
    compare_reduced(got, TF.linear(T(x), T(w), T(b)), ref, scale=4)
    compare_reduced(fma, TF.linear(T(x), T(w), T(b)), ref, scale=4)


@pytest.mark.cuda
def test_gemv_shared_memory_limit_survives_a_smaller_k():
    """One kernel serves several K: a launch at a small K must not lower the shared-memory limit that a
    larger K set (seen: the 8-row decode's down_proj, K 11008, failed after a K 4096 launch)."""
    for K in (11008, 4096, 11008):
        x, w = arr((8, K), "float16"), arr((16, K), "float16", 0.05, 1)
        got = run("linear", E(x), E(w), None)
        compare_reduced(got, TF.linear(T(x), T(w)), TF.linear(T(x).double(), T(w).double()), scale=4)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("rows,N,K,bias", [(4, 200, 4096, True), (8, 4096, 96, False), (16, 33, 11008, True),
                                           (5, 11008, 4096, False)])
def test_cublaslt_rows_agree_with_torch_and_replay_in_a_graph(dtype, rows, N, K, bias):
    """2..16 rows through cuBLASLt (nvmath-python) against torch in float64, and the same call captured
    in a CUDA graph and replayed equals the eager launch bit for bit."""
    import cupy

    from engine.backends import cupy_lt
    if not cupy_lt.available():
        pytest.skip(cupy_lt.why_not())
    x, w, b = arr((rows, K), dtype), arr((N, K), dtype, 0.05, 1), arr((N,), dtype, 0.1, 2) if bias else None
    got = run("linear", E(x), E(w), None if b is None else E(b))
    tb = None if b is None else T(b)
    compare_reduced(got, TF.linear(T(x), T(w), tb), TF.linear(T(x).double(), T(w).double(),
                                                                None if tb is None else tb.double()), scale=4)
    xa, wa = E(x).array, E(w).array
    ba = None if b is None else E(b).array
    out = cupy.empty((rows, N), xa.dtype)
    poison = out.view(cupy.uint16)  # 0xFFFF is a NaN in float16 and bfloat16 alike
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        cupy_lt.linear(xa, wa, out, bias=ba)  # planned eagerly first, as a decode step's warm-up does
        poison.fill(0xFFFF)
        stream.begin_capture()
        cupy_lt.linear(xa, wa, out, bias=ba)
        graph = stream.end_capture()
        graph.launch(stream)
    stream.synchronize()
    np.testing.assert_array_equal(cupy.asnumpy(out).view(np.uint16), cupy.asnumpy(got.array).view(np.uint16))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("sa,sb", [((32, 512, 256), (32, 256, 520)), ((2, 16, 64, 40), (2, 16, 40, 9)),
                                   ((3, 7, 40), (40, 9))])
def test_captured_batched_matmul_agrees_with_torch_and_replays(dtype, sa, sb):
    """Inside a capture a 16-bit (batched, broadcast) product runs cuBLASLt where nvmath-python serves it, the
    tiled kernel elsewhere: the replays agree with torch against float64 and equal the rehearsal bit for bit."""
    from engine.backends import cupy_lt
    from engine.capture import Captured
    a, b = arr(sa, dtype, 0.5, 3), arr(sb, dtype, 0.5, 4)
    step = Captured(lambda x, y: x @ y)
    outs = [step(E(a), E(b)).clone() for _ in range(5)]  # eager, recorded, rehearsed then captured, 2 replays
    compare_reduced(outs[-1], T(a) @ T(b), T(a).double() @ T(b).double(), scale=4)
    for o in outs[3:]:
        np.testing.assert_array_equal(o.float().numpy(), outs[2].float().numpy())
    if cupy_lt.available() and len(sb) == len(sa):  # same-batch operands: nvmath takes them
        assert any(k[0] == "matmul" and k[2][-2:] == sa[-2:] and v is not None for k, v in cupy_lt._PLANS.items())


# ---- group_norm (+ activation) and convolution (Stable Diffusion's ResnetBlock2D, YOLO) ------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,groups,act", [((2, 64, 8, 8), 32, "silu"), ((1, 6, 5, 7), 3, None),
                                              ((2, 32, 300), 8, "silu"), ((1, 16, 4, 4), 16, "gelu"),
                                              ((1, 256, 96, 96), 32, "silu"), ((1, 64, 128, 128), 32, None)])
def test_group_norm_act(dtype, shape, groups, act):
    """group_norm_act against torch (group_norm then the activation, each rounded), and against the plain
    composition: equal on numpy (the same ops in place); within a few ulp on CUDA (one block reduces each
    group in another order; the last two shapes have few groups of many elements: chunked statistics)."""
    x, w, b = arr(shape, dtype, 2.0), arr((shape[1],), dtype, 0.5, 1), arr((shape[1],), dtype, 0.5, 2)
    got = run("group_norm_act", E(x), groups, E(w), E(b), 1e-5, act)
    ref = composition("group_norm_act", E(x), groups, E(w), E(b), 1e-5, act)
    t_act = {None: lambda y: y, "silu": TF.silu, "gelu": TF.gelu}[act]
    want = t_act(TF.group_norm(T(x), groups, T(w), T(b), 1e-5))
    want64 = t_act(TF.group_norm(T(x).double(), groups, T(w).double(), T(b).double(), 1e-5))
    against_torch(got, want, want64, dtype)
    if not ON_CUDA:
        same(got, ref)
    else:
        # the kernel against the plain composition (torch's side of compare takes a torch tensor)
        compare(got.float(), torch.from_numpy(ref.float().numpy()), scale=4 if dtype == "float32" else 2 ** 8)
    y = engine.functional.group_norm(E(x), groups, E(w), E(b), 1e-5, act=act)
    np.testing.assert_array_equal(y.float().numpy(), got.float().numpy())


def test_group_norm_act_refuses_an_unknown_activation():
    with pytest.raises(ValueError, match="act must be None or one of silu, gelu_tanh, gelu, got 'relu'"):
        engine.functional.group_norm(E(arr((1, 4, 2), "float32")), 2, act="relu")


CONV_CASES = [((2, 16, 12, 10), (24, 16, 3, 3), 1, 1, 1), ((1, 8, 17, 9), (8, 8, 3, 3), 2, 1, 1),
              ((1, 40, 9, 9), (70, 40, 1, 1), 1, 0, 1), ((2, 5, 11, 13), (3, 5, 5, 3), 1, 2, 2),
              ((1, 64, 33, 31), (130, 64, 3, 3), 1, 1, 1), ((1, 3, 20, 20), (16, 3, 3, 3), 2, 1, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs,ws,stride,pad,dil", CONV_CASES[:4] + [((1, 8, 130, 128), (8, 8, 3, 3), 1, 1, 1),
                                                     ((1, 3, 40, 40), (16, 3, 3, 3), 2, 1, 1), ((2, 6, 16, 16), (10, 6, 1, 1), 1, 0, 1)])
def test_conv_act(dtype, xs, ws, stride, pad, dil):
    """conv_act (F.conv2d(act="silu")) against torch's conv2d then SiLU and against the composition:
    equal to it on numpy (the SiLU runs in place, band by band in the banded conv: the fifth case; over the
    negated products of im2col and 1x1 convs with many positions, of the 3x3 rows path: the last two, the first)."""
    x, w, b = arr(xs, dtype), arr(ws, dtype, 0.2, 1), arr((ws[0],), dtype, 0.1, 2)
    got = engine.functional.conv2d(E(x), E(w), E(b), stride, pad, dil, act="silu")
    ref = composition("conv_act", E(x), E(w), E(b), (stride,) * 2, [(pad, pad)] * 2, (dil,) * 2, 1, "silu")
    want = TF.silu(TF.conv2d(T(x), T(w), T(b), stride, pad, dil))
    want64 = TF.silu(TF.conv2d(T(x).double(), T(w).double(), T(b).double(), stride, pad, dil))
    against_torch(got, want, want64, dtype)
    if not ON_CUDA:
        same(got, ref)
    with pytest.raises(ValueError, match="act must be None or one of silu, gelu_tanh, gelu, got 'tanh'"):
        engine.functional.conv2d(E(x), E(w), act="tanh")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("xs,ws,stride,pad,dil", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_implicit_gemm(dtype, xs, ws, stride, pad, dil, bias, monkeypatch):
    """The tensor-core implicit-GEMM conv (cupy backend, CONV_IGEMM "always") against the im2col +
    cuBLAS composition and torch in float64: the same products summed in another order."""
    if not ON_CUDA:
        pytest.skip("the tensor-core conv kernel runs on CUDA only (ENGINE_DEVICE=cuda)")
    from engine.backends import cupy_cudnn
    from engine.backends.cupy_backend import CupyBackend
    monkeypatch.setitem(cupy_cudnn.CONFIG, "enabled", False)  # the engine's own convs (cuDNN has its test file)
    x, w, b = arr(xs, dtype), arr(ws, dtype, 0.1, 1), arr((ws[0],), dtype, 0.1, 2) if bias else None
    conv = lambda: engine.functional.conv2d(E(x), E(w), None if b is None else E(b), stride, pad, dil)  # noqa: E731
    monkeypatch.setattr(CupyBackend, "CONV_IGEMM", "never")
    plain = conv()
    monkeypatch.setattr(CupyBackend, "CONV_IGEMM", "always")
    got = conv()
    tb = None if b is None else T(b)
    want = TF.conv2d(T(x), T(w), tb, stride, pad, dil)
    want64 = TF.conv2d(T(x).double(), T(w).double(), None if b is None else tb.double(), stride, pad, dil)
    assert got.shape == plain.shape == tuple(want.shape) and got.dtype is plain.dtype
    compare_reduced(got, want, want64, scale=4)
    compare_reduced(plain, want, want64, scale=4)
    fused = engine.functional.conv2d(E(x), E(w), None if b is None else E(b), stride, pad, dil, act="silu")
    same(fused, got.silu())  # the epilogue's SiLU rounds as the eager op does


@pytest.mark.cuda
def test_conv2d_implicit_gemm_in_a_captured_graph(monkeypatch):
    """Inside a capture (CONV_IGEMM "capture", the default) a ResnetBlock-like step of group_norm + SiLU
    and a 3x3 conv replays equal to its eager run with the kernel forced."""
    if not ON_CUDA:
        pytest.skip("CUDA graph capture needs a GPU (ENGINE_DEVICE=cuda)")
    from engine.backends import cupy_cudnn
    from engine.backends.cupy_backend import CupyBackend
    monkeypatch.setitem(cupy_cudnn.CONFIG, "enabled", False)
    from engine.capture import Captured
    x, w, b = E(arr((2, 32, 16, 16), "float16")), E(arr((32, 32, 3, 3), "float16", 0.1, 1)), E(arr((32,), "float16"))
    gw, gb = E(arr((32,), "float16", 0.5, 2)), E(arr((32,), "float16", 0.5, 3))

    def step(x):
        return engine.functional.conv2d(engine.functional.group_norm(x, 8, gw, gb, 1e-5, act="silu"), w, b, 1, 1)

    old = CupyBackend.CONV_IGEMM
    try:
        CupyBackend.CONV_IGEMM = "always"
        eager = step(x)
        CupyBackend.CONV_IGEMM = "capture"
        graph = Captured(step)
        for _ in range(3):  # eager, recorded, captured
            graph(x)
        replay = graph(x)  # a graph replay
    finally:
        CupyBackend.CONV_IGEMM = old
    np.testing.assert_array_equal(replay.float().numpy(), eager.float().numpy())


@pytest.mark.parametrize("dtype", DTYPES)
def test_capture_fuses_group_norm_and_silu(dtype):
    """engine.capture's plan runs group_norm -> silu as one group_norm_act (where the activation is the
    norm's only consumer; a norm read twice stays unfused), and the planned step equals the eager one."""
    from engine.capture import Captured
    from engine.capture_plan import NormAct
    x, w, b = E(arr((2, 16, 6, 6), dtype)), E(arr((16,), dtype, 0.5, 1)), E(arr((16,), dtype, 0.5, 2))
    F_ = engine.functional

    def step(x):
        h = F_.silu(F_.group_norm(x, 4, w, b, 1e-5))  # fused
        n = F_.group_norm(h, 4, w, b, 1e-5)  # read by silu and by the add: not fused
        return F_.silu(n) + n

    eager = step(x).float().numpy()
    cap = Captured(step)
    outs = [cap(x).float().numpy() for _ in range(4)]
    kinds = [type(v).__name__ for v in cap.the_plan.values()]
    assert kinds.count("NormAct") == 1 and sum(isinstance(v, NormAct) for v in cap.the_plan.values()) == 1
    for o in outs:
        np.testing.assert_array_equal(o, eager)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis,fits", [((37, 768), -1, True), ((2, 320, 64, 64), 1, True), ((3, 5, 16), 1, True),
                                             ((4, 13), -1, False), ((2, 6, 3, 3), 1, False)])
def test_bias_fill(dtype, shape, axis, fits):
    """cupy_kernels.bias_fill (a bias preloaded for cuBLASLt and cuDNN to add with beta = 1) against the
    broadcast it replaces; a layout it does not take is refused and left untouched."""
    if not ON_CUDA:
        pytest.skip("bias_fill is a CUDA kernel of the cupy backend: run with ENGINE_DEVICE=cuda on a GPU")
    import cupy

    from engine.backends import cupy_kernels as K
    b = E(arr((shape[axis],), dtype, seed=3)).array
    out = cupy.zeros(shape, b.dtype)
    assert K.bias_fill(out, b, axis) is fits
    want = np.broadcast_to(cupy.asnumpy(b).reshape([-1 if i == axis % len(shape) else 1 for i in range(len(shape))]),
                           shape) if fits else np.zeros(shape, cupy.asnumpy(b).dtype)
    np.testing.assert_array_equal(cupy.asnumpy(out), want)
