"""Fewer launches per decode step: the rotary_cache fused op (rotary of q and k + the k/v cache writes,
found by engine.capture's plan in every LLM family) against its plain composition and torch, the decode
attention with the combine folded into its one launch (CUDA) against the two-launch kernels bit for bit, and
captured decodes that equal the uncaptured ones token for token and cache slot for cache slot."""
import numpy as np
import pytest
import torch

import engine
from engine import models
from engine.backends.fused import FusedOps
from engine.capture import Captured
from engine.capture_plan import QOut, RotaryCache
from engine.generation import Decoder, generate
from helpers import DEVICE, NP, TORCH, needs_device

pytestmark = needs_device
ON_CUDA = DEVICE.type == "cuda"
DTYPES = ["float32", "float16", "bfloat16"]
FAMILIES = ["llama", "mistral", "qwen2", "gemma", "phi3", "mixtral"]


def arr(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32).astype(NP[dtype])


def T(a):
    name = "bfloat16" if a.dtype == NP["bfloat16"] else str(a.dtype)
    return torch.from_numpy(np.asarray(a, np.float32)).to(TORCH[name])


def t_rotary(x, cos, sin_signed):  # transformers' x * cos + rotate_half(x) * sin, sin's sign folded in
    rot = cos.shape[-1]
    c, s, xr = cos[:, None], sin_signed[:, None], x[..., :rot]
    return torch.cat([xr * c + torch.cat([xr[..., rot // 2:], xr[..., :rot // 2]], -1) * s, x[..., rot:]], -1)


def rotary_cache_case(dtype, B, Hq, Hkv, L, D, rot, cb, S, slots, with_q, fn):
    """fn(backend, arrays...) runs rotary_cache on fresh caches; -> (q_rot, k_cache, v_cache) as float arrays."""
    b = engine.backend(DEVICE)
    qkv = arr((B, L, Hq + 2 * Hkv, D), dtype)  # one (B, L, heads, D) projection, viewed per head as the models do
    cos, sin = arr((cb, L, rot), dtype, 1), arr((cb, L, rot), dtype, 2)
    x = engine.tensor(qkv, device=DEVICE).transpose(1, 2)  # (B, heads, L, D), strided
    q, k, v = x[:, :Hq], x[:, Hq:Hq + Hkv], x[:, Hq + Hkv:]
    kc, vc = (engine.tensor(arr((B, Hkv, S, D), dtype, s), device=DEVICE) for s in (3, 4))
    idx = engine.tensor(np.array(slots, np.int64), device=DEVICE)
    out = fn(b, q.array if with_q else None, k.array, v.array, engine.tensor(cos, device=DEVICE).array,
             engine.tensor(sin, device=DEVICE).array, kc.array, vc.array, idx.array, engine.dtype.get(dtype))
    f = lambda a: np.asarray(b.to_numpy(a), np.float32)  # noqa: E731
    return (f(out) if with_q else None), f(kc.array), f(vc.array), (qkv, cos, sin)


ROTARY_CASES = [  # B, Hq, Hkv, L, D, rot, cb, S, slots, with_q
    (1, 4, 2, 1, 64, 64, 1, 24, [7], True),  # a decode step, GQA
    (2, 3, 3, 1, 96, 48, 2, 16, [15], True),  # partial rotary (Phi-3 style), cos per batch row
    (1, 2, 1, 3, 128, 128, 1, 8, [5, 6, 7], True),  # three new tokens
    (2, 4, 2, 2, 32, 32, 1, 6, [4, 1], False),  # a ring's slots out of order; the writes alone
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,Hq,Hkv,L,D,rot,cb,S,slots,with_q", ROTARY_CASES)
def test_rotary_cache_against_torch(dtype, B, Hq, Hkv, L, D, rot, cb, S, slots, with_q):
    got_q, got_k, got_v, (qkv, cos, sin) = rotary_cache_case(dtype, B, Hq, Hkv, L, D, rot, cb, S, slots, with_q,
                                                             lambda b, *a: b.rotary_cache(*a))
    x = T(qkv).transpose(1, 2)
    kc, vc = T(arr((B, Hkv, S, D), dtype, 3)), T(arr((B, Hkv, S, D), dtype, 4))
    kc[:, :, slots] = t_rotary(x[:, Hq:Hq + Hkv], T(cos), T(sin))
    vc[:, :, slots] = x[:, Hq + Hkv:]
    np.testing.assert_array_equal(got_k, kc.float().numpy())  # transformers' rounding op by op: equal
    np.testing.assert_array_equal(got_v, vc.float().numpy())
    if with_q:
        np.testing.assert_array_equal(got_q, t_rotary(x[:, :Hq], T(cos), T(sin)).float().numpy())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,Hq,Hkv,L,D,rot,cb,S,slots,with_q", ROTARY_CASES)
def test_rotary_cache_equals_composition(dtype, B, Hq, Hkv, L, D, rot, cb, S, slots, with_q):
    """The backend's op (the one-launch kernel on CUDA) against FusedOps' composition, bit for bit."""
    case = (dtype, B, Hq, Hkv, L, D, rot, cb, S, slots, with_q)
    got = rotary_cache_case(*case, lambda b, *a: b.rotary_cache(*a))
    want = rotary_cache_case(*case, lambda b, *a: FusedOps.rotary_cache(b, *a))
    for g, w in zip(got[:3], want[:3]):
        if w is not None:
            np.testing.assert_array_equal(g, w)


@pytest.mark.cuda
@pytest.mark.parametrize("B,Hq,Hkv,L,D,rot,cb,S,slots,with_q", ROTARY_CASES)
def test_rotary_cache_kernel_takes_the_cases(B, Hq, Hkv, L, D, rot, cb, S, slots, with_q):
    """The equality above is the one-launch kernel's, not the composition's (the fallback)."""
    from engine.backends import cupy_decode

    def ok(b, q, k, v, cos, sin, kc, vc, idx, dt):
        assert cupy_decode.rotary_cache_ok(q, k, v, cos, sin, kc, vc, idx, dt.np_dtype)
        return b.rotary_cache(q, k, v, cos, sin, kc, vc, idx, dt)
    rotary_cache_case("float16", B, Hq, Hkv, L, D, rot, cb, S, slots, with_q, ok)


def test_rotary_cache_writes_into_q_out():
    b = engine.backend(DEVICE)
    q, k = engine.randn(1, 2, 1, 32, device=DEVICE), engine.randn(1, 1, 1, 32, device=DEVICE)
    cos, sin = engine.randn(1, 1, 32, device=DEVICE), engine.randn(1, 1, 32, device=DEVICE)
    kc, vc = engine.zeros(1, 1, 4, 32, device=DEVICE), engine.zeros(1, 1, 4, 32, device=DEVICE)
    slots = engine.tensor([2], dtype=engine.int64, device=DEVICE)
    q_out = engine.zeros(1, 2, 1, 32, device=DEVICE)
    got = b.rotary_cache(q.array, k.array, k.array, cos.array, sin.array, kc.array, vc.array, slots.array,
                         engine.float32, q_out=q_out.array)
    assert got is q_out.array
    want = b.rotary(q.array, cos.array, sin.array, engine.float32)
    np.testing.assert_array_equal(q_out.numpy(), b.to_numpy(want))
    np.testing.assert_array_equal(vc.numpy()[0, 0, 2], k.numpy()[0, 0, 0])


# ---- decode attention: the combine in the partial kernel's last block (CUDA) ---------------------------------------
def _mask(B, S, pos, window, dtype, hole=False):
    """(B, 1, 1, S) additive mask: row b reads positions up to pos[b] (the last `window` of them if window), less
    the two at pos[b] // 2 when hole."""
    kp = np.arange(S)[None, :]
    ok = (kp <= pos[:, None]) & ((kp > pos[:, None] - window) if window else True)
    if hole:
        ok &= (kp != pos[:, None] // 2) & (kp != pos[:, None] // 2 + 1)
    low = -65504.0 if dtype == "float16" else float(np.finfo(np.float32).min)
    return np.where(ok, 0.0, low).astype(NP[dtype]).reshape(B, 1, 1, S)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,Hq,Hkv,S,D,window,hole", [  # window None: no mask; 0: positions up to S // 2 + 3 b
    (1, 4, 2, 20, 64, None, False), (2, 8, 8, 300, 128, 64, False), (1, 4, 4, 77, 32, 0, False),
    (2, 6, 2, 129, 96, None, False), (1, 2, 1, 1000, 256, 40, False), (3, 4, 1, 4096, 128, None, False),
    (1, 4, 1, 1, 128, 0, False),  # one cached position
    (2, 32, 32, 520, 128, 0, False),  # the Llama-2-7B decode: a static cache of 520, half of it live
    (1, 8, 2, 127, 256, 0, True),  # fewer positions than a chunk, two dead in the middle
    (2, 4, 1, 385, 96, 64, True),  # GQA 4:1, S not a multiple of the chunk, window and hole
    (1, 2, 1, 33000, 64, 300, False),  # 258 chunks: the combine's two pieces of 128, live chunks in both
])
@pytest.mark.parametrize("cluster", [True, False])
def test_fused_attention_equals_two_launches(dtype, B, Hq, Hkv, S, D, window, hole, cluster, monkeypatch):
    """attn_fused, and attn_cluster where the chunks fit a cluster (sm_90+; chunks of 64 positions, or 128 past
    512), equal attn_partial + attn_combine in chunks of the same size bit for bit (masked rows, fully masked
    chunks that are skipped, no mask), twice in a row (the tickets reset themselves), and leave every ticket at 0."""
    import cupy

    from engine.backends import cupy_decode, cupy_kernels
    q, k, v = (cupy.asarray(arr(s, dtype, i)) for i, s in enumerate([(B, Hq, 1, D), (B, Hkv, S, D), (B, Hkv, S, D)]))
    mask = None if window is None else cupy.asarray(_mask(B, S, np.array([S // 2 + 3 * b for b in range(B)]), window,
                                                          dtype, hole))
    assert cupy_kernels.attention_ok(q, k, v, mask)
    monkeypatch.setitem(cupy_decode.CLUSTER_ATTENTION, "enabled", cluster)
    cc = cupy_decode.cluster_size(S)
    want = cupy.empty((B, 1, Hq * D), q.dtype)
    cupy_kernels.attention(q, k, v, mask, D ** -0.5, want, chunk=cc[1] if cc else cupy_kernels.ATTN_CHUNK)
    for _ in range(2):
        got = cupy.full((B, 1, Hq * D), 7, q.dtype)
        cupy_decode.attention(q, k, v, mask, D ** -0.5, got)
        np.testing.assert_array_equal(cupy.asnumpy(got).astype(np.float32), cupy.asnumpy(want).astype(np.float32))
    assert int(cupy_decode.counters(B * Hq, False).max()) == 0


# ---- the plan: every family's layers take one rotary_cache; captured decodes equal uncaptured ones ------------------
SMALL = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32, intermediate_size=192,
             num_hidden_layers=2)


def model(mt, dtype="float32", **over):
    kw = {**SMALL, **over}
    if mt == "phi3":
        kw.pop("head_dim")
    return models.from_preset(mt, "tiny", dtype=getattr(engine, dtype), device=DEVICE, **kw)


@pytest.mark.parametrize("mt,over", [(mt, {}) for mt in FAMILIES] + [("phi3", dict(partial_rotary_factor=0.5))])
def test_plan_fuses_rotary_and_cache_writes_of_every_layer(mt, over):
    dec = Decoder(model(mt, **over), 2, 24, capture=True)
    dec.prefill(engine.tensor([[1, 2, 3]] * 2, device=DEVICE))
    for _ in range(3):
        dec.step()
    plan = dec.step_fn.the_plan
    groups = [f for f in plan.values() if isinstance(f, RotaryCache)]
    assert len(groups) == SMALL["num_hidden_layers"] and all(f.q is not None for f in groups)
    assert all(isinstance(plan[f.q], QOut) and plan[f.k] == plan[f.kw] == "elide" for f in groups)


@pytest.mark.parametrize("mt,over", [(mt, {}) for mt in FAMILIES] + [("phi3", dict(partial_rotary_factor=0.5))])
def test_captured_decode_writes_the_same_cache(mt, over):
    """Greedy decoding with the plan (launched one by one, and as a graph on CUDA) and without: the same
    tokens, and every layer's key and value cache equal slot for slot (positions advance on the device)."""
    m = model(mt, "float16" if ON_CUDA else "float32", **over)
    decs = {}
    for mode in ("plain", False, True):
        dec = decs[mode] = Decoder(m, 2, 20, capture=mode)
        dec.prefill(engine.tensor([[5, 9, 33, 2], [17, 4, 250, 1]], device=DEVICE))
        for _ in range(9):
            dec.step()
    for mode in (False, True):
        np.testing.assert_array_equal(decs[mode].tokens(), decs["plain"].tokens())
        for a, b in zip(decs[mode].cache.keys + decs[mode].cache.values,
                        decs["plain"].cache.keys + decs["plain"].cache.values):
            np.testing.assert_array_equal(a.float().numpy(), b.float().numpy())


def test_sliding_window_ring_cache_step_is_fused_and_equal():
    """A ring cache (SlidingWindowCache, slots p % window) under the plan: the same logits as the plain steps."""
    m = model("mistral", sliding_window=4)
    outs = {}
    for planned in (False, True):
        cache = m.new_cache(1, 64)
        tok = engine.tensor([[3]], device=DEVICE)
        step = Captured(lambda t: m(t, cache)[:, -1], graphs=False) if planned else (lambda t: m(t, cache)[:, -1])
        outs[planned] = [step(tok).numpy() for _ in range(7)]  # past the window: the ring wraps
        if planned:
            assert sum(isinstance(f, RotaryCache) for f in step.the_plan.values()) == SMALL["num_hidden_layers"]
    for a, b in zip(outs[True], outs[False]):
        np.testing.assert_array_equal(a, b)


def test_generate_with_the_fused_step_equals_plain():
    m = model("llama")
    plain = generate(m, [[5, 9, 33, 2, 71]], max_new_tokens=12, stop_token_ids=[], capture="plain").tokens
    assert generate(m, [[5, 9, 33, 2, 71]], max_new_tokens=12, stop_token_ids=[], capture=True).tokens == plain
