"""Engine LLMs against transformers: the same config, the same random weights (save_pretrained ->
safetensors -> engine from_pretrained), teacher-forced logits over 32 tokens and every decoder
layer's hidden state.

fp32: max abs error <= 1e-4 x the reference's range (logits: max - min; hidden states: max |h|).
fp16 / bf16: the engine's error against an fp64 torch run is at most REDUCED_ERROR_RATIO (3) times
torch's own error in that dtype, per logits and per layer.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

import engine
from engine.models import from_pretrained, model_class
from engine.nn import StateDictError
from helpers import DEVICE
from migration.tolerances import REDUCED_ERROR_RATIO

FAMILIES = ["llama", "mistral", "gemma", "qwen2", "mixtral", "phi3"]
SEQ = 32
FP32_REL = 1e-4
TORCH_DT = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ---- building the pair --------------------------------------------------------------------------------
def hf_model(model_type: str, overrides: dict | None = None, seed: int = 0, **extra):
    """A transformers model of the family's "tiny" preset (with overrides), eager attention, weights
    drawn so that activations stay O(1): matrices N(0, 1/fan_in), vectors around their identity."""
    cfg = {**model_class(model_type).PRESETS["tiny"], **(overrides or {})}
    hf_cfg = CONFIG_MAPPING[model_type](**cfg, **extra)
    hf_cfg._attn_implementation = "eager"
    if model_type == "mixtral":  # the per-expert loop (torch's grouped_mm has no fp64)
        hf_cfg._experts_implementation = "eager"
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(hf_cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.ndim == 1:
                base = 0.0 if (model_type == "gemma" and "norm" in name) or name.endswith("bias") else 1.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return m


def save(m, tmp_path, name="model"):
    d = tmp_path / name
    m.save_pretrained(d)
    return d


def ids_for(m, batch=1, seq=SEQ, seed=1):
    return torch.randint(0, m.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))


def hf_run(m, ids, attention_mask=None, position_ids=None):
    """(logits, {name: hidden}) with names as engine taps: model.embed_tokens, model.layers.i,
    model.norm. output_hidden_states gives the embeddings, layers 0..n-2 and the normed output; a
    forward hook gives the last layer's raw output."""
    n = m.config.num_hidden_layers
    hooked = {}
    h = m.model.layers[n - 1].register_forward_hook(lambda mod, i, out: hooked.setdefault("last", out))
    try:
        with torch.no_grad():
            out = m(ids, attention_mask=attention_mask, position_ids=position_ids, output_hidden_states=True)
    finally:
        h.remove()
    hs = out.hidden_states
    assert len(hs) == n + 1
    last = hooked["last"][0] if isinstance(hooked["last"], tuple) else hooked["last"]
    hidden = {"model.embed_tokens": hs[0], **{f"model.layers.{i}": hs[i + 1] for i in range(n - 1)},
              f"model.layers.{n - 1}": last, "model.norm": hs[n]}
    return out.logits.double().numpy(), {k: v.double().numpy() for k, v in hidden.items()}


def engine_run(em, ids, attention_mask=None, position_ids=None):
    taps = {}
    n = em.config.num_hidden_layers
    names = ["model.embed_tokens", "model.norm"] + [f"model.layers.{i}" for i in range(n)]
    em.set_taps(lambda name, out: taps.__setitem__(name, out.float().numpy().astype(np.float64)), names)
    try:
        mask = None if attention_mask is None else engine.tensor(attention_mask.numpy(), device=DEVICE)
        pos = None if position_ids is None else engine.tensor(position_ids.numpy(), device=DEVICE)
        logits = em(engine.tensor(ids.numpy(), device=DEVICE), attention_mask=mask, position_ids=pos)
    finally:
        em.set_taps(None)
    return logits.float().numpy().astype(np.float64), taps


def assert_fp32_close(ref_logits, ref_hidden, logits, hidden, where=None):
    sl = (slice(None),) if where is None else where
    rng = np.ptp(ref_logits[sl])
    err = np.abs(ref_logits[sl] - logits[sl]).max()
    assert err <= FP32_REL * rng, f"logits: max abs error {err:.3g} > {FP32_REL} x range {rng:.3g}"
    for name, ref in ref_hidden.items():
        scale = np.abs(ref[sl]).max()
        e = np.abs(ref[sl] - hidden[name][sl]).max()
        assert e <= FP32_REL * scale, f"{name}: max abs error {e:.3g} > {FP32_REL} x max|h| {scale:.3g}"
    return err / rng


