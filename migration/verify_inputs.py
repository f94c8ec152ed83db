"""Seeded inputs for `taper verify` of a Hugging Face model, by what its forward takes
(HF_MODELS[...].inputs): token ids, Whisper's log-mel features and decoder ids, EnCodec's waveform.
A real audio file (--audio) replaces the seeded signal."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from migration.capture import VerifyError


def lm_inputs(vocab_size: int, batch: int = 2, seq_len: int = 16, seed: int = 0) -> list:
    """Seeded random token ids (batch, seq_len) for teacher-forced comparison."""
    return [np.random.default_rng(seed).integers(0, vocab_size, size=(batch, seq_len), dtype=np.int64)]


def seeded_signal(seconds: float, sample_rate: int, seed: int = 0, channels: int | None = None) -> np.ndarray:
    """A speech-like test signal: a few seeded harmonics under a syllable-rate envelope plus a little
    noise, peak about 0.5: (n,) or (channels, n) float32 (channels: the same signal, scaled per channel)."""
    rng = np.random.default_rng(seed)
    n = max(1, int(round(seconds * sample_rate)))
    t = np.arange(n) / sample_rate
    f0 = rng.uniform(90, 220)
    x = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) for k in range(1, 9))
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(3, 6) * t)) + 0.02 * rng.standard_normal(n)
    x = (0.5 * x / np.abs(x).max()).astype(np.float32)
    return x if channels is None else np.stack([x * (1.0 - 0.3 * c) for c in range(channels)]).astype(np.float32)


def _audio_at(audio, sample_rate: int) -> np.ndarray:
    """A WAV path or (samples, rate) -> (channels, n) float32 at sample_rate."""
    from engine import audio as A
    if isinstance(audio, (str, Path)):
        x, sr = A.read_wav(audio, mono=False)
    else:
        x, sr = audio
    x = np.asarray(x, np.float32)
    x = x[:, None] if x.ndim == 1 else x  # (n, channels)
    if len(x) == 0:
        raise VerifyError(f"{audio}: the audio has no samples")
    if sr != sample_rate:
        x = np.stack([A.resample(x[:, c], sr, sample_rate) for c in range(x.shape[1])], axis=1)
    return np.ascontiguousarray(x.T, dtype=np.float32)


def _ids_inputs(cfg, batch, seq_len, seed, audio):
    if audio is not None:
        raise VerifyError(f"--audio: a {cfg.model_type} model takes token ids, not audio")
    return lm_inputs(cfg.vocab_size, batch, seq_len, seed), None, {}


def _speech_inputs(cfg, batch, seq_len, seed, audio):
    """Whisper: log-mel features (B, n_mels, 3000) of 30 s windows (the audio given, else a seeded
    signal; row b scaled by 1 - 0.3 b and shifted by b x 0.25 s) and seeded decoder ids (B, seq_len)."""
    from engine import audio as A
    x = _audio_at(audio, A.SAMPLE_RATE).mean(0) if audio is not None else seeded_signal(8.0, A.SAMPLE_RATE, seed)
    rows = [A.pad_or_trim(np.r_[np.zeros(4000 * b, np.float32), (1 - 0.3 * b) * x]) for b in range(batch)]
    feats = A.log_mel_spectrogram(np.stack(rows), cfg.num_mel_bins).astype(np.float32)
    ids = lm_inputs(cfg.vocab_size, batch, seq_len, seed)[0]
    return [feats, ids], ("input_features", "decoder_input_ids"), {}


def _waveform_inputs(cfg, batch, seq_len, seed, audio):
    """EnCodec: audio (B, channels, L) at the model's rate (the audio given, else a seeded signal of
    one chunk and a half for chunked models, 1 s otherwise, 0.02 s for a hop under 64 samples), encoded
    at the largest bandwidth (every codebook)."""
    sr, ch = cfg.sampling_rate, cfg.audio_channels
    if audio is not None:
        x = _audio_at(audio, sr)
        x = x.mean(0, keepdims=True) if ch == 1 else (np.repeat(x, ch, 0) if x.shape[0] == 1 else x)
        if x.shape[0] != ch:
            raise VerifyError(f"--audio has {x.shape[0]} channels; the model takes {ch}")
    else:
        chunk = getattr(cfg, "chunk_length_s", None)
        hop = int(np.prod(cfg.upsampling_ratios))
        seconds = 1.5 * chunk if chunk else (1.0 if hop >= 64 else 0.02)
        x = seeded_signal(seconds, sr, seed, channels=ch)
    rows = np.stack([x * (1 - 0.3 * b) for b in range(batch)]).astype(np.float32)
    return [rows], None, {"bandwidth": float(max(cfg.target_bandwidths))}


INPUTS = {"ids": _ids_inputs, "speech": _speech_inputs, "waveform": _waveform_inputs}
