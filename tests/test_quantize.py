"""`taper convert --quantize` (safetensors llama directory -> GGUF) and `taper verify --candidate-gguf`
(the accuracy cost of quantisation against the unquantised reference).

Oracles: transformers loading the written GGUF (`gguf_file=`, its own dequantiser and q/k unpermute);
gguf-py's numpy dequantiser on the file's raw blocks; the float model the file was quantised from.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="pip install gguf (the test extra brings it)")

import engine  # noqa: E402
from engine import models  # noqa: E402
from engine.quant import QuantWeight  # noqa: E402
from taper.cli import main  # noqa: E402
from test_gguf import spm_oracle  # noqa: E402

pytestmark = pytest.mark.usefixtures("exact_dot_route")  # engine vs transformers at fp32 tolerance, on CUDA too

os.environ.setdefault("HF_HUB_OFFLINE", "1")
FP32_REL = 1e-4  # as tests/test_gguf.py: max abs error <= 1e-4 x the reference logits' range


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random transformers llama (GQA, so q and k permute apart) saved as safetensors."""
    from test_gguf import tiny_hf
    m = tiny_hf()
    d = tmp_path_factory.mktemp("q") / "tiny-llama"
    m.save_pretrained(d, safe_serialization=True)
    return d


def quantize(tiny_dir, tmp_path, q, *extra):
    out = tmp_path / f"tiny.{q}.gguf"
    assert main(["convert", str(tiny_dir), str(out), "--quantize", q, "--quiet", *extra]) == 0
    return out


def module(m, key):
    for part in key.split(".")[:-1]:
        m = m[int(part)] if part.isdigit() else getattr(m, part)
    return getattr(m, key.rsplit(".", 1)[1])


