"""`taper convert --quantize` (safetensors llama directory -> GGUF) and `taper verify --candidate-gguf`
(the accuracy cost of quantisation against the unquantised reference).

Oracles: transformers loading the written GGUF (`gguf_file=`, its own dequantiser and q/k unpermute);
gguf-py's numpy dequantiser on the file's raw blocks; the float model the file was quantised from.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="pip install gguf (the test extra brings it)")

import engine  # noqa: E402
from engine import models  # noqa: E402
from engine.quant import QuantWeight  # noqa: E402
from taper.cli import main  # noqa: E402

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


def test_convert_quantize_errors(tiny_dir, tmp_path, capsys):
    out = quantize(tiny_dir, tmp_path, "q8_0")
    assert main(["convert", str(tiny_dir), str(out), "--quantize", "q8_0"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["convert", str(tiny_dir), str(out), "--quantize", "q8_0", "--overwrite", "--quiet"]) == 0
    assert main(["convert", str(tiny_dir), str(tmp_path / "x.gguf"), "--quantize", "q4_k"]) == 2
    err = capsys.readouterr().err
    assert "q4_k" in err and "no Q4_K quantiser" in err and "q8_0, q4_0, q4_1" in err
    assert main(["convert", str(tiny_dir), str(tmp_path / "x.gguf"), "--quantize", "int3"]) == 2
    assert "supported: q8_0, q4_0, q4_1" in capsys.readouterr().err
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "gpt2"}')
    assert main(["convert", str(other), str(tmp_path / "y.gguf"), "--quantize", "q8_0"]) == 2
    assert "model_type 'gpt2'" in capsys.readouterr().err and not (tmp_path / "y.gguf").exists()
