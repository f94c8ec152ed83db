"""`taper codec`: a WAV through an EnCodec HF directory (weight-normalised, as transformers saves it) to
codes identical to transformers' and a reconstructed WAV; one-line errors for bad input."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from engine import audio
from taper.cli import main
from test_models_encodec import hf_encodec, speech_24k


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("encodec")
    hf = hf_encodec()
    hf.save_pretrained(d / "model")
    x = speech_24k(0.03)
    audio.write_wav(d / "in.wav", x, 24_000)
    return hf, d


def test_round_trip_codes_match_transformers(setup, capsys):
    hf, d = setup
    assert main(["codec", "--model", str(d / "model"), str(d / "in.wav"), "--bandwidth", "60",
                 "--out", str(d / "out.wav"), "--codes", str(d / "codes.npy")]) == 0
    out = capsys.readouterr().out
    assert "codes (1, 2, 180) int64: 2 codebooks x 180 frames at 6000 Hz, 5 bits each -> 60 kbps" in out
    x, _ = audio.read_wav(d / "in.wav")
    with torch.no_grad():
        enc = hf.encode(torch.tensor(x).reshape(1, 1, -1), bandwidth=60.0)
        ref = hf.decode(enc.audio_codes, enc.audio_scales)[0][0, 0, :len(x)].numpy()
    np.testing.assert_array_equal(np.load(d / "codes.npy"), enc.audio_codes[0].numpy())
    y, sr = audio.read_wav(d / "out.wav")
    assert sr == 24_000 and y.shape == x.shape
    np.testing.assert_allclose(y, np.clip(ref, -1, 1), atol=1.5 / 32767)  # 16-bit PCM rounding


def test_resamples_and_defaults_to_smallest_bandwidth(setup, capsys):
    _, d = setup
    audio.write_wav(d / "in16k.wav", audio.resample(speech_24k(0.03), 24_000, 16_000), 16_000)
    assert main(["codec", "--model", str(d / "model"), str(d / "in16k.wav"), "--out", str(d / "o16.wav")]) == 0
    assert "-> 30 kbps" in capsys.readouterr().out
    assert audio.read_wav(d / "o16.wav")[1] == 24_000


def _llama_dir(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return tmp_path / "llama"


@pytest.mark.parametrize("case,message", [
    ("missing", r"audio file not found: .*nope\.wav"),
    ("text", r"notes\.txt: cannot read as a PCM WAV"),
    ("nodir", r"no/such/dir: no such model directory"),
    ("llama", r"not an EnCodec model \(config\.json has model_type 'llama'\)"),
    ("bandwidth", r"bandwidth 6\.0 kbps is not one of \[30\.0, 60\.0, 120\.0\]"),
])
def test_errors_are_one_line(setup, tmp_path, capsys, case, message):
    _, d = setup
    (tmp_path / "notes.txt").write_text("not audio")
    wav, out = str(d / "in.wav"), ["--out", str(tmp_path / "o.wav")]
    argv = {"missing": [str(tmp_path / "nope.wav"), "--model", str(d / "model")],
            "text": [str(tmp_path / "notes.txt"), "--model", str(d / "model")],
            "nodir": [wav, "--model", "./no/such/dir"],
            "llama": [wav, "--model", str(_llama_dir(tmp_path))],
            "bandwidth": [wav, "--model", str(d / "model"), "--bandwidth", "6"]}[case]
    assert main(["codec"] + argv + out) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(message, err), err
    assert not (tmp_path / "o.wav").exists()
