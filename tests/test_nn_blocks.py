"""engine.nn building blocks against torch / transformers: Linear, Embedding, LayerNorm, RmsNorm,
rotary frequencies (every supported rope type) and rotation, GQA attention, masks, KV caches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama import modeling_llama as hf_llama

import engine
from engine.nn.attention import attention, causal_mask, min_value, positions, repeat_kv
from engine.nn.kv_cache import CacheFullError, KVCache, SlidingWindowCache, StaticCache
from engine.nn.linear import Embedding, Linear, input_major
from engine.nn.norm import LayerNorm, RmsNorm
from engine.nn.rotary import RotaryEmbedding, apply_rotary, inv_freq, rope_parameters, signed_sin
from engine.nn.varbuilder import VarBuilder
from helpers import DEVICE

RNG = np.random.default_rng(0)


def t(a, dtype=None):
    return engine.tensor(np.asarray(a), dtype=dtype, device=DEVICE)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def close(a, b, rtol=1.3e-6, atol=1e-5):
    a = a.float().numpy() if hasattr(a, "storage") else np.asarray(a)
    b = b.float().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


# ---- Linear / Embedding -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7,), (3, 7), (2, 5, 7)])
def test_linear_matches_torch(bias, shape):
    w, b, x = rand(4, 7), rand(4), rand(*shape)
    vb = VarBuilder.from_tensors({"weight": w, "bias": b} if bias else {"weight": w}, device=DEVICE)
    lin = Linear(7, 4, bias, vb=vb)
    ref = torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b) if bias else None)
    close(lin(t(x)), ref)
    assert sorted(lin.state_dict()) == (["bias", "weight"] if bias else ["weight"])


def test_linear_reads_weight_without_transposing_it():
    """x @ W.T goes to BLAS over the stored (out, in) rows: W.T is a view, not a copy."""
    w = t(rand(6, 5))
    lin = Linear.from_weight(w)
    assert lin.weight.t().data_ptr() == w.data_ptr() and not lin.weight.t().is_contiguous()
    close(lin(t(np.eye(5, dtype=np.float32))), w.numpy().T)
    with pytest.raises(engine.ShapeError, match="last dim 4"):
        lin(t(rand(2, 4)))


def test_input_major_keeps_names_shapes_and_values():
    """input_major stores float32 weights as the transpose of an (in, out) copy where the backend says so
    (numpy: LINEAR_INPUT_MAJOR), and the linears compute what they did; other dtypes stay as they were."""
    w, b, x = rand(4, 7), rand(4), rand(3, 7)
    vb = VarBuilder.from_tensors({"a.weight": w, "a.bias": b, "c.weight": w.astype(np.float16)}, device=DEVICE)
    m = engine.nn.Module()
    m.a, m.c = Linear(7, 4, vb=vb.pp("a")), Linear(7, 4, False, vb=vb.pp("c"), dtype=engine.float16)
    before, before16 = m.a(t(x)).numpy(), m.c(t(x, engine.float16)).numpy()
    assert input_major(m) is m and sorted(m.state_dict()) == ["a.bias", "a.weight", "c.weight"]
    moved = engine.backend(DEVICE).LINEAR_INPUT_MAJOR
    assert m.a.weight.shape == (4, 7) and m.a.weight.t().is_contiguous() == moved and m.c.weight.is_contiguous()
    np.testing.assert_array_equal(m.a.weight.numpy(), w)
    close(m.a(t(x)), torch.from_numpy(before))
    np.testing.assert_array_equal(m.c(t(x, engine.float16)).numpy(), before16)


def test_input_major_gemv_moves_wide_weights_only():
    """input_major(gemv=True) moves weights with out >= in (the one-row product reads them faster input-major)
    and leaves the long ones (out < in) as they are; the values stay."""
    w1, w2, x = rand(8, 4), rand(4, 8), rand(1, 4)
    vb = VarBuilder.from_tensors({"a.weight": w1, "b.weight": w2}, device=DEVICE)
    m = engine.nn.Module()
    m.a, m.b = Linear(4, 8, False, vb=vb.pp("a")), Linear(8, 4, False, vb=vb.pp("b"))
    input_major(m, gemv=True)
    moved = engine.backend(DEVICE).LINEAR_INPUT_MAJOR
    assert m.a.weight.t().is_contiguous() == moved and m.b.weight.is_contiguous()
    np.testing.assert_array_equal(m.a.weight.numpy(), w1)
    close(m.b(m.a(t(x))), torch.from_numpy(x) @ torch.from_numpy(w1).T @ torch.from_numpy(w2).T)


def test_embedding_matches_torch():
    w, ids = rand(10, 3), RNG.integers(0, 10, (2, 4))
    emb = Embedding(10, 3, vb=VarBuilder.from_tensors({"weight": w}, device=DEVICE))
    close(emb(t(ids)), torch.nn.functional.embedding(torch.from_numpy(ids), torch.from_numpy(w)))


# ---- norms ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_rms_norm_is_transformers_llama_rmsnorm(dtype):
    x, w = rand(2, 3, 16) * 3, 1 + 0.1 * rand(16)
    tdt = getattr(torch, dtype)
    ref = hf_llama.LlamaRMSNorm(16, eps=1e-5).to(tdt)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(w))
        want = ref(torch.from_numpy(x).to(tdt))
    vb = VarBuilder.from_tensors({"weight": w}, dtype=getattr(engine, dtype), device=DEVICE)
    got = RmsNorm(16, 1e-5, vb=vb)(t(x, getattr(engine, dtype)))
    assert got.dtype.name == dtype
    # same rounding steps as transformers: bitwise in fp32 up to the rsqrt ulp
    tol = {"float32": (1e-6, 1e-6), "float16": (1e-3, 1e-3), "bfloat16": (1e-2, 1e-2)}[dtype]
    close(got, want, *tol)


def test_layer_norm_matches_torch():
    x, w, b = rand(4, 8), rand(8), rand(8)
    vb = VarBuilder.from_tensors({"weight": w, "bias": b}, device=DEVICE)
    close(LayerNorm(8, 1e-5, vb=vb)(t(x)),
          torch.nn.functional.layer_norm(torch.from_numpy(x), (8,), torch.from_numpy(w), torch.from_numpy(b)))
    ln = LayerNorm(8, bias=False, device=DEVICE)
    assert ln.bias is None and sorted(ln.state_dict()) == ["weight"]


# ---- rotary ---------------------------------------------------------------------------------------------
ROPES = [
    {"rope_type": "default"},
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "dynamic", "factor": 2.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 128},
]


@pytest.mark.parametrize("head_dim", [64, 80, 128])
@pytest.mark.parametrize("rope", ROPES, ids=lambda r: r["rope_type"])
def test_inv_freq_matches_modeling_rope_utils(rope, head_dim):
    heads = 4
    cfg = LlamaConfig(hidden_size=heads * head_dim, num_attention_heads=heads, max_position_embeddings=64,
                      rope_theta=500000.0, rope_scaling=None if rope["rope_type"] == "default" else dict(rope))
    params = rope_parameters(cfg.to_dict())
    assert params["rope_type"] == rope["rope_type"] and params["rope_theta"] == 500000.0
    for seq_len in ([None, 200] if rope["rope_type"] == "dynamic" else [None]):
        if rope["rope_type"] == "default":
            want, scale = hf_llama.LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)
        else:
            sl = None if seq_len is None else torch.tensor(seq_len)  # transformers passes a tensor here
            want, scale = ROPE_INIT_FUNCTIONS[rope["rope_type"]](cfg, None, seq_len=sl)
        got, got_scale = inv_freq(params, head_dim, 64, seq_len)
        assert got.dtype == np.float32 and got_scale == scale
        np.testing.assert_allclose(got, want.numpy(), rtol=2e-7, atol=0)


def test_rope_parameters_reads_old_and_new_config_forms():
    old = {"rope_theta": 1e6, "rope_scaling": {"type": "linear", "factor": 2.0}}
    new = {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}}
    assert rope_parameters(old) == rope_parameters(new) == {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}
    assert rope_parameters({})["rope_type"] == "default"
    with pytest.raises(NotImplementedError, match="yarn"):
        inv_freq({"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}, 64, 128)


def test_rotary_rotation_matches_transformers():
    cfg = LlamaConfig(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    hf_rot = hf_llama.LlamaRotaryEmbedding(cfg)
    pos = np.array([[0, 1, 2, 7, 31], [3, 4, 5, 6, 7]])
    q, k = rand(2, 4, 5, 64), rand(2, 2, 5, 64)
    cos_t, sin_t = hf_rot(torch.zeros(1), torch.from_numpy(pos))
    want_q, want_k = hf_llama.apply_rotary_pos_emb(torch.from_numpy(q), torch.from_numpy(k), cos_t, sin_t)
    rot = RotaryEmbedding(64, rope_parameters(cfg.to_dict()), 64, device=DEVICE)
    cos, sin = rot(t(pos), engine.float32)
    close(cos, cos_t)
    close(sin, sin_t)
    close(apply_rotary(t(q), cos, signed_sin(sin)), want_q)
    close(apply_rotary(t(k), cos, signed_sin(sin)), want_k)
    assert not list(rot.state_dict())  # frequencies are not state


def test_partial_rotary_passes_the_tail_through():
    params = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    rot = RotaryEmbedding(64, params, 128, device=DEVICE)
    assert rot.rot_dim == 32
    x = rand(1, 2, 3, 64)
    cos, sin = rot(t(np.arange(3)[None]), engine.float32)
    y = apply_rotary(t(x), cos, signed_sin(sin)).numpy()
    np.testing.assert_array_equal(y[..., 32:], x[..., 32:])
    assert np.abs(y[..., :32] - x[..., :32]).max() > 1e-3


def test_dynamic_rope_grows_and_resets_like_transformers():
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=1, max_position_embeddings=16,
                      rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    hf_rot = hf_llama.LlamaRotaryEmbedding(cfg)
    rot = RotaryEmbedding(64, rope_parameters(cfg.to_dict()), 16, device=DEVICE)
    for n in (8, 40, 24, 8):  # grow past 16, grow more, stay, drop back below 16 (reset)
        pos = np.arange(n)[None]
        cos_t, _ = hf_rot(torch.zeros(1), torch.from_numpy(pos))
        cos, _ = rot(t(pos), engine.float32)
        close(cos, cos_t, 1e-5, 1e-5)
        close(rot.inv_freq, hf_rot.inv_freq)


# ---- attention ------------------------------------------------------------------------------------------
def test_repeat_kv_matches_transformers():
    x = rand(2, 2, 5, 4)
    close(repeat_kv(t(x), 3), hf_llama.repeat_kv(torch.from_numpy(x), 3))


@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 1), (8, 2)])
def test_gqa_attention_matches_transformers_eager(hq, hkv):
    b, L, S, d = 2, 3, 7, 16
    q, k, v = rand(b, hq, L, d), rand(b, hkv, S, d), rand(b, hkv, S, d)
    qpos, kpos = np.arange(4, 7), np.arange(7)
    am = np.ones((b, S), np.int64)
    am[1, :2] = 0
    mask = causal_mask(t(qpos), t(kpos), t(am))
    assert mask.shape == (b, 1, L, S)

    class Mod:
        num_key_value_groups, training = hq // hkv, False
    want, _ = hf_llama.eager_attention_forward(Mod, torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v),
                                               torch.from_numpy(mask.numpy()), scaling=d ** -0.5)
    got = attention(t(q), t(k), t(v), mask, d ** -0.5)
    close(got, want.reshape(b, L, hq * d))


def test_causal_mask_semantics():
    m = causal_mask(t(np.arange(5)), t(np.arange(5)), sliding_window=2).numpy()[0, 0]
    ok = m == 0
    want = np.array([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]], bool)
    np.testing.assert_array_equal(ok, want)
    assert m[0, 1] == min_value(engine.float32) == np.finfo(np.float32).min
    # empty ring slots (-1) and padding are masked
    m = causal_mask(t([3]), t([2, -1, 3, 0]), t([[0, 1, 1, 1]])).numpy()[0, 0, 0]
    np.testing.assert_array_equal(m == 0, [True, False, True, False])
    assert causal_mask(t([0]), t([0]), dtype=engine.float16).dtype is engine.float16


def test_positions_from_left_padding():
    am = t([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    pos, mask, step = positions(t(np.zeros((2, 5), np.int64)), None, am)
    np.testing.assert_array_equal(pos.numpy(), [[1, 1, 0, 1, 2], [0, 1, 2, 3, 4]])
    assert step is None and mask.shape == (2, 1, 5, 5)
    with pytest.raises(ValueError, match="attention_mask must be"):
        positions(t(np.zeros((2, 4), np.int64)), None, am)


# ---- caches ---------------------------------------------------------------------------------------------
def test_kv_cache_writes_in_place_and_reads_the_filled_prefix():
    c = KVCache(2, 1, 2, 4, 10, device=DEVICE)
    ptr = c.keys[1].data_ptr()
    s = c.step(3)
    k, v = rand(1, 2, 3, 4), rand(1, 2, 3, 4)
    kk, vv = c.update(1, t(k), t(v), s)
    assert kk.shape == (1, 2, 3, 4) and c.keys[1].data_ptr() == ptr
    close(kk, k)
    s = c.step(1)
    k1 = rand(1, 2, 1, 4)
    kk, _ = c.update(1, t(k1), t(k1), s)
    close(kk, np.concatenate([k, k1], 2))
    np.testing.assert_array_equal(s.query_pos.numpy(), [3])
    with pytest.raises(CacheFullError, match="10 positions"):
        c.step(7)
    full = KVCache(1, 1, 1, 4, 10, full_length=True, device=DEVICE).step(2)
    assert full.kv_len == 10 and full.key_pos.shape == (10,)


def test_sliding_window_cache_is_a_ring():
    w = 4
    c = SlidingWindowCache(1, 1, 1, 2, w, device=DEVICE)
    assert c.keys[0].shape == (1, 1, w, 2)
    s = c.step(6)  # a prompt longer than the window: attend over old ring + chunk, keep the last 4
    assert s.mode == "concat" and s.kv_len == w + 6
    np.testing.assert_array_equal(s.key_pos.numpy(), [-1, -1, -1, -1, 0, 1, 2, 3, 4, 5])
    ks = np.arange(12, dtype=np.float32).reshape(1, 1, 6, 2)
    k_all, _ = c.update(0, t(ks), t(ks), s)
    assert k_all.shape == (1, 1, 10, 2)
    np.testing.assert_array_equal(c.slot_pos.numpy(), [4, 5, 2, 3])  # position p lives in slot p % 4
    np.testing.assert_array_equal(c.keys[0].numpy()[0, 0, :, 0], [8, 10, 4, 6])
    s = c.step(1)  # position 6 replaces position 2 (slot 2), then the whole ring is read
    assert s.mode == "write_then_read"
    c.update(0, t(np.full((1, 1, 1, 2), 99, np.float32)), t(np.zeros((1, 1, 1, 2), np.float32)), s)
    np.testing.assert_array_equal(c.slot_pos.numpy(), [4, 5, 6, 3])
    m = causal_mask(s.query_pos, s.key_pos, sliding_window=w).numpy()[0, 0, 0]
    np.testing.assert_array_equal(m == 0, [True, True, True, True])  # positions 3..6 are the window


@pytest.mark.parametrize("make", [lambda: KVCache(1, 1, 1, 2, 8, device=DEVICE),
                                  lambda: StaticCache(1, 1, 1, 2, 8, device=DEVICE),
                                  lambda: SlidingWindowCache(1, 1, 1, 2, 4, device=DEVICE)])
def test_a_cache_rewound_to_a_mark_steps_as_from_there(make):
    c = make()
    c.step(3)
    mark = c.mark()
    s = c.step(1)
    want = s.slots.numpy().copy(), s.key_pos.numpy().copy()
    for _ in range(2):  # a step that failed part way (after advancing), then two more
        c.step(1)
    c.rewind(mark)
    s = c.step(1)
    np.testing.assert_array_equal(s.slots.numpy(), want[0])
    np.testing.assert_array_equal(s.key_pos.numpy(), want[1])  # a ring's slot positions too
    assert c.seen == 4
