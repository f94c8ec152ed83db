"""Whisper through impls/: the engine beside torch eager and torch.compile (transformers'
WhisperForConditionalGeneration), the same preset shapes (engine.models' whisper presets: whisper-tiny,
whisper-base) with random weights.

- ``Encoder.time_encode_30s``: the encoder over 30 s of audio, (1, n_mels, 3000) log-mel features made
  by engine.audio from a synthetic signal (suites.workloads.speech_features); synchronised on a GPU.
- ``Decode``: greedy decode of STEPS tokens after a 4-token prompt against one encoded audio, through
  each implementation's own loop (engine: engine.generation's Decoder over Whisper's DecoderView, a
  captured CUDA graph on a GPU, cross-attention K/V computed once; torch: an EncoderDecoderCache of
  DynamicCaches; torch-compile: two StaticCaches and a compiled step). An untimed run at the timed
  shape compiles or captures first (track_warmup_s). Units: tokens_per_s (per row), ms_per_token.
"""
from __future__ import annotations

import time

import numpy as np

from suites.common import DEVICES, IMPLS, QUICK, get_impl, measured, prepared, sizes, speech_features
from suites.timing import step_seconds

MODELS = sizes(["whisper:whisper-tiny", "whisper:whisper-base"], ["whisper:tiny"])
STEPS = sizes([128], [8])[0]
PROMPT = 4


def check(device: str, dtype: str, model: str) -> None:
    """Skips: the tiny test preset on a GPU (except under TAPER_BENCH_QUICK), 16-bit on the cpu."""
    if device == "cuda" and model.endswith(":tiny") and not QUICK:
        raise NotImplementedError(f"{model} is a test size; the GPU measures whisper-tiny and whisper-base")
    if device == "cpu" and dtype != "float32":
        raise NotImplementedError(f"{dtype} on the cpu is not measured for Whisper (16-bit matmuls upcast there)")


def load(impl: str, device: str, dtype: str, model: str):
    return prepared(("whisper", impl, device, dtype, model), lambda: get_impl(impl, device, dtype).load(model))


def prompt_ids(config: dict) -> np.ndarray:
    """<|startoftranscript|> and three more ids below it (the shape of the real prompt)."""
    s = int(config["decoder_start_token_id"])
    return np.array([[s, s - 5, s - 9, s - 7][:PROMPT]], np.int64)


def decode_seconds(lm, steps: int = STEPS) -> float:
    """Seconds per step over `steps` greedy steps after the prompt (no token read in between)."""
    return step_seconds(lm, prompt_ids(lm.config), steps)


def measure_decode(impl, device, dtype, model) -> dict:
    lm = load(impl, device, dtype, model)
    lm.encode(speech_features(lm.config["num_mel_bins"]))
    t0 = time.perf_counter()
    decode_seconds(lm)  # compile / capture at the timed shape
    warm = time.perf_counter() - t0
    s = float(np.median([decode_seconds(lm) for _ in range(3)]))
    return {"tokens_per_s": 1.0 / s, "ms_per_token": s * 1e3, "warmup_s": warm}


class Encoder:
    params = (IMPLS, DEVICES, ["float16", "float32"], MODELS)
    param_names = ["impl", "device", "dtype", "model"]
    number = 1
    repeat = (1, 5, 60.0)
    timeout = 1800

    def setup(self, impl, device, dtype, model):
        check(device, dtype, model)
        lm = load(impl, device, dtype, model)
        f = speech_features(lm.config["num_mel_bins"])
        self.run = lm.impl.build(lm.encode, f)
        prepared(("whisper-encode-warmup", impl, device, dtype, model), lambda: self.run() is None)

    def time_encode_30s(self, impl, device, dtype, model):
        self.run()


class Decode:
    params = (IMPLS, DEVICES, ["float16", "float32"], MODELS)
    param_names = ["impl", "device", "dtype", "model"]
    timeout = 1800

    def setup(self, impl, device, dtype, model):
        check(device, dtype, model)
        self.r = measured(("whisper-decode", impl, device, dtype, model),
                          lambda: measure_decode(impl, device, dtype, model))

    def track_tokens_per_s(self, impl, device, dtype, model):
        return self.r["tokens_per_s"]
    track_tokens_per_s.unit = "tokens_per_s"

    def track_ms_per_token(self, impl, device, dtype, model):
        return self.r["ms_per_token"]
    track_ms_per_token.unit = "ms_per_token"

    def track_warmup_s(self, impl, device, dtype, model):
        """Compile or capture time of the first decode (kept apart from the timed steps)."""
        return self.r["warmup_s"]
    track_warmup_s.unit = "s"
