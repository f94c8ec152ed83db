"""The command line on user errors: one line naming the problem and exit code 2, never a traceback;
`taper --debug` shows the traceback. Sampling settings are refused where transformers refuses them."""
from __future__ import annotations

import json
import math

import pytest

from engine import device as D
from engine.generation import validate_sampling
from taper.cli import main

NO_CUDA = pytest.mark.skipif(D.is_available("cuda"), reason="checks the error a machine without CUDA gets; this machine has a usable CUDA device")
TINY = ["generate", "--model", "llama:tiny", "--max-new-tokens", "2"]
CASES = [  # (argv, what stderr must say)
    pytest.param(["demo", "--devices", "cuda"], r"--devices cuda: not available here \(.*\); available: cpu", marks=NO_CUDA),
    (["demo", "--devices", "bogus"], r"--devices bogus: unknown device 'bogus'"),
    (["demo", "--dtypes", "int8"], r"--dtypes int8: the demo compares floating-point ops; choose from float32"),
    pytest.param(TINY + ["--ids", "1,2,3", "--device", "cuda"], r"device cuda:0 is not available", marks=NO_CUDA),
    (TINY + ["--ids", "1,2,999"], r"--ids: token id\(s\) \[999\] outside the model's vocabulary \(0 to 255\)"),
    (TINY + ["--ids", "1,-2"], r"--ids: token id\(s\) \[-2\] outside"),
    (TINY + ["--ids", "1,x"], r"--ids must be comma-separated integers, got '1,x'"),
    (TINY + ["--ids", "1", "--temperature", "nan"], r"`temperature` \(=nan\) has to be a finite number >= 0"),
    (TINY + ["--ids", "1", "--temperature", "-1"], r"`temperature` \(=-1.0\)"),
    (TINY + ["--ids", "1", "--top-k", "-1"], r"`top_k` \(=-1\) has to be an integer >= 0"),
    (TINY + ["--ids", "1", "--top-p", "-0.5"], r"`top_p` \(=-0.5\) has to be in \(0, 1\]"),
    (TINY + ["--ids", "1", "--top-p", "1.5"], r"`top_p` \(=1.5\)"),
    (TINY + ["--ids", "1", "--repetition-penalty", "0"], r"`repetition_penalty` \(=0.0\) has to be a finite number > 0"),
    (["generate", "--model", "preset:nope:tiny", "--ids", "1"], r"not a model directory or a preset .*model types: llama"),
    (["generate", "--model", "./no/such/dir", "--ids", "1"], r"\./no/such/dir: no such model directory"),
    (["generate", "--model", "llama:huge", "--ids", "1"], r"no preset 'huge' for llama \(known: tiny"),
]


@pytest.mark.parametrize("argv,message", CASES)
def test_user_errors_are_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert __import__("re").search(message, err), err


def test_debug_shows_the_traceback():
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        main(["--debug"] + TINY + ["--ids", "1,2,999"])


def test_an_unexpected_error_is_one_line_with_a_hint(monkeypatch, capsys):
    import taper.commands.port as port
    monkeypatch.setattr(port, "run", lambda args: 1 / 0)
    assert main(["port", "x"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["taper port: ZeroDivisionError: division by zero",
                                "taper port: (run `taper --debug port ...` for the traceback)"]
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "port", "x"])


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Two tiny HF Llama directories of different sizes, one with a tokenizer that pads to 12."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM
    out = {}
    for name, hidden, layers in (("a", 32, 1), ("b", 64, 2)):
        d = tmp_path_factory.mktemp(name)
        cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                          num_attention_heads=2, num_key_value_heads=1, vocab_size=64, pad_token_id=0)
        LlamaForCausalLM(cfg).save_pretrained(d)
        out[name] = d
    tok = Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1, "the": 2, "cat": 3, "sat": 4}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.enable_padding(length=12, pad_id=0, pad_token="<pad>")
    tok.save(str(out["a"] / "tokenizer.json"))
    return out


def test_generate_does_not_feed_a_tokenizers_padding(hf_dirs, capsys):
    assert main(["generate", "--model", str(hf_dirs["a"]), "--prompt", "the cat sat", "--max-new-tokens", "2"]) == 0
    assert "(3 tokens)" in capsys.readouterr().out  # not 12: the padding is not part of the prompt


def test_a_golden_directory_of_another_model_is_named_as_such(hf_dirs, tmp_path, capsys):
    assert main(["verify", str(hf_dirs["a"]), "--save-golden", str(tmp_path / "golden"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["verify", str(hf_dirs["b"]), "--golden", str(tmp_path / "golden"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"the golden directory {tmp_path / 'golden'} does not fit {hf_dirs['b']}: it was saved from model" in err
    assert "Traceback" not in err


def test_a_config_that_does_not_match_its_checkpoint_is_said_in_our_words(hf_dirs, tmp_path, capsys):
    import shutil
    d = tmp_path / "mismatch"
    shutil.copytree(hf_dirs["a"], d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 96}))
    assert main(["verify", str(d), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert "config.json does not match the checkpoint: 3 weight shape(s) differ" in captured.err
    assert "ignore_mismatched_sizes" not in captured.err + captured.out


BAD_SAMPLING = [dict(temperature=math.nan), dict(temperature=-1.0), dict(temperature=math.inf), dict(top_k=-1),
                dict(top_p=-0.5), dict(top_p=1.5), dict(top_p=math.nan), dict(repetition_penalty=0.0),
                dict(repetition_penalty=-1.0)]


@pytest.mark.parametrize("bad", BAD_SAMPLING, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()))
def test_sampling_settings_refused_where_transformers_refuses_them(bad):
    """transformers' own logits processors are the oracle, except where the engine is stricter on purpose:
    transformers lets top_p=nan and temperature=inf through (inf turns -inf logits into nan)."""
    from transformers import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
                              TopPLogitsWarper)
    (name, value), = bad.items()
    oracle = {"temperature": TemperatureLogitsWarper, "top_k": TopKLogitsWarper, "top_p": TopPLogitsWarper,
              "repetition_penalty": RepetitionPenaltyLogitsProcessor}[name]
    if not math.isnan(value) and not math.isinf(value):
        with pytest.raises(ValueError):
            oracle(value)
    with pytest.raises(ValueError, match=f"`{name}`"):
        validate_sampling(**bad)


@pytest.mark.parametrize("good", [dict(temperature=0.0), dict(temperature=0.7, top_k=0, top_p=1.0),
                                  dict(temperature=1.3, top_k=5, top_p=0.9, repetition_penalty=1.2)])
def test_usable_sampling_settings_pass(good):
    validate_sampling(**good)
