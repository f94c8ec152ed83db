"""The Q4_K / Q6_K quantisers (engine/quantizers.py, llama.cpp's reference algorithm) and the streaming GGUF writer.

Oracles: gguf-py's own numpy dequantiser (gguf.quants.dequantize) reads back what we wrote; the error
is judged against the float weights and against gguf-py's own Q4_0 / Q4_1 / Q8_0 quantisers on the
same data (a k-quant must beat the legacy format of the same width).
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="pip install gguf (the test extra brings it)")
from gguf import GGMLQuantizationType as G  # noqa: E402

from engine.io.gguf import mix_qtype, quantize_matrix  # noqa: E402
from engine.quantizers import quantize as quantize_k  # noqa: E402


def rel_rms(q: str, a: np.ndarray) -> float:
    back = gguf.quants.dequantize(quantize_matrix(a, q), G[q.upper()])
    assert back.shape == a.shape
    return float(np.sqrt(np.mean((back - a) ** 2)) / np.sqrt(np.mean(a ** 2)))


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((64, 1024)) * 0.02).astype(np.float32)
    a[:8] *= np.linspace(0.1, 10, 1024, dtype=np.float32)  # rows whose scale drifts across super-blocks
    a[8:16] = (rng.standard_t(3, (8, 1024)) * 0.01).astype(np.float32)  # heavy tails (outliers)
    return a


def test_q4_k_round_trips_through_gguf_py_and_beats_q4_1(weights):
    e = {q: rel_rms(q, weights) for q in ("q4_0", "q4_1", "q4_k")}
    assert e["q4_k"] < e["q4_1"] < e["q4_0"], e
    assert e["q4_k"] < 0.08, e  # 4-bit on Gaussian weights: ~6.7% (q4_1 7.3%, q4_0 8.0%)


def test_q6_k_round_trips_through_gguf_py_between_q4_and_q8(weights):
    e = {q: rel_rms(q, weights) for q in ("q4_k", "q6_k", "q8_0")}
    assert e["q8_0"] < e["q6_k"] < e["q4_k"] / 3, e
    assert e["q6_k"] < 0.02, e


@pytest.mark.parametrize("q", ["q8_0", "q4_0", "q4_1"])
def test_legacy_quantisers_equal_gguf_py_bit_for_bit(weights, q):
    """The array-module versions (what runs on a cupy array) against gguf-py's numpy quantisers."""
    a = np.concatenate([weights, np.zeros((2, 1024), np.float32), np.full((1, 1024), -0.3, np.float32)])
    a[-4, 5] = 0.5  # a tie for roundf
    np.testing.assert_array_equal(quantize_k(a, q), gguf.quants.quantize(a, G[q.upper()]))


@pytest.mark.parametrize("q", ["q4_k", "q6_k"])
def test_degenerate_blocks(q):
    """All-zero super-blocks, constant sub-blocks (positive, negative) and a lone spike come back
    finite and close: ggml's early exits (max == min, GROUP_MAX_EPS) are taken."""
    a = np.zeros((4, 512), np.float32)
    a[1, :256] = 0.25
    a[1, 256:] = -0.5
    a[2, 7] = 3.0
    a[3] = np.linspace(-1, 1, 512, dtype=np.float32)
    raw = quantize_k(a, q)
    assert raw.shape == (4, 2 * (144 if q == "q4_k" else 210)) and raw.dtype == np.uint8
    back = gguf.quants.dequantize(raw, G[q.upper()])
    assert np.isfinite(back).all()
    np.testing.assert_array_equal(back[0], 0)
    tol = 0.06 if q == "q4_k" else 0.02
    np.testing.assert_allclose(back, a, atol=tol)
    assert abs(back[2, 7] - 3.0) < 3.0 * tol


def test_quantize_k_is_tiled_and_checks_shapes(monkeypatch):
    import engine.quantizers as qk
    a = (np.random.default_rng(1).standard_normal((37, 512)) * 0.1).astype(np.float32)
    whole = quantize_k(a, "q4_k")
    monkeypatch.setattr(qk, "TILE_WEIGHTS", 512 * 5)  # 5 rows a tile: the blocks do not depend on the tiling
    np.testing.assert_array_equal(quantize_k(a, "q4_k"), whole)
    with pytest.raises(ValueError, match=r"q6_k: needs a 2-d matrix with rows of a multiple of 256 weights, got shape \(4, 96\)"):
        quantize_k(np.zeros((4, 96), np.float32), "q6_k")


