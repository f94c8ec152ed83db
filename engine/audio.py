"""Audio for speech models: WAV files, resampling and Whisper's log-mel front end, in numpy.

    audio, sr = read_wav("speech.wav")                 # float32 (n,) in [-1, 1], mono (channels averaged)
    audio = resample(audio, sr, 16000)                 # band-limited polyphase resampling
    mel = log_mel_spectrogram(audio)                   # (80, 3000) float32: 30 s of Whisper input features

WAVs are read and written with the standard library's `wave` module (PCM 8/16/24/32-bit integer);
anything else (a float WAV, an mp3, a truncated file) is refused with the file name and the reason.

`resample` is the polyphase windowed-sinc filter of scipy.signal.resample_poly with its defaults,
written out in numpy: the rate ratio reduced to up/down, a low-pass FIR of 2 * 10 * max(up, down) + 1
taps with cutoff 1 / max(up, down) (of Nyquist), a Kaiser window (beta 5.0), unit DC gain times up,
applied to the zero-stuffed signal and kept every `down`-th sample, delay removed (output length
ceil(n * up / down)). tests/test_audio.py checks it against scipy.

`log_mel_spectrogram` is Whisper's front end as transformers' WhisperFeatureExtractor computes it
(reusing nothing from transformers): pad or trim to 30 s, STFT (reflect padding of n_fft // 2 on
each side, periodic Hann window, n_fft 400, hop 160), power spectrum, the slaney mel filter bank (0 to
8 kHz, area-normalised), log10 of max(mel, 1e-10), the last frame dropped, clamped below at its
maximum - 8, then (x + 4) / 4. The arithmetic runs in float64 and the result is rounded to float32.
"""
from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30  # seconds of audio per Whisper window
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames per window


class AudioError(ValueError):
    """An audio file that cannot be read (or data that cannot be processed); the message names it."""


# ---- WAV files -----------------------------------------------------------------------------------------------
def read_wav(path, mono: bool = True) -> tuple[np.ndarray, int]:
    """(samples float32 in [-1, 1], sample rate) of a PCM WAV file. mono: channels averaged to (n,);
    else (n, channels)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        with wave.open(str(path), "rb") as w:
            ch, width, sr, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError) as e:
        with open(path, "rb") as f:
            head = f.read(12)
        what = "not a RIFF/WAVE file" if head[:4] != b"RIFF" or head[8:12] != b"WAVE" else str(e)
        raise AudioError(f"{path}: cannot read as a PCM WAV ({what}; first bytes {head[:12]!r})") from None
    if len(raw) != n * ch * width:
        raise AudioError(f"{path}: truncated WAV: the header promises {n} frames of {ch * width} bytes, "
                         f"the file holds {len(raw)} bytes of samples")
    if width == 1:  # 8-bit PCM is unsigned
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 3:  # 24-bit little-endian: sign-extend into int32
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / float(1 << 23)
    elif width == 4:
        x = (np.frombuffer(raw, "<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)
    else:
        raise AudioError(f"{path}: {8 * width}-bit samples are not supported (8, 16, 24 or 32-bit PCM)")
    x = x.reshape(-1, ch)
    return (x.mean(axis=1, dtype=np.float32) if mono else x), sr


def write_wav(path, audio, sample_rate: int) -> Path:
    """Write float samples in [-1, 1] ((n,) or (n, channels)) as a 16-bit PCM WAV, atomically."""
    import io

    from engine.io.atomic import atomic_write_bytes
    a = np.asarray(audio, np.float64)
    a = a[:, None] if a.ndim == 1 else a
    if a.ndim != 2 or not np.isfinite(a).all():
        raise AudioError(f"write_wav({path}): audio must be finite (n,) or (n, channels), got shape {a.shape}")
    pcm = np.clip(np.round(a * 32767.0), -32768, 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(a.shape[1])
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return atomic_write_bytes(path, buf.getvalue())


def load_audio(path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A WAV file as mono float32 at `sample_rate` (resampled when it differs)."""
    x, sr = read_wav(path)
    return resample(x, sr, sample_rate) if sr != sample_rate else x


# ---- resampling --------------------------------------------------------------------------------------------------
def _kaiser_lowpass(up: int, down: int) -> np.ndarray:
    """scipy.signal.resample_poly's default filter: firwin(2 * half + 1, 1 / max_rate, window=('kaiser',
    5.0)) * up, half = 10 * max_rate."""
    max_rate = max(up, down)
    half = 10 * max_rate
    n = np.arange(2 * half + 1) - half
    cutoff = 1.0 / max_rate
    h = cutoff * np.sinc(cutoff * n) * np.kaiser(2 * half + 1, 5.0)
    return h / h.sum() * up