def check_parity(tmp_path, model_type, overrides=None, seq=SEQ, **extra):
    m = hf_model(model_type, overrides, **extra)
    em = from_pretrained(save(m, tmp_path), device=DEVICE)
    ids = ids_for(m, seq=seq)
    return assert_fp32_close(*hf_run(m, ids), *engine_run(em, ids))


# ---- fp32 parity ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", FAMILIES)
def test_fp32_parity(tmp_path, model_type):
    check_parity(tmp_path, model_type)


@pytest.mark.parametrize("kv_heads", [8, 2, 1], ids=["gqa1", "gqa4", "gqa8"])
def test_gqa_ratios(tmp_path, kv_heads):
    check_parity(tmp_path, "llama", dict(hidden_size=256, num_attention_heads=8, num_key_value_heads=kv_heads))


@pytest.mark.parametrize("model_type,overrides,head_dim", [
    ("llama", dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=1), 64),
    ("phi3", dict(hidden_size=160, num_attention_heads=2, num_key_value_heads=2), 80),
    ("llama", dict(hidden_size=256, num_attention_heads=2, num_key_value_heads=1), 128),
    ("gemma", dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=256), 256),
])
def test_head_dims(tmp_path, model_type, overrides, head_dim):
    m = hf_model(model_type, overrides)
    em = from_pretrained(save(m, tmp_path), device=DEVICE)
    assert em.config.head_dim == head_dim
    ids = ids_for(m)
    assert_fp32_close(*hf_run(m, ids), *engine_run(em, ids))


@pytest.mark.parametrize("tied", [True, False])
def test_tied_and_untied_embeddings(tmp_path, tied):
    m = hf_model("llama", dict(tie_word_embeddings=tied))
    d = save(m, tmp_path)
    em = from_pretrained(d, device=DEVICE)
    assert (em.lm_head.weight is em.model.embed_tokens.weight) == tied
    with open(d / "config.json") as f:
        assert json.load(f)["tie_word_embeddings"] == tied
    ids = ids_for(m)
    assert_fp32_close(*hf_run(m, ids), *engine_run(em, ids))


@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "factor": 2.0},
    {"rope_type": "dynamic", "factor": 2.0},
    {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
], ids=lambda r: r["rope_type"])
def test_rope_scaling(tmp_path, rope):
    # max_position_embeddings 16 < 32 tokens: dynamic NTK scaling really rescales
    over = dict(rope_scaling=rope, max_position_embeddings=16 if rope["rope_type"] == "dynamic" else 256)
    m = hf_model("llama", over)
    assert m.config.rope_parameters["rope_type"] == rope["rope_type"]
    em = from_pretrained(save(m, tmp_path), device=DEVICE)
    assert em.model.rotary_emb.rope_type == rope["rope_type"]
    ids = ids_for(m)
    assert_fp32_close(*hf_run(m, ids), *engine_run(em, ids))


def test_rope_theta_and_llama3_preset_config(tmp_path):
    """llama-3 layout: rope_theta 500000, llama3 scaling, tied embeddings (Llama-3.2 style)."""
    rope = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}
    check_parity(tmp_path, "llama", dict(rope_theta=500000.0, rope_scaling=rope, tie_word_embeddings=True,
                                         num_attention_heads=4, num_key_value_heads=1))


def test_phi3_partial_rotary(tmp_path):
    m = hf_model("phi3", dict(partial_rotary_factor=0.5))
    em = from_pretrained(save(m, tmp_path), device=DEVICE)
    assert (em.model.rotary_emb.rot_dim, em.config.head_dim) == (40, 80)
    ids = ids_for(m)
    assert_fp32_close(*hf_run(m, ids), *engine_run(em, ids))