def test_q4_k_m_mix_is_llama_quantize_recipe():
    n = 32  # Llama-2-7B's layer count: Q6_K for attn_v / ffn_down in layers 0-3, 28-31 and every third between
    six = [i for i in range(n) if mix_qtype(f"model.layers.{i}.mlp.down_proj.weight", (4096, 11008), "q4_k_m", n) == "q6_k"]
    assert six == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert mix_qtype("model.layers.6.self_attn.v_proj.weight", (4096, 4096), "q4_k_m", n) == "q6_k"
    assert mix_qtype("model.layers.6.self_attn.q_proj.weight", (4096, 4096), "q4_k_m", n) == "q4_k"
    assert mix_qtype("lm_head.weight", (32000, 4096), "q4_k_m", n) == "q6_k"
    assert mix_qtype("model.embed_tokens.weight", (32000, 4096), "q4_k_m", n) == "q4_k"
    assert mix_qtype("model.norm.weight", (4096,), "q4_k_m", n) is None
    # rows that are not whole super-blocks fall back; rows that are not whole 32-blocks stay F32
    assert mix_qtype("model.layers.0.mlp.up_proj.weight", (1536, 576), "q4_k", 30) == "q4_1"
    assert mix_qtype("model.layers.0.mlp.down_proj.weight", (576, 1536), "q4_k_m", 30) == "q6_k"
    assert mix_qtype("model.layers.0.self_attn.v_proj.weight", (64, 576), "q6_k", 30) == "q8_0"
    assert mix_qtype("model.layers.0.self_attn.v_proj.weight", (64, 40), "q6_k", 30) is None


_PEAK = r"""
import json, resource, sys, tempfile
from pathlib import Path
import numpy as np
from migration.quantize import quantize_to_gguf
src = Path(sys.argv[1])
def status(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1])
try:
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to now: the imports' peak is not ours
except OSError as e:
    print(json.dumps({"skip": f"cannot reset the peak resident set here: {e}"}))
    sys.exit(0)
base = status("VmRSS:")
quantize_to_gguf(src, Path(tempfile.mkdtemp()) / "m.gguf", sys.argv[2])
print(json.dumps({"base_kib": base, "peak_kib": status("VmHWM:")}))
"""


def test_quantising_streams_one_tensor_at_a_time(tmp_path):
    """A model of 4 MiB matrices, 92 MiB in all (float32), quantised in a fresh process: the resident
    set grows by about one tensor and its tile temporaries, not by the model."""
    from engine.io.safetensors import save_file
    rng = np.random.default_rng(0)
    cfg = dict(model_type="llama", vocab_size=2048, hidden_size=1024, intermediate_size=1024, num_hidden_layers=3,
               num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=64, tie_word_embeddings=False)
    names = ["model.embed_tokens.weight", "lm_head.weight"] + [
        f"model.layers.{i}.{n}.weight" for i in range(3) for n in (
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
            "mlp.up_proj", "mlp.down_proj")]
    sd = {n: (rng.standard_normal((2048 if "embed" in n or "lm_head" in n else 1024, 1024)) * 0.02).astype(np.float32)
          for n in names}
    sd.update({f"model.layers.{i}.{n}.weight": np.ones(1024, np.float32) for i in range(3)
               for n in ("input_layernorm", "post_attention_layernorm")})
    sd["model.norm.weight"] = np.ones(1024, np.float32)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file(sd, tmp_path / "model.safetensors")
    model_mib = sum(a.nbytes for a in sd.values()) / 2 ** 20
    del sd
    r = subprocess.run([sys.executable, "-c", _PEAK, str(tmp_path), "q8_0"], capture_output=True, text=True, check=True)
    got = json.loads(r.stdout.strip().splitlines()[-1])
    if "skip" in got:
        pytest.skip(got["skip"])
    grew_mib = (got["peak_kib"] - got["base_kib"]) / 1024
    assert model_mib > 90 and grew_mib < 30, (model_mib, grew_mib)  # one tensor is 8 MiB


@pytest.mark.parametrize("q", ["q8_0", "q4_k_m"])
def test_quantize_module_equals_writing_and_loading_the_gguf(tmp_path, q):
    """engine.quant.quantize_module (the benchmark's in-memory path) gives the blocks a GGUF file written
    by the converter gives after loading: the same logits, bit for bit."""
    import dataclasses

    import engine
    from engine import models
    from engine.io.gguf import save_gguf
    from engine.quant import QuantWeight, quantize_module
    m = models.from_preset("llama", "tiny", hidden_size=256, intermediate_size=512, seed=3)
    sd = {k: v.numpy() for k, v in m.state_dict().items()}
    cfg = {**dataclasses.asdict(m.config), "model_type": "llama"}
    path = save_gguf(tmp_path / "m.gguf", cfg, sd, q)
    formats = quantize_module(m, q)
    assert set(formats) == {k for k, v in sd.items() if v.ndim == 2}
    assert isinstance(m.model.layers[1].mlp.down_proj.weight, QuantWeight)
    if q == "q4_k_m":
        assert formats["model.layers.1.mlp.down_proj.weight"] == "q6_k" and formats["lm_head.weight"] == "q6_k"
        assert formats["model.layers.0.mlp.down_proj.weight"] == "q4_k"
    ids = engine.tensor(np.random.default_rng(0).integers(0, 256, (1, 9)))
    np.testing.assert_array_equal(m(ids).numpy(), models.from_pretrained(path)(ids).numpy())
