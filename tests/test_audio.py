"""engine.audio: WAV reading, resampling (against scipy.signal.resample_poly) and Whisper's log-mel
front end (against transformers' WhisperFeatureExtractor) on real speech: tests/fixtures/speech_16k.wav,
made by espeak-ng (scripts/make_speech_fixture.sh)."""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from engine import audio

SPEECH = Path(__file__).parent / "fixtures" / "speech_16k.wav"
FP32 = dict(rtol=1.3e-6, atol=1e-5)  # torch.testing.assert_close's fp32 defaults


@pytest.fixture(scope="module")
def speech():
    x, sr = audio.read_wav(SPEECH)
    assert sr == 16000 and x.dtype == np.float32 and x.ndim == 1
    assert 2.5 < len(x) / sr < 5 and np.abs(x).max() > 0.1  # a few seconds of real signal
    return x


def _write_pcm(path, ints, width, channels=1, sr=8000):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(sr)
        w.writeframes(ints)


# ---- WAV -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_read_pcm_widths(tmp_path, width):
    v = np.array([0.0, 0.5, -0.5, -1.0, 0.25])
    if width == 1:
        raw = (v * 128 + 128).astype(np.uint8).tobytes()
    elif width == 3:
        i = (v * (1 << 23)).astype(np.int64) & 0xFFFFFF
        raw = np.stack([i & 255, (i >> 8) & 255, i >> 16], 1).astype(np.uint8).tobytes()
    else:
        raw = (v * (1 << (8 * width - 1))).astype(f"<i{width}").tobytes()
    _write_pcm(tmp_path / "a.wav", raw, width)
    x, sr = audio.read_wav(tmp_path / "a.wav")
    assert sr == 8000
    np.testing.assert_allclose(x, v, atol=1e-6)


def test_stereo_is_averaged_and_write_round_trips(tmp_path, speech):
    st = np.stack([speech, 0.5 * speech], 1)
    audio.write_wav(tmp_path / "st.wav", st, 16000)
    both, _ = audio.read_wav(tmp_path / "st.wav", mono=False)
    assert both.shape == st.shape
    mono, _ = audio.read_wav(tmp_path / "st.wav")
    np.testing.assert_allclose(mono, 0.75 * speech, atol=2 / 32768)


def test_wav_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="audio file not found: .*nope.wav"):
        audio.read_wav(tmp_path / "nope.wav")
    (tmp_path / "t.txt").write_text("hello, not audio")
    with pytest.raises(audio.AudioError, match=r"t.txt: cannot read as a PCM WAV \(not a RIFF/WAVE file"):
        audio.read_wav(tmp_path / "t.txt")
    data = SPEECH.read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[:1000])
    with pytest.raises(audio.AudioError, match="cut.wav: truncated WAV"):
        audio.read_wav(tmp_path / "cut.wav")


# ---- resampling -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("orig,new", [(22050, 16000), (16000, 8000), (44100, 16000), (8000, 16000)])
def test_resample_matches_scipy_resample_poly(speech, orig, new):
    signal = pytest.importorskip("scipy.signal", reason="scipy's resample_poly is the oracle (pip install scipy)")
    x = speech[: orig // 2]  # half a second of speech as if it were at `orig`
    got = audio.resample(x, orig, new)
    import math
    g = math.gcd(orig, new)
    ref = signal.resample_poly(x.astype(np.float64), new // g, orig // g)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, **FP32)


def test_resample_keeps_a_tone():
    t = np.arange(22050) / 22050
    y = audio.resample(np.sin(2 * np.pi * 440 * t), 22050, 16000)
    ref = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert np.abs(y - ref)[200:-200].max() < 1e-3  # away from the edges' transients


# ---- log-mel ----------------------------------------------------------------------------------------------------
def test_mel_filters_match_transformers():
    from transformers.audio_utils import mel_filter_bank
    for n_mels in (80, 128):
        ref = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0,
                              max_frequency=8000.0, sampling_rate=16000, norm="slaney", mel_scale="slaney")
        np.testing.assert_allclose(audio.mel_filters(n_mels), ref, rtol=1e-12, atol=1e-15)


def test_stft_matches_torch(speech):
    import torch
    ref = torch.stft(torch.from_numpy(speech.astype(np.float64)), 400, 160, window=torch.hann_window(400, dtype=torch.float64),
                     return_complex=True).abs() ** 2
    np.testing.assert_allclose(audio.stft_power(speech), ref.numpy(), rtol=1e-9, atol=1e-9)


def _np_features(fe, x):
    """transformers' numpy path (its own spectrogram, float64), padded as __call__ pads."""
    return fe._np_extract_fbank_features(audio.pad_or_trim(x)[None].astype(np.float32), "cpu")[0]


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_whisper_feature_extractor(speech, n_mels):
    """Against transformers' numpy path (float64 inside, like the engine): fp32 tolerance. Its default
    path (torch available: torch.stft in float32) is further from both: the engine must be no
    further from it than transformers' own numpy path is."""
    from transformers import WhisperFeatureExtractor
    fe = WhisperFeatureExtractor(feature_size=n_mels)
    ref = _np_features(fe, speech)
    got = audio.log_mel_spectrogram(speech, n_mels)
    assert got.shape == ref.shape == (n_mels, 3000) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, **FP32)
    default = fe(speech, sampling_rate=16000, return_tensors="np").input_features[0]
    own = np.abs(ref - default).max()  # transformers' two paths disagree by this much (float32 STFT)
    assert 0 < own < 1e-4
    assert np.abs(got - default).max() <= 1.01 * own


def test_log_mel_pads_and_trims(speech):
    from transformers import WhisperFeatureExtractor
    fe = WhisperFeatureExtractor()
    long = np.tile(speech, 11)  # ~35 s: trimmed to 30 s
    got = audio.log_mel_spectrogram(long[None])  # a batch of one
    assert got.shape == (1, 80, 3000)
    np.testing.assert_allclose(got[0], _np_features(fe, long), **FP32)
    assert fe(long, sampling_rate=16000, return_tensors="np").input_features.shape == (1, 80, 3000)


def test_log_mel_errors():
    with pytest.raises(audio.AudioError, match="nan or inf"):
        audio.log_mel_spectrogram(np.array([0.0, np.nan]))
    with pytest.raises(audio.AudioError, match=r"\(n,\) or \(batch, n\)"):
        audio.log_mel_spectrogram(np.zeros((1, 2, 3)))
