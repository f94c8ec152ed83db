"""Whisper long-form (engine.models.whisper.longform.transcribe_long) against transformers'
WhisperForConditionalGeneration.generate on more than 3000 mel frames: sequential 30 s windows with
timestamps, each seeking to its last timestamp pair, optional conditioning on the previous text, and the
temperature fallback's decisions (compression ratio, average log-probability).

Audio: 40 s of espeak-ng speech made at test time (Debian package espeak-ng; skipped without it), log-mel
features of the whole file from engine.audio given to both sides. Model: the tiny test Whisper of
tests/test_models_whisper.py with a vocabulary holding Whisper's 1501 timestamp tokens (206
<|notimestamps|>, 207 <|0.00|> .. 1707 <|30.00|>), random weights: the tokens must be identical.
"""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch
from transformers import GenerationConfig
from transformers import WhisperForConditionalGeneration as HFWhisper

from engine import audio
from engine.models import from_pretrained
from engine.models.whisper.generate import GenerationSettings, greedy
from engine.models.whisper.longform import compression_ratio, transcribe_long
from helpers import DEVICE
from taper.cli import main
from test_models_whisper import GEN, hf_whisper

GEN_LONG = dict(GEN, no_timestamps_token_id=206, max_initial_timestamp_index=50)
TEXT = ("Whisper cuts long audio into thirty second windows. After each window it looks for the last pair of "
        "timestamp tokens and moves the window there, so that a word cut at the edge is heard again in the next "
        "window. When a window repeats itself, or its tokens are unlikely, the decoder tries again at a higher "
        "temperature. This paragraph is long enough to need more than one window: it talks about weights, caches, "
        "kernels and graphs, about the encoder that reads fifteen hundred positions, and about the decoder that "
        "writes one token at a time. The quick brown fox jumps over the lazy dog, and the lazy dog sleeps in the "
        "warm afternoon sun while the fox runs into the forest.")


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): it speaks the long-form test audio")
    d = tmp_path_factory.mktemp("longform")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "165", "-w", str(d / "raw.wav"), TEXT], check=True)
    x, sr = audio.read_wav(d / "raw.wav")
    audio.write_wav(d / "long.wav", audio.resample(x, sr, 16_000), 16_000)
    return d / "long.wav"


@pytest.fixture(scope="module")
def setup(long_wav, tmp_path_factory):
    m = hf_whisper({"vocab_size": 1708}, seed=3)
    m.generation_config = GenerationConfig(**GEN_LONG, max_length=64)
    d = tmp_path_factory.mktemp("whisper_long") / "model"
    m.save_pretrained(d)
    feats = audio.log_mel_spectrogram(audio.load_audio(long_wav), 80, n_samples=None)
    assert feats.shape[1] > 3000  # long-form on both sides
    return m, from_pretrained(d, device=DEVICE), d, feats


def hf_long(m, feats, **kw):
    with torch.no_grad():
        out = m.generate(input_features=torch.from_numpy(feats[None]), language="en", return_timestamps=True,
                         return_segments=True, **kw)
    return [int(t) for t in out["sequences"][0]], out["segments"][0]


def same_as_transformers(setup, **kw):
    m, em, _, feats = setup
    ref, ref_segs = hf_long(m, feats, **kw)
    ekw = {("temperatures" if k == "temperature" else k): v for k, v in kw.items()}
    out = transcribe_long(em, feats, GenerationSettings.from_dict(GEN_LONG), language="en", **ekw)
    assert out.tokens == ref
    assert [(s.tokens, round(s.start, 6), round(s.end, 6)) for s in out.segments] == \
        [([int(t) for t in s["tokens"]], round(float(s["start"]), 6), round(float(s["end"]), 6)) for s in ref_segs]
    return out


def test_long_form_greedy_seeks_as_transformers(setup):
    out = same_as_transformers(setup, max_new_tokens=40)
    seeks = [w["seek"] for w in out.windows]
    assert len(seeks) >= 2 and seeks[1] % 3000 != 0  # the second window starts at the last timestamp, not at 30 s
    assert len(out.segments) >= 4 and any(t >= 207 for t in out.tokens)


def test_long_form_conditioned_on_previous_text(setup):
    out = same_as_transformers(setup, max_new_tokens=24, condition_on_prev_tokens=True)
    assert len(out.windows) >= 2


def _recorder(monkeypatch):
    """Record transformers' per-attempt average log-probability and compression ratio."""
    rec = {"avg_logprob": [], "compression_ratio": []}
    lp, cr = HFWhisper._retrieve_avg_logprobs, HFWhisper._retrieve_compression_ratio

    def avg(*a):
        v = lp(*a)
        rec["avg_logprob"].append(float(v))
        return v

    def ratio(*a):
        v = cr(*a)
        rec["compression_ratio"].append(float(v))
        return v
    monkeypatch.setattr(HFWhisper, "_retrieve_avg_logprobs", staticmethod(avg))
    monkeypatch.setattr(HFWhisper, "_retrieve_compression_ratio", staticmethod(ratio))
    return rec