@pytest.mark.parametrize("model_type", ["mistral", "mixtral", "phi3"])
def test_sequence_longer_than_sliding_window(tmp_path, model_type):
    m = hf_model(model_type, dict(sliding_window=8))
    em = from_pretrained(save(m, tmp_path), device=DEVICE)
    assert em.config.sliding_window == 8
    ids = ids_for(m)  # 32 tokens, window 8
    ref = hf_run(m, ids)
    assert_fp32_close(*ref, *engine_run(em, ids))
    # the window matters: without it the logits differ
    full = from_pretrained(save(hf_model(model_type, dict(sliding_window=None)), tmp_path, "nowin"), device=DEVICE)
    assert np.abs(engine_run(full, ids)[0] - ref[0]).max() > 1e-2
    # and a ring cache of 8 slots reproduces it over a 16-token prefill and 16 decode steps
    got, cache = cached_logits(em, ids, prefill=16)
    assert type(cache).__name__ == "SlidingWindowCache"
    assert np.abs(got - ref[0]).max() <= FP32_REL * np.ptp(ref[0])


def test_qwen2_sliding_window_layers(tmp_path):
    check_parity(tmp_path, "qwen2", dict(use_sliding_window=True, sliding_window=8, max_window_layers=1))


# ---- batch with left padding ---------------------------------------------------------------------------
def left_padded(m, pad=(0, 5), seq=SEQ):
    ids = ids_for(m, batch=len(pad), seq=seq)
    mask = torch.ones_like(ids)
    for b, p in enumerate(pad):
        mask[b, :p] = 0
        ids[b, :p] = 0
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as transformers' generate builds them
    return ids, mask, pos


@pytest.mark.parametrize("model_type", FAMILIES)
def test_batch2_left_padding(tmp_path, model_type):
    over = dict(sliding_window=8) if model_type == "mistral" else None
    m = hf_model(model_type, over)
    em = from_pretrained(save(m, tmp_path), device=DEVICE)
    ids, mask, pos = left_padded(m)
    ref = hf_run(m, ids, mask, pos)
    got = engine_run(em, ids, mask)  # engine derives the same positions from the mask by default
    for b, p in enumerate((0, 5)):
        assert_fp32_close(*ref, *got, where=(b, slice(p, None)))
    # the padded row equals that prompt run alone
    alone = engine_run(em, ids[1:, 5:])[0]
    assert np.abs(alone[0] - got[0][1, 5:]).max() <= FP32_REL * np.ptp(alone)


# ---- KV cache -------------------------------------------------------------------------------------------
def cached_logits(em, ids, prefill, mask=None):
    """Prefill `prefill` tokens into a cache, then feed the rest one by one: logits (B, L, V)."""
    b, L = ids.shape
    cache = em.new_cache(b, L)
    out = []
    for start, stop in [(0, prefill)] + [(t, t + 1) for t in range(prefill, L)]:
        m = None if mask is None else engine.tensor(mask[:, :stop].numpy(), device=DEVICE)
        lg = em(engine.tensor(ids[:, start:stop].numpy(), device=DEVICE), cache, m)
        out.append(lg.float().numpy().astype(np.float64))
    return np.concatenate(out, 1), cache


@pytest.mark.parametrize("model_type", FAMILIES)
def test_cache_matches_no_cache_over_16_steps(tmp_path, model_type):
    over = dict(sliding_window=8) if model_type == "mistral" else None
    m = hf_model(model_type, over)
    em = from_pretrained(save(m, tmp_path), device=DEVICE)
    ids = ids_for(m)
    full, _ = engine_run(em, ids)
    got, cache = cached_logits(em, ids, prefill=16)
    assert cache.seen == SEQ
    err = np.abs(full - got).max()
    assert err <= FP32_REL * np.ptp(full), f"cache vs no cache: {err:.3g}"
    if model_type == "mistral":  # 32 > window 8: a ring of 8 slots, and a 16-token prefill longer than it
        assert type(cache).__name__ == "SlidingWindowCache" and cache.keys[0].shape[2] == 8


def test_cache_left_padded_batch(tmp_path):
    m = hf_model("llama")
    em = from_pretrained(save(m, tmp_path), device=DEVICE)
    ids, mask, pos = left_padded(m)
    full, _ = engine_run(em, ids, mask)
    got, _ = cached_logits(em, ids, 16, mask)
    for b, p in enumerate((0, 5)):
        assert np.abs(full[b, p:] - got[b, p:]).max() <= FP32_REL * np.ptp(full[b, p:])