@pytest.mark.parametrize("q", ["q8_0", "q4_0", "q4_1"])
def test_convert_quantize_loads_in_engine_and_transformers(tiny_dir, tmp_path, q):
    import torch
    from test_gguf import hf_from_gguf
    path = quantize(tiny_dir, tmp_path, q)
    em = models.from_pretrained(path)
    ref = hf_from_gguf(path)
    sd = ref.state_dict()
    reader = gguf.GGUFReader(str(path))
    raw = {t.name: t for t in reader.tensors}
    # norms stay F32, every matrix (embedding and lm_head included) is quantised
    assert raw["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    for name in ("token_embd.weight", "output.weight", "blk.1.ffn_down.weight", "blk.0.attn_q.weight"):
        assert raw[name].tensor_type == gguf.GGMLQuantizationType[q.upper()], name
    # the engine's dequantised weights: equal to gguf-py's dequantiser and to transformers'
    w = module(em, "model.layers.1.mlp.down_proj.weight")
    assert isinstance(w, QuantWeight)
    t = raw["blk.1.ffn_down.weight"]
    np.testing.assert_array_equal(w.dequantize().numpy(), gguf.quants.dequantize(t.data, t.tensor_type))
    for key in ("model.layers.1.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                "model.embed_tokens.weight", "lm_head.weight"):
        np.testing.assert_array_equal(module(em, key).dequantize().numpy(), sd[key].numpy(), err_msg=key)
    ids = np.random.default_rng(0).integers(0, 256, (2, 12))
    with torch.no_grad():
        want = ref(torch.tensor(ids)).logits.double().numpy()
    got = em(engine.tensor(ids)).numpy()
    assert np.abs(got - want).max() <= FP32_REL * np.ptp(want)


@pytest.fixture(scope="module")
def tiny_k_dir(tmp_path_factory):
    """A tiny llama whose rows are whole 256-weight super-blocks (hidden 256, intermediate 512), so the
    k-quants apply to every matrix."""
    from test_models_llm import hf_model
    m = hf_model("llama", dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2))
    d = tmp_path_factory.mktemp("qk") / "tiny-llama-k"
    m.save_pretrained(d, safe_serialization=True)
    return d


@pytest.mark.parametrize("q", ["q4_k", "q6_k", "q4_k_m"])
def test_convert_k_quants_load_in_engine_and_transformers(tiny_k_dir, tmp_path, q):
    """Our Q4_K / Q6_K blocks: read by transformers through gguf-py's dequantiser, equal to the engine's
    dequantisation, logits alike; q4_k_m puts Q6_K where llama-quantize's recipe does (2 layers: the last)."""
    import torch
    from test_gguf import hf_from_gguf
    path = quantize(tiny_k_dir, tmp_path, q)
    reader = gguf.GGUFReader(str(path))
    raw = {t.name: t for t in reader.tensors}
    want = {"q4_k": dict.fromkeys(("blk.0.ffn_down", "blk.1.ffn_down", "blk.1.attn_v", "output", "blk.0.attn_q"), "Q4_K"),
            "q6_k": dict.fromkeys(("blk.0.ffn_down", "blk.1.ffn_down", "blk.1.attn_v", "output", "blk.0.attn_q"), "Q6_K"),
            "q4_k_m": {"blk.0.ffn_down": "Q4_K", "blk.1.ffn_down": "Q6_K", "blk.1.attn_v": "Q6_K", "blk.0.attn_v": "Q4_K",
                       "output": "Q6_K", "blk.0.attn_q": "Q4_K", "token_embd": "Q4_K"}}[q]
    for name, t in want.items():
        assert raw[name + ".weight"].tensor_type.name == t, name
    em = models.from_pretrained(path)
    ref = hf_from_gguf(path)
    sd = ref.state_dict()
    for key in ("model.layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight", "lm_head.weight"):
        np.testing.assert_array_equal(module(em, key).dequantize().numpy(), sd[key].numpy(), err_msg=key)
    ids = np.random.default_rng(0).integers(0, 256, (2, 12))
    with torch.no_grad():
        want_logits = ref(torch.tensor(ids)).logits.double().numpy()
    got = em(engine.tensor(ids)).numpy()
    assert np.abs(got - want_logits).max() <= FP32_REL * np.ptp(want_logits)


def test_convert_quantize_errors(tiny_dir, tmp_path, capsys):
    out = quantize(tiny_dir, tmp_path, "q8_0")
    assert main(["convert", str(tiny_dir), str(out), "--quantize", "q8_0"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["convert", str(tiny_dir), str(out), "--quantize", "q8_0", "--overwrite", "--quiet"]) == 0
    assert main(["convert", str(tiny_dir), str(tmp_path / "x.gguf"), "--quantize", "q5_k"]) == 2
    err = capsys.readouterr().err
    assert "'q5_k' (the engine does not compute with Q5_K)" in err and "q8_0, q4_0, q4_1, q4_k, q6_k, q4_k_m" in err
    assert main(["convert", str(tiny_dir), str(tmp_path / "x.gguf"), "--quantize", "int3"]) == 2
    assert "supported: q8_0, q4_0, q4_1, q4_k, q6_k, q4_k_m" in capsys.readouterr().err
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "gpt2"}')
    assert main(["convert", str(other), str(tmp_path / "y.gguf"), "--quantize", "q8_0"]) == 2
    assert "model_type 'gpt2'" in capsys.readouterr().err and not (tmp_path / "y.gguf").exists()


# ---- taper verify --candidate-gguf: the accuracy cost ------------------------------------------------------
def test_verify_reports_the_cost_of_quantising(tiny_dir, tmp_path, capsys):
    import json
    from migration.verify_quant import perplexity, verify_quantized
    reps = {q: verify_quantized(tiny_dir, quantize(tiny_dir, tmp_path, q)) for q in ("q8_0", "q4_0")}
    for q, rep in reps.items():
        assert rep.passed, q
        figures = [rep.kl, rep.top1_agreement, rep.perplexity["reference"], rep.perplexity["candidate"]]
        assert all(np.isfinite(figures)), (q, figures)
        assert 0 < rep.kl and rep.top1_agreement <= 1
        assert rep.perplexity["reference"] > 1 and rep.perplexity["text"].startswith("64 seeded token ids")
        layers = {r.name: r for r in rep.layers}
        assert "model.layers.1.mlp.down_proj" in layers and "<output>" in layers
        assert 0 < layers["<output>"].max_abs < np.inf
    a, b = reps["q8_0"], reps["q4_0"]
    assert a.kl < b.kl and a.layers[-1].cosine >= b.layers[-1].cosine  # 8 bits cost less than 4
    assert abs(a.perplexity["candidate"] - a.perplexity["reference"]) < abs(b.perplexity["candidate"]
                                                                            - b.perplexity["reference"])
    assert a.top1_agreement >= b.top1_agreement
    # the perplexity is the real next-token cross-entropy of the reference model's logits
    em = models.from_pretrained(tiny_dir)
    ids = np.random.default_rng(0).integers(0, em.config.vocab_size, (1, 64))
    assert perplexity(em(engine.tensor(ids)).numpy(), ids) == pytest.approx(a.perplexity["reference"], rel=1e-6)
    # the CLI: verdict lines, JSON, --max-kl
    g4 = tmp_path / "tiny.q4_0.gguf"
    assert main(["verify", str(tiny_dir), "--candidate-gguf", str(g4), "--quiet", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "perplexity on 64 seeded token ids" in out and "top-1 agreement" in out
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary["kl"] == pytest.approx(b.kl) and summary["perplexity"]["candidate"] == pytest.approx(
        b.perplexity["candidate"])
    assert main(["verify", str(tiny_dir), "--candidate-gguf", str(g4), "--quiet", "--max-kl", str(b.kl / 2)]) == 1
    assert "exceeds --max-kl" in capsys.readouterr().out
    assert main(["verify", str(tiny_dir), "--candidate-gguf", str(tmp_path / "none.gguf")]) == 2
    assert "not a .gguf file" in capsys.readouterr().err


def test_tokenizer_travels_into_the_gguf(tmp_path):
    """A byte-level BPE tokenizer.json (trained here on a few sentences) goes into tokenizer.ggml.*:
    the GGUF's tokenizer (the engine's and transformers') encodes the fixed text to the same ids,
    and verify then measures perplexity on that text."""
    from tokenizers import Tokenizer, decoders, models as tmodels, pre_tokenizers, trainers
    from transformers import AutoTokenizer
    from test_models_llm import hf_model
    from engine.generation import load_tokenizer
    from migration.verify_quant import FIXED_TEXT, MAX_TOKENS, verify_quantized
    tok = Tokenizer(tmodels.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([FIXED_TEXT, "the keeper and the light, the ships and the water"] * 4,
                            trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    d = tmp_path / "tok-llama"
    hf_model("llama", dict(vocab_size=tok.get_vocab_size())).save_pretrained(d)
    tok.save(str(d / "tokenizer.json"))
    out = tmp_path / "t.gguf"
    assert main(["convert", str(d), str(out), "--quantize", "q8_0", "--quiet"]) == 0
    want = tok.encode(FIXED_TEXT).ids
    assert len(want) < len(FIXED_TEXT.encode()) / 2  # merges were learnt and used
    assert load_tokenizer(out).encode(FIXED_TEXT).ids == want
    hf_tok = AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    assert hf_tok(FIXED_TEXT, add_special_tokens=False)["input_ids"] == want
    rep = verify_quantized(d, out)
    assert rep.perplexity["text"].startswith("the fixed text") and rep.perplexity["tokens"] == min(len(want), MAX_TOKENS)
    assert np.isfinite(rep.perplexity["candidate"]) and rep.kl > 0


def test_qwen2_converts_loads_and_tokenizes_as_transformers(tmp_path):
    """A tiny random Qwen2 (q/k/v biases, tied embeddings) with a byte-level BPE tokenizer that splits as Qwen2's
    does (digits one at a time; transformers' own regex) through `taper convert --quantize q8_0`: llama.cpp's
    qwen2 architecture (q/k rows not permuted, tokenizer.ggml.pre 'qwen2'); the engine's weights are
    transformers' dequantised ones bit for bit, logits agree to fp32 rounding, and the engine's and
    transformers' GGUF tokenizers give the source tokenizer's ids."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models as tmodels, pre_tokenizers, trainers
    from transformers import AutoTokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
    from test_gguf import hf_from_gguf
    from test_models_llm import hf_model
    from engine.generation import load_tokenizer
    from engine.io import gguf_tokenizer as G
    from migration.verify_quant import FIXED_TEXT
    assert G._PRE_SPLITS["qwen2"] == PRETOKENIZE_REGEX
    tok = Tokenizer(tmodels.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([FIXED_TEXT, "the keeper and the light, 1200 ships and 345 waves"] * 4,
                            trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    m = hf_model("qwen2", dict(vocab_size=tok.get_vocab_size(), tie_word_embeddings=True))
    assert m.model.layers[0].self_attn.q_proj.bias is not None
    d = tmp_path / "tiny-qwen2"
    m.save_pretrained(d)
    tok.save(str(d / "tokenizer.json"))
    out = tmp_path / "qwen2.gguf"
    assert main(["convert", str(d), str(out), "--quantize", "q8_0", "--quiet"]) == 0
    r = gguf.GGUFReader(str(out))
    assert bytes(r.fields["general.architecture"].parts[-1]).decode() == "qwen2"
    assert bytes(r.fields["tokenizer.ggml.pre"].parts[-1]).decode() == "qwen2"
    text = FIXED_TEXT + " 12345 waves"
    want = tok.encode(text).ids
    assert load_tokenizer(out).encode(text).ids == want
    assert AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)(text, add_special_tokens=False)["input_ids"] == want
    em, ref = models.from_pretrained(out), hf_from_gguf(out)
    assert em.config.model_type == "qwen2" and em.config.tie_word_embeddings
    sd = ref.state_dict()
    for key in ("model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.bias",
                "model.layers.0.self_attn.v_proj.bias", "model.layers.0.mlp.down_proj.weight"):
        w = module(em, key)
        got = w.dequantize().numpy() if isinstance(w, QuantWeight) else w.numpy()
        np.testing.assert_array_equal(got, sd[key].numpy(), err_msg=key)
    ids = np.array([want[:12], want[12:24]])
    with torch.no_grad():
        ref_logits = ref(torch.tensor(ids)).logits.double().numpy()
    got = em(engine.tensor(ids)).numpy()
    assert np.abs(got - ref_logits).max() <= FP32_REL * np.ptp(ref_logits)


@spm_oracle
@pytest.mark.parametrize("bos", [True, False])
def test_sentencepiece_tokenizer_travels_into_the_gguf(tmp_path, bos):
    """A SentencePiece BPE tokenizer.json (byte fallback, Metaspace, <s> first or not: the shape of LLaMA-2's and
    Mistral's, its pieces trained here) goes into the GGUF as llama.cpp writes one ('llama', BYTE/UNKNOWN types,
    the merges, add_bos_token): the engine's and transformers' GGUF tokenizers give the source's ids."""
    import json
    from tokenizers import AddedToken, SentencePieceBPETokenizer, Tokenizer, decoders, models as tmodels, \
        pre_tokenizers, processors
    from transformers import AutoTokenizer
    from test_gguf import SPM_TEXTS
    from test_models_llm import hf_model
    from engine.generation import load_tokenizer
    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(["The keeper of the lighthouse watched the ships pass in the night.",
                            "the keeper and the light, the ships and the water, 1200 waves"] * 4, vocab_size=160,
                           min_frequency=1, show_progress=False)
    trained = json.loads(sp._tokenizer.to_str())["model"]
    pieces = [t for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1])]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    src = Tokenizer(tmodels.BPE({t: i for i, t in enumerate(tokens)}, [tuple(m.split(" ")) if isinstance(m, str)
                                else tuple(m) for m in trained["merges"]], unk_token="<unk>", fuse_unk=True,
                                byte_fallback=True))
    src.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    src.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    src.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")])
    if bos:
        src.post_processor = processors.TemplateProcessing(single="<s>:0 $A:0", special_tokens=[("<s>", 1)])
    d = tmp_path / "spm-llama"
    hf_model("llama", dict(vocab_size=len(tokens), bos_token_id=1, eos_token_id=2)).save_pretrained(d)
    src.save(str(d / "tokenizer.json"))
    out = tmp_path / "spm.gguf"
    assert main(["convert", str(d), str(out), "--quantize", "q8_0"]) == 0
    r = gguf.GGUFReader(str(out))
    assert bytes(r.fields["tokenizer.ggml.model"].parts[-1]).decode() == "llama"
    assert bool(r.fields["tokenizer.ggml.add_bos_token"].parts[-1][0]) is bos
    ours, ref = load_tokenizer(out), AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    for t in SPM_TEXTS:
        want = src.encode(t).ids
        assert ours.encode(t).ids == want, t
        assert ref(t).input_ids == want, t
        assert ours.decode(want, skip_special_tokens=True) == src.decode(want, skip_special_tokens=True), t


def test_mixtral_converts_and_verifies(tmp_path):
    """A tiny random Mixtral directory through `taper convert --quantize q8_0` (llama.cpp's layout: architecture
    llama with experts, stacked) and `taper verify --candidate-gguf`: the experts kept quantized, the router F32,
    the cost of quantising reported and small (8 bits)."""
    from test_models_llm import hf_model, save
    d = save(hf_model("mixtral", dict(num_key_value_heads=2)), tmp_path)
    out = tmp_path / "mixtral.gguf"
    assert main(["convert", str(d), str(out), "--quantize", "q8_0", "--quiet"]) == 0
    em = models.from_pretrained(out)
    assert em.config.model_type == "mixtral" and em.config.num_local_experts == 4
    moe = em.model.layers[0].block_sparse_moe
    assert isinstance(moe.experts[2].w3.weight, QuantWeight) and not isinstance(moe.gate.weight, QuantWeight)
    assert main(["verify", str(d), "--candidate-gguf", str(out), "--quiet", "--json", str(tmp_path / "r.json")]) == 0
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary["top1_agreement"] >= 0.9 and 0 < summary["kl"] < 1e-2, summary
