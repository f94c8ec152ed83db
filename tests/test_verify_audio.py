"""`taper verify` for the audio models: Whisper (log-mel features + teacher-forced decoder ids) and EnCodec
(a waveform at the largest bandwidth: codes and every conv/LSTM layer) against transformers, layer by layer,
with the terminal, JSON, Markdown and HTML reports; a planted bug in each is localised; `taper codec` on
a chunked stereo (48 kHz layout) directory.

Models: the tiny configs of tests/test_models_whisper.py and tests/test_models_encodec.py (random weights,
saved by transformers), inputs seeded or from the speech fixture (--audio).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine import audio
from migration.port import port_hf
from migration.verify import verify_golden, verify_hf
from taper.cli import main
from test_models_encodec import TINY48, hf_encodec, stereo_48k
from test_models_whisper import GEN, hf_whisper
from helpers import DEVICE

SPEECH = "tests/fixtures/speech_16k.wav"
DEV = str(DEVICE)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio_verify")
    hf_whisper(seed=3).save_pretrained(d / "whisper")
    hf_encodec().save_pretrained(d / "encodec")  # weight-normalised (unfolded), codebooks at the data's scale
    hf_encodec(**TINY48).save_pretrained(d / "encodec48")
    return d


def short_speech(d, seconds=0.05):
    """0.05 s of the speech fixture as a 16 kHz WAV (the tiny EnCodec's LSTM steps every 4 samples)."""
    x, sr = audio.read_wav(SPEECH)
    audio.write_wav(d / "short.wav", x[len(x) // 4:len(x) // 4 + int(seconds * sr)], sr)
    return d / "short.wav"


def check(rep, *layers, lm=False):
    """Passed, no divergence, the named layers compared; LM metrics for Whisper's logits."""
    assert rep.passed, rep.table(only_failed=True, max_rows=20)
    assert rep.first_divergence is None
    names = {r.name for r in rep.layers}
    assert set(layers) <= names, sorted(set(layers) - names)
    if lm:
        assert rep.top1_agreement == 1.0 and rep.kl < 1e-6
    return rep


# ---- Whisper ------------------------------------------------------------------------------------------------
WHISPER_LAYERS = ("model.encoder.conv1", "model.encoder.layers.1.self_attn", "model.decoder.layers.1.encoder_attn",
                  "model.decoder.layers.0.encoder_attn.k_proj", "proj_out", "<output>")


def test_whisper_fp32(dirs):                 check(verify_hf(dirs / "whisper", device=DEV), *WHISPER_LAYERS, lm=True)
def test_whisper_bf16(dirs):                 check(verify_hf(dirs / "whisper", dtype="bfloat16", device=DEV), *WHISPER_LAYERS, lm=False)
def test_whisper_fp16_batch_1(dirs):         check(verify_hf(dirs / "whisper", dtype="float16", batch=1, device=DEV), *WHISPER_LAYERS)
def test_whisper_real_speech(dirs):          check(verify_hf(dirs / "whisper", audio=SPEECH, seq_len=8, device=DEV), *WHISPER_LAYERS, lm=True)
def test_whisper_transformers_instance():    check(verify_hf(hf_whisper(), batch=1, seq_len=4, device=DEV), *WHISPER_LAYERS, lm=True)


def test_whisper_planted_cross_attention_bug_is_localised(dirs):
    """The cross-attention's query unscaled in decoder layer 1: that layer is the first divergence."""
    em = port_hf(dirs / "whisper", device=DEV).model
    attn = em.model.decoder.layers[1].encoder_attn
    object.__setattr__(attn, "scaling", 1.0)
    rep = verify_hf(dirs / "whisper", engine_model=em, batch=1, seq_len=6, device=DEV)
    assert not rep.passed and rep.first_divergence == "model.decoder.layers.1.encoder_attn"
    assert rep.confirmed is True and rep.layer("model.decoder.layers.0").passed


# ---- EnCodec ------------------------------------------------------------------------------------------------
ENCODEC_LAYERS = ("encoder.layers.0.conv", "encoder.layers.1.block.1", "encoder.layers.7", "decoder.layers.3.conv",
                  "decoder", "<output>", "<output>:1")


def test_encodec_fp32(dirs):                 check(verify_hf(dirs / "encodec", device=DEV), *ENCODEC_LAYERS)
def test_encodec_real_speech(dirs):          check(verify_hf(dirs / "encodec", audio=short_speech(dirs), device=DEV), *ENCODEC_LAYERS)
def test_encodec_chunked_stereo(dirs):       check(verify_hf(dirs / "encodec48", device=DEV), *ENCODEC_LAYERS, "encoder@1", "decoder.layers.0.norm@1")
def test_encodec_preset_instance():          check(verify_hf(hf_encodec(num_lstm_layers=1), batch=1, device=DEV), *ENCODEC_LAYERS)


def test_encodec_codes_are_compared_exactly(dirs):
    """The codes (<output>) are integers: compared exactly, and not all one codeword."""
    rep = verify_hf(dirs / "encodec", device=DEV, workdir=dirs / "cap")
    row = rep.layer("<output>")
    assert (row.rtol, row.atol, row.max_abs) == (0.0, 0.0, 0.0) and row.shape == (1, 2, 4, 120)
    from engine.io.safetensors import load_file
    codes = load_file(dirs / "cap" / "reference.safetensors")["<output>"]
    assert len(np.unique(codes)) > 4


def test_encodec_planted_lstm_skip_bug_is_localised(dirs):
    """The decoder's LSTM without its skip connection: that layer is the first divergence."""
    em = port_hf(dirs / "encodec", device=DEV).model
    lstm = em.decoder.layers[1]
    object.__setattr__(lstm, "forward", lambda x: lstm.lstm(x.permute(2, 0, 1))[0].permute(1, 2, 0))
    rep = verify_hf(dirs / "encodec", engine_model=em, batch=1, device=DEV)
    assert not rep.passed and rep.first_divergence == "decoder.layers.1" and rep.confirmed is True
    assert rep.layer("encoder").passed and rep.layer("<output>").passed  # the codes come before the decoder


# ---- the command line and its reports ------------------------------------------------------------------------
def test_cli_whisper_reports(dirs, tmp_path, capsys):
    out = {k: tmp_path / f"rep.{k}" for k in ("json", "md", "html")}
    assert main(["verify", str(dirs / "whisper"), "--batch", "1", "--seq-len", "6", "--json", str(out["json"]),
                 "--markdown", str(out["md"]), "--html", str(out["html"])]) == 0
    text = capsys.readouterr().out
    assert "model.decoder.layers.1.encoder_attn" in text and "verdict: PASS" in text and "top-1 agreement 1.0000" in text
    rep = json.loads(out["json"].read_text())
    assert rep["summary"]["passed"] and any(r["name"] == "model.encoder.layers.0.fc1" for r in rep["layers"])
    assert "model.decoder.layers.0.self_attn" in out["md"].read_text()
    assert "model.encoder.conv2" in out["html"].read_text() and "<html" in out["html"].read_text().lower()


def test_cli_encodec_presets_and_audio(dirs, capsys):
    assert main(["verify", "encodec:tiny", "--batch", "1", "--quiet"]) == 0
    assert main(["verify", str(dirs / "encodec48"), "--audio", str(short_speech(dirs, 0.006)), "--quiet"]) == 0
    assert capsys.readouterr().out.count("verdict: PASS") == 2


def test_cli_whisper_preset_bfloat16(capsys):
    assert main(["verify", "whisper:tiny", "--dtype", "bfloat16", "--batch", "1", "--seq-len", "4", "--quiet"]) == 0
    assert "verdict: PASS" in capsys.readouterr().out


def test_cli_golden_keeps_the_bandwidth(dirs, tmp_path, capsys):
    """--save-golden stores EnCodec's bandwidth with the inputs; --golden reruns at it without torch."""
    assert main(["verify", str(dirs / "encodec"), "--batch", "1", "--save-golden", str(tmp_path / "g"), "--quiet"]) == 0
    assert json.loads((tmp_path / "g" / "meta.json").read_text())["engine_kwargs"] == {"bandwidth": 120.0}
    rep = verify_golden(port_hf(dirs / "encodec").model, tmp_path / "g")
    assert rep.passed and rep.layer("<output>").shape == (1, 1, 4, 120)


@pytest.mark.parametrize("argv,message", [
    (["llama:tiny", "--audio", SPEECH], "--audio applies to Whisper and EnCodec models"),
    (["whisper:tiny", "--audio", "no/such.wav"], "--audio no/such.wav: no such file"),
])
def test_cli_audio_errors(argv, message, capsys):
    assert main(["verify"] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# ---- taper codec on a chunked stereo directory ----------------------------------------------------------------
def test_codec_chunked_stereo_matches_transformers(dirs, tmp_path, capsys):
    x = stereo_48k(0.006)[0]  # (2, 288): chunks at 0, 118, 236
    audio.write_wav(tmp_path / "in.wav", x.T, 48_000)
    assert main(["codec", "--model", str(dirs / "encodec48"), str(tmp_path / "in.wav"), "--bandwidth", "120",
                 "--out", str(tmp_path / "out.wav"), "--codes", str(tmp_path / "codes.npy")]) == 0
    assert "int64 in 3 chunks: 2 codebooks x 73 frames at 12000 Hz" in capsys.readouterr().out
    y, sr = audio.read_wav(tmp_path / "out.wav", mono=False)
    xin, _ = audio.read_wav(tmp_path / "in.wav", mono=False)
    hf = hf_encodec(**TINY48)
    with torch.no_grad():
        ref = hf(torch.tensor(xin.T[None].copy()), bandwidth=120.0)
    assert sr == 48_000 and y.shape == (288, 2)
    np.testing.assert_allclose(y.T, np.clip(ref.audio_values[0].numpy(), -1, 1), atol=1.5 / 32767)
    codes = np.load(tmp_path / "codes.npy")
    t = [30, 30, 13]
    np.testing.assert_array_equal(codes, np.concatenate([ref.audio_codes[i, ..., :n].numpy() for i, n in enumerate(t)], -1))


# ---- the port plans behind them ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["whisper", "encodec", "encodec48"])
def test_port_plan_maps_every_key(dirs, name):
    """`taper port DIR`: every checkpoint key maps (Whisper's tied proj_out, EnCodec's folds and drops)."""
    p = port_hf(dirs / name, build=False)
    assert p.keys.ok, p.keys.format()


@pytest.mark.parametrize("model", ["whisper:tiny", "encodec:tiny"])
def test_impls_route_names_what_audio_models_take(model, capsys):
    """Comparing two implementations feeds token ids: an audio model gets one line saying what it takes
    and which route builds those inputs (torch raised 'expects mel input features of length 3000')."""
    assert main(["verify", model, "--candidate", "torch-compile"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "torch against engine" in err and ("speech" in err or "waveform" in err)