def test_cache_is_static_and_written_in_place(tmp_path):
    m = hf_model("llama")
    em = from_pretrained(save(m, tmp_path), device=DEVICE)
    cache = em.new_cache(1, 40)
    ptrs = [t.data_ptr() for t in cache.keys + cache.values]
    ids = ids_for(m)
    em(engine.tensor(ids[:, :8].numpy(), device=DEVICE), cache)
    for t in range(8, 12):
        em(engine.tensor(ids[:, t:t + 1].numpy(), device=DEVICE), cache)
    assert [t.data_ptr() for t in cache.keys + cache.values] == ptrs
    assert cache.seen == 12
    k = cache.keys[0].numpy()
    assert np.abs(k[:, :, :12]).max() > 0 and np.abs(k[:, :, 12:]).max() == 0
    with pytest.raises(RuntimeError, match="40 positions"):
        em(engine.tensor(np.zeros((1, 29), np.int64), device=DEVICE), cache)


def test_full_length_cache_gives_the_same_logits(tmp_path):
    """full_length=True: every step reads all max_len slots (masked), so decode shapes never change."""
    m = hf_model("llama")
    em = from_pretrained(save(m, tmp_path), device=DEVICE)
    ids = ids_for(m)
    cache = em.new_cache(1, 48, full_length=True)
    out = [em(engine.tensor(ids[:, :16].numpy(), device=DEVICE), cache).numpy()]
    for t in range(16, SEQ):
        out.append(em(engine.tensor(ids[:, t:t + 1].numpy(), device=DEVICE), cache).numpy())
    full, _ = engine_run(em, ids)
    assert np.abs(np.concatenate(out, 1) - full).max() <= FP32_REL * np.ptp(full)


# ---- mixture of experts -----------------------------------------------------------------------------------
def _mixtral_with_gate(fill):
    m = hf_model("mixtral")
    with torch.no_grad():
        for layer in m.model.layers:
            fill(layer.mlp)
    return m


def test_moe_routing_ties_within_top2(tmp_path):
    """Gate rows 0 = 1 and rows 2 = 3 = 0: every token's top-2 is a tied pair ({0, 1} or {2, 3}),
    weights 0.5 each, with four different experts."""
    def fill(mlp):
        w = mlp.gate.weight
        w[1] = w[0]
        w[2:] = 0
    m = _mixtral_with_gate(fill)
    em = from_pretrained(save(m, tmp_path), device=DEVICE)
    ids = ids_for(m)
    x = engine.randn(SEQ, m.config.hidden_size, generator=engine.Generator(0), device=DEVICE)
    weights, experts = em.model.layers[0].block_sparse_moe.route(x)
    assert np.allclose(weights.numpy(), 0.5)
    pairs = {tuple(sorted(r)) for r in experts.numpy().tolist()}
    assert pairs <= {(0, 1), (2, 3)} and len(pairs) == 2  # both tied pairs occur
    assert_fp32_close(*hf_run(m, ids), *engine_run(em, ids))


def test_moe_routing_tie_at_the_top2_boundary(tmp_path):
    """Gate rows 0 = 1 = 2 and experts 0, 1, 2 identical: the tie at the top-2 boundary may be broken
    either way without changing the output. The engine keeps the lowest index."""
    def fill(mlp):
        mlp.gate.weight[1] = mlp.gate.weight[0]
        mlp.gate.weight[2] = mlp.gate.weight[0]
        for name in ("gate_up_proj", "down_proj"):
            p = getattr(mlp.experts, name)
            p[1] = p[0]
            p[2] = p[0]
    m = _mixtral_with_gate(fill)
    em = from_pretrained(save(m, tmp_path), device=DEVICE)
    x = engine.randn(64, m.config.hidden_size, generator=engine.Generator(1), device=DEVICE)
    _, experts = em.model.layers[0].block_sparse_moe.route(x)
    e = experts.numpy()
    # a three-way tie that does not win outright is always cut to experts (0, 1) or (3, 0)
    assert {tuple(r) for r in e.tolist()} <= {(0, 1), (3, 0), (0, 3)}
    ids = ids_for(m)
    assert_fp32_close(*hf_run(m, ids), *engine_run(em, ids))


# ---- reduced precision ------------------------------------------------------------------------------------
def _max_err(a, b):
    return float(np.abs(a - b).max())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("model_type", FAMILIES)
