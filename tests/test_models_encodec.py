"""EnCodec (engine.models.encodec) against transformers' EncodecModel built from the same config with the
same random weights (weight-normalised: g scaled away from ||v|| so folding matters; codebooks drawn at
the encoder output's scale so every stage picks different codewords), ported through
migration.port.port_hf (HF_MODELS["encodec"] rules), on real speech (tests/fixtures/speech_16k.wav
resampled to 24 kHz by engine.audio).

Codes: identical. Encoder output and decoded audio: max abs error <= 1e-4 x the reference's max |y|.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import EncodecConfig
from transformers import EncodecModel as HFEncodec

from engine import audio
from engine.layout import ShapeError
from engine.models import from_preset, model_class
from engine.nn import StateDictError
from helpers import DEVICE
from migration.port import PortError, port_hf

FP32_REL = 1e-4
SPEECH = "tests/fixtures/speech_16k.wav"
PRESETS = model_class("encodec").PRESETS


def speech_24k(seconds: float) -> np.ndarray:
    x, sr = audio.read_wav(SPEECH)
    x = audio.resample(x, sr, 24_000)
    start = len(x) // 4  # skip the leading silence
    return np.ascontiguousarray(x[start:start + int(seconds * 24_000)])


def hf_encodec(preset="tiny", seed=0, **overrides):
    torch.manual_seed(seed)
    hf = HFEncodec(EncodecConfig(**{**PRESETS[preset], **overrides})).eval()
    probe = torch.tensor(speech_24k(0.05)).reshape(1, 1, -1).repeat(1, hf.config.audio_channels, 1)
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if n.endswith("original0"):  # weight-norm g: away from ||v|| so that folding is exercised
                p.mul_(torch.rand_like(p) + 0.5)
        std = hf.encoder(probe).std()
        for i, layer in enumerate(hf.quantizer.layers):  # later stages see smaller residuals
            layer.codebook.embed.copy_(torch.randn_like(layer.codebook.embed) * std / (1 + i))
    return hf


def compare(hf, x: np.ndarray, bandwidth: float):
    """x (B, C, L): engine vs transformers; codes identical, encoder output and audio within fp32."""
    m = port_hf(hf, device=DEVICE).model
    t = torch.tensor(x)
    with torch.no_grad():
        ref = hf.encode(t, bandwidth=bandwidth)
        ref_emb = hf.encoder(t if not hf.config.normalize else t / ref.audio_scales[0].view(-1, 1, 1))
        ref_dec = hf.decode(ref.audio_codes, ref.audio_scales)[0].numpy()
    emb, _ = m.embed(x)
    np.testing.assert_allclose(emb.numpy(), ref_emb.numpy(), rtol=0, atol=FP32_REL * np.abs(ref_emb.numpy()).max())
    codes, scale = m.encode(x, bandwidth)
    np.testing.assert_array_equal(codes.numpy(), ref.audio_codes[0].numpy())
    dec = m.decode(codes, scale).numpy()
    assert dec.shape == ref_dec.shape
    np.testing.assert_allclose(dec, ref_dec, rtol=0, atol=FP32_REL * np.abs(ref_dec).max())
    return codes


def mono(seconds, batch=1):
    x = speech_24k(seconds)
    return np.stack([x * (1 - 0.3 * b) for b in range(batch)])[:, None, :].astype(np.float32)


# ---- parity, tiny configs -----------------------------------------------------------------------------
def test_tiny_causal_reflect():                  compare(hf_encodec(), mono(0.02), 120.0)
def test_tiny_bandwidth_1_codebook():            compare(hf_encodec(), mono(0.02), 30.0)
def test_tiny_batch_2():                         compare(hf_encodec(), mono(0.02, batch=2), 60.0)
def test_tiny_odd_length():                      compare(hf_encodec(), mono(0.02)[..., :479], 120.0)
def test_tiny_shorter_than_reflect_pad():        compare(hf_encodec(), mono(0.02)[..., :3], 120.0)
def test_tiny_non_causal_constant_pad():         compare(hf_encodec(use_causal_conv=False, pad_mode="constant"), mono(0.02)[..., :481], 120.0)
def test_tiny_non_causal_reflect():              compare(hf_encodec(use_causal_conv=False), mono(0.02), 120.0)
def test_tiny_normalize():                       compare(hf_encodec(normalize=True), mono(0.02), 120.0)
def test_tiny_two_res_layers_no_shortcut():      compare(hf_encodec(num_residual_layers=2, use_conv_shortcut=False), mono(0.02), 120.0)
def test_tiny_one_lstm_layer_trim_half():        compare(hf_encodec(num_lstm_layers=1, trim_right_ratio=0.5), mono(0.02), 120.0)
def test_tiny_stereo():                          compare(hf_encodec(audio_channels=2), (np.repeat(mono(0.02), 2, axis=1) * [[[1.0], [0.5]]]).astype(np.float32), 120.0)


# ---- the 24 kHz model (transformers' default config) ------------------------------------------------------
def test_24khz_bandwidths():
    cfg = model_class("encodec").Config()
    hf = HFEncodec(EncodecConfig())
    got = {bw: cfg.quantizers_for(bw) for bw in cfg.target_bandwidths}
    assert got == {bw: hf.quantizer.get_num_quantizers_for_bandwidth(bw) for bw in cfg.target_bandwidths}
    assert got == {1.5: 2, 3.0: 4, 6.0: 8, 12.0: 16, 24.0: 32} and cfg.num_quantizers == 32 and cfg.frame_rate == 75


def test_24khz_speech_6kbps():
    codes = compare(hf_encodec("encodec_24khz"), mono(1.0), 6.0)
    assert codes.shape == (1, 8, 75)


# ---- the rules, loading and bad input -------------------------------------------------------------------
def test_port_rules_fold_and_drop():
    p = port_hf(hf_encodec())
    kinds = {s.rule for s in p.steps}
    assert "fold_weight_norm(dim=0)" in kinds and "drop" in kinds
    dropped = {s.sources[0].rsplit(".", 1)[-1] for s in p.steps if s.rule == "drop"}
    assert dropped == {"embed_avg", "cluster_size", "inited"}


def test_saved_checkpoint_through_port(tmp_path):
    hf = hf_encodec()
    hf.save_pretrained(tmp_path)
    x = mono(0.01)
    with torch.no_grad():
        ref = hf.encode(torch.tensor(x), bandwidth=60.0).audio_codes[0].numpy()
    np.testing.assert_array_equal(port_hf(tmp_path).model.encode(x, 60.0)[0].numpy(), ref)


def test_unfolded_checkpoint_is_rejected_by_name(tmp_path):
    hf_encodec().save_pretrained(tmp_path)
    with pytest.raises(StateDictError, match="original0|weight_g"):
        model_class("encodec").from_pretrained(tmp_path)


def test_bad_bandwidth():
    with pytest.raises(ValueError, match="bandwidth 7.0 kbps is not one of"):
        from_preset("encodec", "tiny").encode(mono(0.01), 7.0)


def test_bad_audio_shape():
    with pytest.raises(ShapeError, match=r"audio must be \(B, 1, L\)"):
        from_preset("encodec", "tiny").encode(np.zeros((2, 2, 100), np.float32), 30.0)


def test_too_many_codebooks():
    with pytest.raises(ShapeError, match="codes have 5 codebooks, the model has 4"):
        from_preset("encodec", "tiny").decode(np.zeros((1, 5, 3), np.int64))


def test_chunked_config_not_built():
    with pytest.raises(PortError, match="chunk_length_s"):
        port_hf(HFEncodec(EncodecConfig(**PRESETS["tiny"], chunk_length_s=0.01, overlap=0.01)))
