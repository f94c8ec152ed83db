"""`taper transcribe`: text with a tokenizer, ids without one, 30 s windows, and one-line errors."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from engine import audio
from engine.models import from_pretrained
from engine.models.whisper.generate import GenerationSettings, greedy
from taper.cli import main
from test_models_whisper import SPEECH, hf_whisper


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny Whisper of test_models_whisper, with a word-level tokenizer.json whose special tokens
    (200..205, 255) are marked special, as Whisper's are."""
    from tokenizers import Tokenizer, models
    d = tmp_path_factory.mktemp("whisper") / "model"
    hf_whisper(seed=3).save_pretrained(d)
    vocab = {f"w{i}": i for i in list(range(200)) + list(range(206, 255))}
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|transcribe|>", "<|translate|>"]
    vocab.update({t: 200 + i for i, t in enumerate(specials)})
    vocab["<|notimestamps|>"] = 255
    specials.append("<|notimestamps|>")
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.add_special_tokens(specials)
    notok = tmp_path_factory.mktemp("notok") / "model"
    hf_whisper(seed=3).save_pretrained(notok)
    tok.save(str(d / "tokenizer.json"))
    return d, notok, tok


def expected(d, samples, language="en"):
    em = from_pretrained(d)
    return greedy(em, audio.log_mel_spectrogram(samples)[None], GenerationSettings.from_dir(d),
                  language=language, max_new_tokens=8).new_tokens[0]


def test_text_with_a_tokenizer_and_ids_without(model_dir, capsys):
    d, notok, tok = model_dir
    ids = expected(d, audio.load_audio(SPEECH))
    assert main(["transcribe", "--model", str(d), SPEECH, "--language", "en", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == tok.decode(ids, skip_special_tokens=True).strip() != ""
    assert re.search(r"3\.2 s of audio in 1 window\(s\): encoder \d+ ms", out.err)
    assert main(["transcribe", "--model", str(notok), SPEECH, "--language", "en", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.split() == [str(i) for i in ids]


def test_long_audio_is_decoded_in_30s_windows(model_dir, tmp_path, capsys):
    _, notok, _ = model_dir
    x = audio.load_audio(SPEECH)
    long = np.concatenate([np.tile(x, 10), x[:8000]])  # 32.5 s: a full window and 2.5 s
    audio.write_wav(tmp_path / "long.wav", long, 16000)
    assert main(["transcribe", "--model", str(notok), str(tmp_path / "long.wav"), "--language", "en",
                 "--max-new-tokens", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    got = audio.load_audio(tmp_path / "long.wav")
    assert lines[1].split() == [str(i) for i in expected(notok, got[audio.N_SAMPLES:])][:4]


def test_other_sample_rates_are_resampled(model_dir, tmp_path, capsys):
    _, notok, _ = model_dir
    x = audio.load_audio(SPEECH)
    audio.write_wav(tmp_path / "a8k.wav", audio.resample(x, 16000, 8000), 8000)
    assert main(["transcribe", "--model", str(notok), str(tmp_path / "a8k.wav"), "--language", "en",
                 "--max-new-tokens", "3"]) == 0
    assert len(capsys.readouterr().out.split()) >= 1


def _llama_dir(tmp_path):
    d = tmp_path / "llama"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return d


@pytest.mark.parametrize("case,message", [
    ("missing", r"audio file not found: .*nope\.wav"),
    ("text", r"notes\.txt: cannot read as a PCM WAV \(not a RIFF/WAVE file"),
    ("nodir", r"no/such/dir: no such model directory"),
    ("llama", r"not a Whisper model \(config\.json has model_type 'llama'\)"),
    ("noweights", r"no model\.safetensors"),
    ("tokens", r"--max-new-tokens must be at least 1"),
])
def test_errors_are_one_line(model_dir, tmp_path, capsys, case, message):
    d = model_dir[1]
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((d / "config.json").read_text())
    argv = {"missing": [str(tmp_path / "nope.wav"), "--model", str(d)],
            "text": [str(tmp_path / "notes.txt"), "--model", str(d)],
            "nodir": [SPEECH, "--model", "./no/such/dir"],
            "llama": [SPEECH, "--model", str(_llama_dir(tmp_path))],
            "noweights": [SPEECH, "--model", str(tmp_path / "empty")],
            "tokens": [SPEECH, "--model", str(d), "--max-new-tokens", "0"]}[case]
    assert main(["transcribe"] + argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(message, err), err


def test_generate_points_whisper_to_transcribe(capsys):
    assert main(["generate", "--model", "whisper:tiny", "--ids", "1"]) == 2
    assert "is a Whisper model (speech to text): use `taper transcribe`" in capsys.readouterr().err


def test_language_settings_unknown(model_dir, capsys):
    assert main(["transcribe", "--model", str(model_dir[0]), SPEECH, "--language", "xx"]) == 2
    assert "unknown language 'xx' (this model knows: de, en)" in capsys.readouterr().err


def test_timestamps_print_segments(model_dir, tmp_path, capsys):
    import shutil
    from test_models_whisper import GEN_TS
    d = tmp_path / "ts"
    shutil.copytree(model_dir[1], d)
    gen = json.loads((d / "generation_config.json").read_text())
    (d / "generation_config.json").write_text(json.dumps({**gen, **GEN_TS}))
    assert main(["transcribe", "--model", str(d), SPEECH, "--language", "en", "--max-new-tokens", "24",
                 "--timestamps"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines and all(re.fullmatch(r"\[\d+\.\d\d -> \d+\.\d\d\]( \d+)*", ln) for ln in lines), lines


def test_a_preset_transcribes_with_the_default_length(capsys):
    """No --max-new-tokens: as many tokens as the decoder's positions leave (the tiny preset has 64)."""
    from engine.models import from_preset
    assert main(["transcribe", "--model", "whisper:tiny", SPEECH]) == 0
    ids = capsys.readouterr().out.splitlines()[0].split()
    assert 0 < len(ids) <= from_preset("whisper", "tiny").config.max_target_positions and all(i.isdigit() for i in ids)
