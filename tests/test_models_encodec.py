"""EnCodec (engine.models.encodec) against transformers' EncodecModel built from the same config with the
same random weights (weight-normalised: g scaled away from ||v|| so folding matters; codebooks drawn at
the encoder output's scale so every stage picks different codewords), ported through
migration.port.port_hf (HF_MODELS["encodec"] rules), on real speech (tests/fixtures/speech_16k.wav
resampled to 24 kHz by engine.audio).

Codes: identical. Encoder output and decoded audio: max abs error <= 1e-4 x the reference's max |y|.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from transformers import EncodecConfig
from transformers import EncodecModel as HFEncodec

from engine import audio
from engine.layout import ShapeError
from engine.models import from_pretrained, from_preset, model_class
from engine.nn import StateDictError
from helpers import DEVICE
from migration.port import port_hf

FP32_REL = 1e-4
SPEECH = "tests/fixtures/speech_16k.wav"
PRESETS = model_class("encodec").PRESETS


@functools.lru_cache(maxsize=None)
def speech_at(rate: int) -> np.ndarray:
    """The speech fixture resampled to `rate` (once per rate: the polyphase resampler takes a while)."""
    x, sr = audio.read_wav(SPEECH)
    out = audio.resample(x, sr, rate)
    out.setflags(write=False)
    return out


def speech_24k(seconds: float) -> np.ndarray:
    x = speech_at(24_000)
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
            if ".norm." in n:  # time group norm (48 kHz): affine away from (1, 0)
                p.add_(0.2 * torch.randn_like(p))
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


@pytest.mark.parametrize("form", ["parametrizations", "weight_g"])
def test_unfolded_checkpoint_loads_with_from_pretrained(tmp_path, form):
    """transformers' saved folder (weight-normalised convs: parametrizations.weight.original0/1 as
    transformers 5 saves, or the old weight_g/weight_v names; codebook buffers) loads straight with
    engine.models.from_pretrained: the declared CHECKPOINT_RULES applied at load, codes and audio as
    transformers'."""
    from safetensors.torch import load_file, save_file
    hf = hf_encodec()
    hf.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    assert any(k.endswith("original0") for k in sd) and any(k.endswith("embed_avg") for k in sd)
    if form == "weight_g":
        sd = {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                                "weight_v"): v for k, v in sd.items()}
        save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    m = from_pretrained(tmp_path, device=DEVICE)
    assert type(m).__name__ == "EncodecModel" and "encoder.layers.0.conv.weight" in m.state_dict()
    x = mono(0.01)
    with torch.no_grad():
        ref = hf(torch.tensor(x), bandwidth=120.0)
    codes, dec = m(x, 120.0)
    np.testing.assert_array_equal(codes.numpy(), ref.audio_codes.numpy())
    r = ref.audio_values.numpy()
    np.testing.assert_allclose(dec.numpy(), r, rtol=0, atol=FP32_REL * np.abs(r).max())


def test_from_pretrained_still_strict(tmp_path):
    """After the rules, a key the model does not know is still named (the rules fold and drop only
    what they declare)."""
    from safetensors.torch import load_file, save_file
    hf_encodec().save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    sd["decoder.layers.0.extra"] = sd["decoder.layers.0.conv.bias"].clone()
    del sd["encoder.layers.0.conv.bias"]
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(StateDictError, match=r"(?s)missing +encoder.layers.0.conv.bias \(4,\).*unexpected decoder.layers.0.extra"):
        from_pretrained(tmp_path)


def test_bad_bandwidth():
    with pytest.raises(ValueError, match="bandwidth 7.0 kbps is not one of"):
        from_preset("encodec", "tiny").encode(mono(0.01), 7.0)


def test_bad_audio_shape():
    with pytest.raises(ShapeError, match=r"audio must be \(B, 1, L\)"):
        from_preset("encodec", "tiny").encode(np.zeros((2, 2, 100), np.float32), 30.0)


def test_too_many_codebooks():
    with pytest.raises(ShapeError, match="codes have 5 codebooks, the model has 4"):
        from_preset("encodec", "tiny").decode(np.zeros((1, 5, 3), np.int64))


# ---- chunked stereo models (the 48 kHz layout) -------------------------------------------------------------
# tiny48: the tiny preset in encodec_48khz's layout (stereo, 48 kHz, normalised chunks of 120 samples with
# 1% overlap, time group norm, non-causal); hop 4 -> 12000 frames/s x 5 bits: 60 kbps per codebook
TINY48 = {**PRESETS["tiny"], **PRESETS["encodec_48khz"], "chunk_length_s": 0.0025,
          "target_bandwidths": [60.0, 120.0, 240.0]}


