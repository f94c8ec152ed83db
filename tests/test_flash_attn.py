"""The cupy backend's flash attention (engine/backends/cupy_flash.py, cuda/flash_attn.cu) against torch's
F.scaled_dot_product_attention: the engine's error against a float64 run must be within the reduced-precision
rule (migration/tolerances.py: the table's tolerance, or at most REDUCED_ERROR_RATIO x torch's own fused
16-bit sdpa's error). Each case also checks that the kernel ran (not the composition)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import engine
from helpers import DEVICE, NP, TORCH, compare_reduced, needs_device

pytestmark = [needs_device, pytest.mark.cuda]
TDEV = "cuda" if torch.cuda.is_available() else "cpu"  # torch's fused sdpa where torch has the GPU


def arr(shape, dtype, scale=1.0, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32).astype(NP[dtype])


def make_mask(kind, B, H, L, S, dtype, seed=3):
    """None; 'causal' (is_causal); 'bool' (B, 1, 1, S) padding; 'bool_full' (B, H, L, S); 'add' (B, 1, L, S)
    additive in the dtype; 'add32' (1, 1, L, S) additive float32; 'dead_bool' / 'dead_add': row 1 of each
    head fully masked (False / -inf)."""
    r = np.random.default_rng(seed)
    if kind in (None, "causal"):
        return None
    if kind == "bool":
        m = np.ones((B, 1, 1, S), bool)
        m[-1, ..., S // 2:] = False  # the last batch element padded
        return m
    if kind in ("bool_full", "dead_bool"):
        m = r.random((B, H, L, S)) > 0.3
        m[..., 0] = True
        if kind == "dead_bool":
            m[:, :, min(1, L - 1), :] = False
        return m
    if kind == "add":
        return (r.standard_normal((B, 1, L, S)) * 2).astype(NP[dtype])
    if kind == "add32":
        return (r.standard_normal((1, 1, L, S)) * 2).astype(np.float32)
    if kind == "dead_add":
        m = (r.standard_normal((1, 1, L, S))).astype(np.float32)
        m[..., min(1, L - 1), :] = -np.inf
        return m.astype(NP[dtype])
    raise ValueError(kind)


def qkv(B, Hq, Hkv, L, S, E, dtype, layout):
    """Engine q/k/v: 'bhle' contiguous; 'blhe' transposed views of (B, L, H*E) projections (BERT/CLIP/SD
    build q/k/v so); '3d' (H, L, E) without a batch dim."""
    if layout == "3d":
        return [engine.tensor(arr(s, dtype, 1.0, i), device=DEVICE) for i, s in enumerate(((Hq, L, E), (Hkv, S, E),
                                                                                            (Hkv, S, E)))]
    if layout == "bhle":
        return [engine.tensor(arr(s, dtype, 1.0, i), device=DEVICE) for i, s in enumerate(((B, Hq, L, E),
                                                                                            (B, Hkv, S, E),
                                                                                            (B, Hkv, S, E)))]
    q = engine.tensor(arr((B, L, Hq * E), dtype, 1.0, 0), device=DEVICE).reshape(B, L, Hq, E).transpose(1, 2)
    kv = engine.tensor(arr((B, S, 2 * Hkv * E), dtype, 1.0, 1), device=DEVICE)  # fused k|v projection
    k = kv[:, :, :Hkv * E].reshape(B, S, Hkv, E).transpose(1, 2)
    v = kv[:, :, Hkv * E:].reshape(B, S, Hkv, E).transpose(1, 2)
    return [q, k, v]


def t_of(t):
    return torch.from_numpy(np.array(t.float().numpy())).to(TDEV)


def reference64(q, k, v, mask, causal):
    """float64 attention with torch's semantics; a fully masked row gives 0."""
    q, k, v = q.double(), k.double(), v.double()
    if q.ndim >= 3 and q.shape[-3] != k.shape[-3]:
        rep = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(rep, -3), v.repeat_interleave(rep, -3)
    s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    L, S = s.shape[-2:]
    if causal:
        s = s.masked_fill(~torch.ones(L, S, dtype=torch.bool, device=s.device).tril(), float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.double()
    return (torch.softmax(s, -1).nan_to_num(0) @ v)


@pytest.fixture
def flash_calls(monkeypatch):
    """Counts the flash kernel's launches."""
    if DEVICE.type != "cuda":
        pytest.skip("the flash kernel runs on CUDA only (ENGINE_DEVICE=cuda)")
    from engine.backends import cupy_flash
    calls = []
    real = cupy_flash.sdpa
    monkeypatch.setattr(cupy_flash, "sdpa", lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
    return calls


def check(dtype, B, Hq, Hkv, L, S, E, mask_kind, layout, flash_calls):
    q, k, v = qkv(B, Hq, Hkv, L, S, E, dtype, layout)
    causal = mask_kind == "causal"
    m = make_mask(mask_kind, B, Hq, L, S, dtype)
    em = None if m is None else engine.tensor(m, device=DEVICE)
    got = engine.functional.scaled_dot_product_attention(q, k, v, attn_mask=em, is_causal=causal,
                                                         enable_gqa=Hq != Hkv)
    assert flash_calls, "the flash kernel did not run (flash_ok refused the operands)"
    tq, tk, tv = (t_of(a).to(TORCH[dtype]) for a in (q, k, v))
    tm = None if m is None else torch.from_numpy(m.astype(np.float32) if m.dtype == NP["bfloat16"] else m).to(TDEV)
    tm16 = tm if tm is None or tm.dtype == torch.bool else tm.to(TORCH[dtype])
    want = TF.scaled_dot_product_attention(tq, tk, tv, attn_mask=tm16, is_causal=causal, enable_gqa=Hq != Hkv)
    want64 = reference64(tq, tk, tv, tm, causal)
    compare_reduced(got, want.nan_to_num(0).cpu(), want64.cpu(), scale=4)


# (B, Hq, Hkv, L, S, E, mask, layout): every head dim the models use, SD self/cross attention, Whisper's
# encoder, CLIP/BERT shapes, L != S with causal, masks, GQA, views
CASES = [
    (2, 4, 4, 77, 77, 32, None, "bhle"),
    (2, 4, 4, 77, 77, 40, None, "bhle"),
    (2, 4, 4, 77, 77, 64, None, "bhle"),
    (2, 4, 4, 77, 77, 80, None, "bhle"),
    (2, 4, 4, 77, 77, 128, None, "bhle"),
    (2, 4, 4, 77, 77, 160, None, "bhle"),
    (1, 2, 2, 4096, 4096, 40, None, "blhe"),  # SD 1.5 64x64 self-attention, one head pair
    (1, 2, 2, 4096, 77, 40, None, "blhe"),  # SD 1.5 cross-attention to the text
    (1, 2, 2, 1024, 77, 80, None, "blhe"),
    (1, 2, 2, 256, 77, 160, None, "blhe"),
    (1, 6, 6, 1500, 1500, 64, None, "blhe"),  # Whisper tiny's encoder
    (3, 12, 12, 128, 128, 64, "bool", "blhe"),  # BERT with padding
    (2, 8, 8, 77, 77, 64, "causal", "blhe"),  # CLIP's causal text encoder
    (2, 8, 8, 77, 77, 64, "add", "blhe"),  # CLIP's additive mask, broadcast over heads
    (1, 2, 2, 1, 77, 64, None, "bhle"),  # one query row
    (1, 2, 2, 1, 1, 64, None, "bhle"),
    (1, 2, 2, 130, 70, 32, "causal", "bhle"),  # L > S: rows past S see every key
    (1, 2, 2, 20, 150, 80, "causal", "bhle"),  # L < S: top-left aligned
    (1, 2, 2, 200, 200, 128, "causal", "bhle"),
    (2, 3, 3, 70, 90, 40, "bool_full", "bhle"),
    (2, 3, 3, 70, 90, 48, "add32", "bhle"),
    (2, 3, 3, 33, 65, 40, "dead_bool", "bhle"),  # a fully masked row gives 0
    (1, 3, 3, 33, 65, 64, "dead_add", "bhle"),
    (2, 8, 2, 77, 100, 64, None, "bhle"),  # GQA 4 query heads per kv head
    (1, 8, 1, 65, 65, 128, "causal", "blhe"),  # MQA
    (2, 6, 3, 50, 50, 80, "add", "blhe"),
    (0, 3, 3, 70, 66, 64, None, "3d"),
]


@pytest.mark.parametrize("pipe", [True, False], ids=["pipe", "plain"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("B,Hq,Hkv,L,S,E,mask,layout", CASES)
def test_flash_sdpa_matches_torch(dtype, B, Hq, Hkv, L, S, E, mask, layout, pipe, flash_calls, monkeypatch):
    """Both kernel variants: cp.async double buffering + ldmatrix (pipe, the default) and plain loads."""
    from engine.backends import cupy_flash
    monkeypatch.setitem(cupy_flash.FLASH, "pipe", pipe)
    check(dtype, B, Hq, Hkv, L, S, E, mask, layout, flash_calls)


@pytest.mark.parametrize("what", ["float32", "head_dim_36", "head_dim_192", "mask_int", "disabled"])
def test_unsupported_operands_take_the_composition(what, flash_calls, monkeypatch):
    """Operands the kernel refuses (float32, E % 8 != 0, E > 160, an integer mask; any with FLASH disabled) go
    to the generic sdpa, which still matches torch."""
    from engine.backends import cupy_flash
    if what == "disabled":
        monkeypatch.setitem(cupy_flash.FLASH, "enabled", False)
    dtype = "float32" if what == "float32" else "float16"
    E = {"head_dim_36": 36, "head_dim_192": 192}.get(what, 64)
    q, k, v = qkv(1, 2, 2, 40, 50, E, dtype, "bhle")
    m = np.ones((1, 1, 40, 50), np.int32) if what == "mask_int" else None
    em = None if m is None else engine.tensor(m, device=DEVICE)
    assert not cupy_flash.flash_ok(q.array, k.array, v.array, None if em is None else em.array)
    if what == "mask_int":
        return  # torch rejects integer masks too; the refusal is the point
    got = engine.functional.scaled_dot_product_attention(q, k, v)
    assert not flash_calls
    tq, tk, tv = (t_of(a).to(TORCH[dtype]) for a in (q, k, v))
    want = TF.scaled_dot_product_attention(tq, tk, tv)
    if dtype == "float32":
        torch.testing.assert_close(torch.from_numpy(np.array(got.numpy())), want.cpu(), rtol=1e-4, atol=1e-5)
    else:
        compare_reduced(got, want.cpu(), reference64(tq, tk, tv, None, False).cpu(), scale=4)


def test_flash_sdpa_in_a_captured_graph(flash_calls):
    """The kernel inside a captured CUDA graph (engine.capture) replays equal to its eager launch."""
    from engine.capture import Captured
    q, k, v = qkv(2, 4, 4, 300, 77, 40, "float16", "blhe")

    def step(q):
        return engine.functional.scaled_dot_product_attention(q, k, v) * 2.0

    eager = step(q)
    graph = Captured(step)
    for _ in range(3):  # eager, recorded, captured
        graph(q)
    replay = graph(q)
    np.testing.assert_array_equal(replay.float().numpy(), eager.float().numpy())
    assert flash_calls


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("B,Hq,Hkv,L,S,E,masked", [
    (2, 8, 2, 128, 128, 128, True),  # an LLM prefill: GQA, causal additive mask
    (32, 12, 12, 128, 128, 64, True),  # BERT batch 32 with a padding mask
    (1, 6, 6, 1500, 1500, 64, False),  # Whisper's encoder
])
def test_attention_op_rows_take_flash(dtype, B, Hq, Hkv, L, S, E, masked, flash_calls, monkeypatch):
    """engine.nn.attention.attention (LLM prefill, BERT, CLIP, Whisper) with more than one 16-bit query row
    runs the kernel (FLASH["attention"] "always"; by default only in captures): (B, L, Hq * E) within the
    reduced-precision rule of torch's sdpa."""
    from engine.backends import cupy_flash
    from engine.nn.attention import attention
    monkeypatch.setitem(cupy_flash.FLASH, "attention", "always")
    q, k, v = qkv(B, Hq, Hkv, L, S, E, dtype, "bhle")
    m = None
    if masked:
        m = np.where(np.tril(np.ones((L, S), bool), S - L), 0, -30000).astype(np.float32)[None, None]
        m = np.broadcast_to(m, (B, 1, L, S)).copy()
        m[-1, ..., S // 2:] = -30000  # the last row padded too
        m = m.astype(NP[dtype])
    got = attention(q, k, v, None if m is None else engine.tensor(m, device=DEVICE), E ** -0.5)
    assert flash_calls and got.shape == (B, L, Hq * E)
    tq, tk, tv = (t_of(a).to(TORCH[dtype]) for a in (q, k, v))
    tm = None if m is None else torch.from_numpy(m.astype(np.float32)).to(TDEV)
    want = TF.scaled_dot_product_attention(tq, tk, tv, attn_mask=None if tm is None else tm.to(TORCH[dtype]),
                                           enable_gqa=Hq != Hkv)
    want64 = reference64(tq, tk, tv, tm, False)
    flat = lambda t: t.transpose(1, 2).reshape(B, L, Hq * E).cpu()  # noqa: E731
    compare_reduced(got, flat(want), flat(want64), scale=4)


def test_attention_op_takes_flash_in_captures_only_by_default(flash_calls):
    """Default ("capture"): an eager attention op keeps cuBLAS + the softmax kernel (faster for an LLM
    prefill over a long cache); inside a captured forward (no cuBLAS there) it runs the kernel."""
    from engine.capture import Captured
    from engine.nn.attention import attention
    q, k, v = qkv(2, 4, 4, 128, 128, 64, "float16", "bhle")
    eager = attention(q, k, v, None, 0.125)
    assert not flash_calls
    step = Captured(lambda q: attention(q, k, v, None, 0.125))
    for _ in range(4):
        got = step(q)
    assert flash_calls
    tq, tk, tv = (t_of(a).to(TORCH["float16"]) for a in (q, k, v))
    flat = lambda t: t.transpose(1, 2).reshape(2, 128, 256).cpu()  # noqa: E731
    compare_reduced(got, flat(TF.scaled_dot_product_attention(tq, tk, tv)),
                    flat(reference64(tq, tk, tv, None, False)), scale=4)
    compare_reduced(eager, flat(TF.scaled_dot_product_attention(tq, tk, tv)),
                    flat(reference64(tq, tk, tv, None, False)), scale=4)