def test_reduced_precision_error_within_ratio_of_torch(tmp_path, model_type, dtype):
    """The model is saved in `dtype` (weights rounded once), then loaded three times the way users
    load it: transformers in fp64 (the reference) and in `dtype`, the engine in `dtype`. Errors are
    max abs differences from the fp64 run, for the logits and every layer."""
    d = save(hf_model(model_type).to(TORCH_DT[dtype]), tmp_path)
    kw = dict(attn_implementation="eager", experts_implementation="eager") if model_type == "mixtral" \
        else dict(attn_implementation="eager")
    m64 = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64, **kw).eval()
    m16 = AutoModelForCausalLM.from_pretrained(d, dtype=TORCH_DT[dtype], **kw).eval()
    ids = ids_for(m16)
    ref, tor = hf_run(m64, ids), hf_run(m16, ids)
    em = from_pretrained(d, device=DEVICE)
    assert em.dtype.name == dtype
    eng = engine_run(em, ids)
    rows = [("logits", _max_err(ref[0], tor[0]), _max_err(ref[0], eng[0]))]
    rows += [(k, _max_err(ref[1][k], tor[1][k]), _max_err(ref[1][k], eng[1][k])) for k in ref[1]]
    bad = [(k, t, e) for k, t, e in rows if e > REDUCED_ERROR_RATIO * t + 1e-12]
    assert not bad, f"engine error above {REDUCED_ERROR_RATIO} x torch's: {bad}"
    assert rows[0][1] > 0  # the reduced run really is reduced


def _max_err(a, b):
    return float(np.abs(a - b).max())


# ---- loading errors ----------------------------------------------------------------------------------------
def test_missing_and_unexpected_keys_listed_sorted_with_shapes(tmp_path):
    from safetensors.torch import load_file, save_file
    m = hf_model("llama")
    d = save(m, tmp_path)
    sd = load_file(d / "model.safetensors")
    del sd["model.layers.1.mlp.up_proj.weight"], sd["model.layers.0.input_layernorm.weight"]
    sd["model.layers.0.self_attn.q_proj.weight"] = sd["model.layers.0.self_attn.q_proj.weight"][:, :32].contiguous()
    sd["model.extra.weight"] = torch.zeros(3, 2)
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(StateDictError) as e:
        from_pretrained(d)
    msg = str(e.value)
    assert "missing    model.layers.0.input_layernorm.weight (64,)" in msg
    assert "missing    model.layers.1.mlp.up_proj.weight (128, 64)" in msg
    assert msg.index("model.layers.0.input_layernorm") < msg.index("model.layers.1.mlp.up_proj")
    assert "unexpected model.extra.weight (3, 2)" in msg
    assert "model.layers.0.self_attn.q_proj.weight: checkpoint (64, 32) vs model (64, 64)" in msg


def test_missing_weights_file_names_the_file(tmp_path):
    m = hf_model("llama")
    d = save(m, tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        from_pretrained(d)
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_pretrained(tmp_path / "nowhere")


def test_old_style_config_and_inv_freq_keys(tmp_path):
    """A config written the transformers-4 way (rope_theta, rope_scaling) and a checkpoint carrying
    rotary_emb.inv_freq buffers (older conversions) load."""
    from safetensors.torch import load_file, save_file
    m = hf_model("llama", dict(rope_scaling={"rope_type": "linear", "factor": 2.0}, rope_theta=20000.0))
    d = save(m, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp.pop("rope_theta")
    cfg["rope_scaling"] = {"type": rp["rope_type"], "factor": rp["factor"]}
    (d / "config.json").write_text(json.dumps(cfg))
    sd = load_file(d / "model.safetensors")
    sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(16)
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    em = from_pretrained(d, device=DEVICE)
    assert em.model.rotary_emb.rope_type == "linear" and em.config.rope()["rope_theta"] == 20000.0
    ids = ids_for(m)
    assert_fp32_close(*hf_run(m, ids), *engine_run(em, ids))


def test_presets_build_and_run():
    for mt in FAMILIES:
        cls = model_class(mt)
        assert "tiny" in cls.PRESETS and len(cls.PRESETS) >= 2
        em = cls.from_preset("tiny", device=DEVICE)
        out = em(engine.tensor([[1, 2, 3]], device=DEVICE))
        assert out.shape == (1, 3, em.config.vocab_size) and out.dtype is engine.float32
        assert np.isfinite(out.numpy()).all()