def resample(audio, orig_sr: int, new_sr: int) -> np.ndarray:
    """(n,) samples at orig_sr -> (ceil(n * up / down),) at new_sr, float32 (module docstring)."""
    x = np.asarray(audio, np.float64)
    if x.ndim != 1:
        raise AudioError(f"resample(): mono (n,) samples expected, got shape {x.shape}")
    if orig_sr <= 0 or new_sr <= 0:
        raise AudioError(f"resample(): sample rates must be positive, got {orig_sr} -> {new_sr}")
    g = math.gcd(int(orig_sr), int(new_sr))
    up, down = int(new_sr) // g, int(orig_sr) // g
    if up == down:
        return x.astype(np.float32)
    h = _kaiser_lowpass(up, down)
    half = (len(h) - 1) // 2
    n_out = -(-len(x) * up // down)
    # output n sits at m = n * down + half in the filter's frame; input k contributes h[m - k * up]
    m = np.arange(n_out, dtype=np.int64) * down + half
    taps = -(-len(h) // up) + 1
    k = (m // up)[:, None] - np.arange(taps)[None, :]  # (n_out, taps) candidate input indices
    idx = m[:, None] - k * up
    ok = (idx >= 0) & (idx < len(h)) & (k >= 0) & (k < len(x))
    y = np.where(ok, h[np.clip(idx, 0, len(h) - 1)] * x[np.clip(k, 0, len(x) - 1)], 0.0).sum(axis=1)
    return y.astype(np.float32)


# ---- Whisper's log-mel spectrogram -----------------------------------------------------------------------------
def hertz_to_mel(freq):
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    f = np.asarray(freq, np.float64)
    logstep = 27.0 / np.log(6.4)
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) * logstep, 3.0 * f / 200.0)


def mel_to_hertz(mels):
    m = np.asarray(mels, np.float64)
    logstep = np.log(6.4) / 27.0
    return np.where(m >= 15.0, 1000.0 * np.exp(logstep * (m - 15.0)), 200.0 * m / 3.0)


def mel_filters(n_mels: int = 80, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE, f_min: float = 0.0,
                f_max: float = 8000.0) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) float64 slaney filter bank: triangles between mel-spaced edges over the
    FFT bin frequencies, each scaled by 2 / (its bandwidth in Hz) (equal area)."""
    edges = mel_to_hertz(np.linspace(hertz_to_mel(f_min), hertz_to_mel(f_max), n_mels + 2))  # (n_mels + 2,)
    bins = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)  # (F,)
    slopes = edges[None, :] - bins[:, None]  # (F, n_mels + 2)
    widths = np.diff(edges)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    fb = np.maximum(0.0, np.minimum(down, up))
    return fb * (2.0 / (edges[2:] - edges[:-2]))[None, :]


def hann_window(n: int) -> np.ndarray:
    """The periodic Hann window (torch.hann_window's default)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def stft_power(audio: np.ndarray, n_fft: int = N_FFT, hop: int = HOP_LENGTH) -> np.ndarray:
    """|STFT|^2 of (n,) samples: centred frames (reflect padding n_fft // 2), periodic Hann window ->
    (n_fft // 2 + 1, 1 + n // hop) float64."""
    x = np.pad(np.asarray(audio, np.float64), n_fft // 2, mode="reflect")
    n_frames = 1 + (len(x) - n_fft) // hop
    frames = np.lib.stride_tricks.as_strided(x, (n_frames, n_fft), (x.strides[0] * hop, x.strides[0]))
    spec = np.fft.rfft(frames * hann_window(n_fft), axis=-1)  # (frames, F)
    return (spec.real ** 2 + spec.imag ** 2).T


def pad_or_trim(audio, length: int = N_SAMPLES) -> np.ndarray:
    """Zero-pad at the end or cut to `length` samples."""
    x = np.asarray(audio)
    return x[:length] if len(x) >= length else np.pad(x, (0, length - len(x)))


def log_mel_spectrogram(audio, n_mels: int = 80, n_samples: int | None = N_SAMPLES) -> np.ndarray:
    """Whisper's input features of (n,) 16 kHz samples (or (B, n): a batch) -> (n_mels, n_samples // 160)
    float32 (module docstring). n_samples None: no padding or trimming (n // 160 frames)."""
    a = np.asarray(audio)
    if a.ndim == 2:
        return np.stack([log_mel_spectrogram(r, n_mels, n_samples) for r in a])
    if a.ndim != 1 or a.dtype.kind not in "fiu":
        raise AudioError(f"log_mel_spectrogram(): (n,) or (batch, n) real samples expected, got {a.dtype} {a.shape}")
    if not np.isfinite(a).all():
        raise AudioError("log_mel_spectrogram(): the samples hold nan or inf")
    x = pad_or_trim(a.astype(np.float64), n_samples) if n_samples is not None else a.astype(np.float64)
    if len(x) <= N_FFT // 2:
        raise AudioError(f"log_mel_spectrogram(): {len(x)} samples are too few for a {N_FFT}-point STFT")
    mel = mel_filters(n_mels).T @ stft_power(x)  # (n_mels, frames + 1)
    log_spec = np.log10(np.maximum(mel, 1e-10))[:, :-1]
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)