def test_fallback_thresholds_not_reached_same_tokens_and_metrics(setup, monkeypatch):
    """Thresholds every greedy window passes: the same tokens, and the engine's measures of each window
    are transformers' (average log-probability to 1e-5, compression ratio exactly)."""
    rec = _recorder(monkeypatch)
    out = same_as_transformers(setup, max_new_tokens=40, temperature=(0.0, 0.4, 0.8), logprob_threshold=-5.0,
                               compression_ratio_threshold=2.4)
    first = [w["attempts"][0] for w in out.windows]
    assert all(len(w["attempts"]) == 1 and not w["attempts"][0]["fallback"] for w in out.windows)
    np.testing.assert_allclose([a["avg_logprob"] for a in first], rec["avg_logprob"], rtol=0, atol=1e-5)
    assert [a["compression_ratio"] for a in first] == rec["compression_ratio"]


def test_fallback_decision_on_the_first_window(setup, monkeypatch):
    """A log-probability threshold above the greedy window's: both fall back to temperature 0.5 there
    (sampled: the engine's tokens come from numpy's generator, transformers' from torch's, so only the
    decision and the greedy attempt's measures are compared)."""
    m, em, _, feats = setup
    rec = _recorder(monkeypatch)
    torch.manual_seed(0)
    hf_long(m, feats, max_new_tokens=16, temperature=(0.0, 0.5), logprob_threshold=-0.5,
            compression_ratio_threshold=2.4)
    out = transcribe_long(em, feats, GenerationSettings.from_dict(GEN_LONG), language="en", max_new_tokens=16,
                          temperatures=(0.0, 0.5), logprob_threshold=-0.5, compression_ratio_threshold=2.4)
    a0, a1 = out.windows[0]["attempts"]
    assert a0["fallback"] and a0["avg_logprob"] < -0.5 and a1["temperature"] == 0.5
    assert abs(a0["avg_logprob"] - rec["avg_logprob"][0]) < 1e-5 and a0["compression_ratio"] == rec["compression_ratio"][0]
    assert len(rec["avg_logprob"]) >= 2  # transformers decoded the first window again too


def test_without_timestamps_a_window_is_decoded_once(setup):
    """Decided: with <|notimestamps|> in the prompt, ids in the timestamp range are not segment ends, so
    30 s of audio is one decode (transformers' generate, seeing a pair of such ids, seeks there and
    decodes the rest of the window again, appending a second decode; with force_unique_generate_call
    it decodes once, as the engine)."""
    m, em, _, _ = setup
    x, _ = audio.read_wav("tests/fixtures/speech_16k.wav")
    feats = audio.log_mel_spectrogram(x, 80)[None]  # 3000 frames: short-form
    out = greedy(em, feats, GenerationSettings.from_dict(GEN_LONG), language="en", max_new_tokens=20)
    with torch.no_grad():
        once = m.generate(input_features=torch.from_numpy(feats), language="en", max_new_tokens=20,
                          force_unique_generate_call=True)[0].tolist()
        seeking = m.generate(input_features=torch.from_numpy(feats), language="en", max_new_tokens=20)[0].tolist()
    assert out.tokens[0] == once[:len(out.tokens[0])] and out.prompt == [201, 202, 204, 206]
    pairs = [i for i in range(len(out.new_tokens[0]) - 1) if min(out.new_tokens[0][i:i + 2]) >= 207]
    assert pairs and len(seeking) > len(out.new_tokens[0])  # transformers seeks on such a pair and decodes again


def test_compression_ratio_is_transformers():
    toks = [5, 6, 7, 5, 6, 7, 5, 6, 7, 300, 1700] * 4
    assert compression_ratio(toks, 1708) == HFWhisper._retrieve_compression_ratio(torch.tensor(toks), 1708)


def test_long_form_errors(setup):
    _, em, _, feats = setup
    gen = GenerationSettings.from_dict(GEN_LONG)
    with pytest.raises(ValueError, match=r"\(80, frames\) features expected, got shape \(2, 3, 4\)"):
        transcribe_long(em, np.zeros((2, 3, 4), np.float32), gen)
    with pytest.raises(ValueError, match="exceeds max_target_positions=64"):
        transcribe_long(em, feats, gen, language="en", max_new_tokens=62)
    with pytest.raises(ValueError, match="no timestamp tokens"):
        transcribe_long(em, feats, GenerationSettings.from_dict({**GEN_LONG, "no_timestamps_token_id": None}))


def test_cli_timestamps_seek(setup, long_wav, capsys):
    """`taper transcribe --timestamps` on 40 s: the segments of transcribe_long, one line each."""
    _, em, d, feats = setup
    (d / "generation_config.json").write_text(GenerationConfig(**GEN_LONG).to_json_string())
    assert main(["transcribe", "--model", str(d), str(long_wav), "--timestamps", "--language", "en",
                 "--max-new-tokens", "40"]) == 0
    out = transcribe_long(em, feats, GenerationSettings.from_dir(d), language="en", max_new_tokens=40)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[")]
    assert len(lines) == len(out.segments) and lines[0].startswith(f"[{out.segments[0].start:.2f} -> ")