def stereo_48k(seconds, batch=1):
    x = speech_at(48_000)
    x = x[len(x) // 4:len(x) // 4 + int(seconds * 48_000)]
    lr = np.stack([x, 0.6 * np.roll(x, 7)])  # right: quieter and 7 samples late
    return np.stack([lr * (1 - 0.3 * b) for b in range(batch)]).astype(np.float32)


def compare_chunked(hf, x: np.ndarray, bandwidth: float):
    """Per chunk: codes identical, scales and audio (transformers' forward) within fp32."""
    m = port_hf(hf, device=DEVICE).model
    t = torch.tensor(x)
    with torch.no_grad():
        enc = hf.encode(t, bandwidth=bandwidth)
        ref = hf(t, bandwidth=bandwidth)
    codes, scales = m.encode(x, bandwidth)
    assert len(codes) == len(enc.audio_scales) == ref.audio_codes.shape[0] >= 2
    for i, (c, s) in enumerate(zip(codes, scales)):
        np.testing.assert_array_equal(c.numpy(), ref.audio_codes[i, ..., :c.shape[-1]].numpy())
        np.testing.assert_allclose(s.numpy(), enc.audio_scales[i].numpy(), rtol=1e-5)
    got_codes, dec = m(x, bandwidth)
    np.testing.assert_array_equal(got_codes.numpy(), ref.audio_codes.numpy())
    r = ref.audio_values.numpy()
    assert dec.shape == r.shape == x.shape
    np.testing.assert_allclose(dec.numpy(), r, rtol=0, atol=FP32_REL * np.abs(r).max())
    return got_codes, dec.numpy(), r


def test_tiny48_chunks_with_a_short_last():      compare_chunked(hf_encodec(**TINY48), stereo_48k(0.01), 240.0)
def test_tiny48_batch_2_one_codebook():          compare_chunked(hf_encodec(**TINY48), stereo_48k(0.006, batch=2), 60.0)
def test_tiny48_last_chunk_of_4_samples():      compare_chunked(hf_encodec(**TINY48), stereo_48k(0.0025)[..., :119 * 3 + 1], 120.0)
def test_tiny48_wide_overlap():                  compare_chunked(hf_encodec(**{**TINY48, "overlap": 0.5}), stereo_48k(0.0075), 240.0)  # 360 samples: one short chunk (transformers stacks no more)
def test_tiny48_weight_norm_causal():            compare_chunked(hf_encodec(**dict(TINY48, norm_type="weight_norm", use_causal_conv=True)), stereo_48k(0.006), 240.0)


def test_48khz_speech_chunks_6kbps():
    """The encodec_48khz preset (transformers' config of facebook/encodec_48khz) with random weights on
    1.2 s of stereo speech: two chunks (1 s, then 0.06 s from 0.99 s), 4 codebooks of 150 frames/s."""
    codes, dec, ref = compare_chunked(hf_encodec("encodec_48khz"), stereo_48k(1.05), 6.0)
    assert codes.shape == (2, 1, 4, 150)
    assert (codes.numpy()[1, :, :, 9:] == 0).all()  # the short last chunk's codes, padded as transformers pads


def test_48khz_bandwidths():
    cfg = model_class("encodec").Config.from_dict(PRESETS["encodec_48khz"])
    hf = HFEncodec(EncodecConfig(**PRESETS["encodec_48khz"]))
    assert (cfg.chunk_length, cfg.chunk_stride) == (hf.config.chunk_length, hf.config.chunk_stride) == (48_000, 47_520)
    got = {bw: cfg.quantizers_for(bw) for bw in cfg.target_bandwidths}
    assert got == {bw: hf.quantizer.get_num_quantizers_for_bandwidth(bw) for bw in cfg.target_bandwidths}
    assert got == {3.0: 2, 6.0: 4, 12.0: 8, 24.0: 16} and cfg.frame_rate == 150


def test_chunked_decode_takes_stacked_codes():
    """decode also takes forward's stacked codes (chunks, B, n_q, T) with scales (chunks, B, 1), as
    transformers' decode does (the padded last chunk decoded whole); a chunk count that does not match
    the scales is named."""
    hf = hf_encodec(**TINY48)
    m = port_hf(hf).model
    x = stereo_48k(0.006)
    with torch.no_grad():
        enc = hf.encode(torch.tensor(x), bandwidth=120.0)
        ref = hf.decode(enc.audio_codes, enc.audio_scales)[0].numpy()
    stacked, scales = enc.audio_codes.numpy(), np.stack([s.numpy() for s in enc.audio_scales])
    got = m.decode(stacked, scales).numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=FP32_REL * np.abs(ref).max())
    with pytest.raises(ShapeError, match="3 chunks of codes but 2 scales"):
        m.decode(stacked[:3], scales[:2])


def test_bad_norm_type_and_chunk_settings():
    with pytest.raises(ValueError, match="norm_type must be 'weight_norm' or 'time_group_norm'"):
        from_preset("encodec", "tiny", norm_type="layer_norm")
    with pytest.raises(ValueError, match="chunk_length_s and overlap go together"):
        from_preset("encodec", "tiny", chunk_length_s=0.01)
