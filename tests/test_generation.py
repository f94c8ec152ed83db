"""engine.generation: logits processors against transformers', greedy decoding against teacher-forced
logits, sampling controls, stopping, streaming, batching, tokenizers, and `taper generate`."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)

import engine
from engine.generation import (WARM_STEPS, TextStreamer, apply_repetition_penalty, generate, load_tokenizer,
                               next_tokens, top_k_filter, top_p_filter)
from engine.models import from_pretrained
from helpers import DEVICE
from taper.cli import main as taper_main
from test_models_llm import hf_model, save

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    path = save(hf_model("llama", dict(vocab_size=256)), d)
    _write_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def em(model_dir):
    return from_pretrained(model_dir, device=DEVICE)


def _write_tokenizer(path):
    """A word-level tokenizer over 256 ids: "w0" .. "w255", whitespace-split."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    vocab = {f"w{i}": i for i in range(255)}
    vocab["<unk>"] = 255
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.save(str(path / "tokenizer.json"))


# ---- processors ------------------------------------------------------------------------------------------
def test_repetition_penalty_matches_transformers():
    logits = RNG.standard_normal((2, 50)).astype(np.float32)
    seen = [[1, 4, 4, 9], [0, 49, 7, 7]]  # repeats count once
    want = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor(seen), torch.from_numpy(logits))
    np.testing.assert_allclose(apply_repetition_penalty(logits, seen, 1.3), want.numpy(), rtol=1e-6)


@pytest.mark.parametrize("k", [1, 5, 50])
def test_top_k_matches_transformers(k):
    logits = RNG.standard_normal((3, 40)).astype(np.float32)
    want = TopKLogitsWarper(k)(None, torch.from_numpy(logits)).numpy()
    np.testing.assert_array_equal(top_k_filter(logits, k), want)


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_matches_transformers(p):
    logits = (RNG.standard_normal((4, 64)) * 2).astype(np.float32)
    want = TopPLogitsWarper(p)(None, torch.from_numpy(logits)).numpy()
    np.testing.assert_array_equal(np.isinf(top_p_filter(logits, p)), np.isinf(want))


def test_temperature_then_greedy_and_sampling():
    logits = RNG.standard_normal((2, 30)).astype(np.float32)
    np.testing.assert_array_equal(next_tokens(logits, [[], []]), logits.argmax(-1))
    scaled = TemperatureLogitsWarper(0.5)(None, torch.from_numpy(logits)).numpy()
    np.testing.assert_allclose(scaled, logits / 0.5)
    # top_k=1 sampling is greedy whatever the draw
    for seed in range(5):
        np.testing.assert_array_equal(next_tokens(logits, [[], []], 0.7, top_k=1, rng=np.random.default_rng(seed)),
                                      logits.argmax(-1))
    # a draw follows the softmax: frequencies over many draws
    one = np.log(np.array([[0.7, 0.2, 0.1]], np.float32))
    rng = np.random.default_rng(0)
    draws = np.array([next_tokens(one, [[]], 1.0, rng=rng)[0] for _ in range(3000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / 3000, [0.7, 0.2, 0.1], atol=0.03)


# ---- generation ------------------------------------------------------------------------------------------
PROMPT = [3, 17, 42, 99, 5, 230, 11, 64]


def test_greedy_equals_argmax_of_teacher_forced_logits(em, model_dir):
    res = generate(em, PROMPT, max_new_tokens=12, stop_token_ids=[])
    toks = res.tokens[0]
    assert len(toks) == 12 and res.stop_reasons == ["max_new_tokens"]
    seq = PROMPT + toks
    logits = em(engine.tensor([seq], device=DEVICE)).numpy()[0]  # no cache
    np.testing.assert_array_equal(logits[len(PROMPT) - 1:-1].argmax(-1), toks)
    # transformers agrees wherever its top two logits are not near-tied
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager")
    with torch.no_grad():
        ref = hf(torch.tensor([seq])).logits[0, len(PROMPT) - 1:-1].numpy()
    top2 = np.sort(ref, -1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-3
    assert clear.sum() >= 8
    np.testing.assert_array_equal(ref.argmax(-1)[clear], np.array(toks)[clear])
    assert res.prefill_ms > 0 and res.decode_tokens_per_s > 0 and res.decode_steps == 11 and res.peak_bytes > 0
    # the steady rate: the steps after the first WARM_STEPS (eager, recorded, captured), timed apart
    assert res.steady_steps == 11 - WARM_STEPS and 0 < res.steady_ms < res.decode_ms and res.steady_tokens_per_s > 0


def test_seed_makes_sampling_reproducible(em):
    kw = dict(max_new_tokens=10, temperature=1.0, top_k=50, top_p=0.95, stop_token_ids=[])
    a = generate(em, PROMPT, seed=7, **kw).tokens
    b = generate(em, PROMPT, seed=7, **kw).tokens
    c = generate(em, PROMPT, seed=8, **kw).tokens
    assert a == b and a != c


def test_repetition_penalty_changes_the_path(em):
    plain = generate(em, PROMPT, max_new_tokens=16, stop_token_ids=[]).tokens[0]
    pen = generate(em, PROMPT, max_new_tokens=16, repetition_penalty=5.0, stop_token_ids=[]).tokens[0]
    assert len(set(pen)) >= len(set(plain)) and pen != plain
    assert not set(pen) & set(PROMPT)  # a strong penalty steers away from every seen token


def test_stop_tokens_and_streaming_callback(em):
    greedy = generate(em, PROMPT, max_new_tokens=8, stop_token_ids=[]).tokens[0]
    stop = greedy[3]
    first = greedy.index(stop)
    streamed = []
    res = generate(em, PROMPT, max_new_tokens=8, stop_token_ids=[stop], callback=streamed.append)
    assert res.tokens[0] == greedy[:first + 1] and res.stop_reasons == ["stop_token"]
    assert streamed == [[t] for t in res.tokens[0]]
    # default stop ids come from the config's eos_token_id
    assert generate(em, PROMPT, max_new_tokens=3).tokens[0] == greedy[:3] or em.config.eos_token_id in greedy[:3]


def test_batched_left_padded_generation_equals_one_by_one(em):
    prompts = [PROMPT, PROMPT[3:], [7, 7, 8]]
    batch = generate(em, prompts, max_new_tokens=10, stop_token_ids=[])
    for p, toks in zip(prompts, batch.tokens):
        assert generate(em, p, max_new_tokens=10, stop_token_ids=[]).tokens[0] == toks


def test_sliding_window_model_generates_past_its_window(tmp_path):
    m = from_pretrained(save(hf_model("mistral", dict(sliding_window=4)), tmp_path), device=DEVICE)
    res = generate(m, PROMPT, max_new_tokens=10, stop_token_ids=[])
    seq = PROMPT + res.tokens[0]
    logits = m(engine.tensor([seq], device=DEVICE)).numpy()[0]
    np.testing.assert_array_equal(logits[len(PROMPT) - 1:-1].argmax(-1), res.tokens[0])


# ---- tokenizers and the command line ---------------------------------------------------------------------
def test_tokenizer_and_streamer(model_dir):
    tok = load_tokenizer(model_dir)
    assert tok.encode("w3 w17 w42").ids == [3, 17, 42]
    s = TextStreamer(tok)
    text = "".join(s.put(i) for i in [5, 6, 7])
    assert text == tok.decode([5, 6, 7]) == "w5 w6 w7"
    s = TextStreamer(tok, [1, 2])
    assert s.prompt_text + "".join(s.put(i) for i in [5, 6]) == "w1 w2 w5 w6"
    assert load_tokenizer(model_dir.parent / "nowhere") is None


FINAL = re.compile(r"prefill [\d.]+ ms \(\d+ tokens\), decode [\d.]+ tokens/s \(\d+ steps(; [\d.]+ tokens/s after the "
                   r"first \d+, which warm up the step: kernels compiled on first use, recording, capture)?\), "
                   r"peak memory [\d,]+ bytes")


def test_cli_generate_with_ids_and_prompt(model_dir, capsys):
    assert taper_main(["generate", "--model", str(model_dir), "--ids", "3,17,42", "--max-new-tokens", "5",
                       "--stop-ids", ""]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    words = out[0].split()  # the directory has a tokenizer: the prompt is echoed as text
    assert words[:3] == ["w3", "w17", "w42"] and len(words) == 8 and FINAL.search(out[-1])
    assert taper_main(["generate", "--model", str(model_dir), "--prompt", "w3 w17 w42", "--max-new-tokens", "4",
                       "--temperature", "0.8", "--top-p", "0.9", "--seed", "1", "--stop-ids", ""]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    words = out[0].split()
    assert words[:3] == ["w3", "w17", "w42"] and len(words) == 7 and FINAL.search(out[-1])
    assert taper_main(["generate", "--model", str(model_dir), "--ids", "3,17", "--max-new-tokens", "1",
                       "--stop-ids", ""]) == 0  # one token: prefill alone, no decode rate to report (not nan)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out[0].split()) == 3 and ", no decode step, peak memory" in out[-1] and "nan" not in out[-1]
    assert taper_main(["generate", "--model", str(model_dir), "--ids", "3,17", "--max-new-tokens", "8",
                       "--stop-ids", "", "--no-capture"]) == 0  # a recorded step: the rate after its warm-up apart
    final = capsys.readouterr().out.strip().splitlines()[-1]
    assert FINAL.search(final) and "(7 steps; " in final and " tokens/s after the first 3, " in final


def test_cli_generate_errors(model_dir, tmp_path, capsys):
    (tmp_path / "m").mkdir()
    assert taper_main(["generate", "--model", str(tmp_path / "m"), "--ids", "1"]) == 2
    assert "config.json" in capsys.readouterr().err
    notok = save(hf_model("llama"), tmp_path, "notok")
    assert taper_main(["generate", "--model", str(notok), "--prompt", "hi"]) == 2
    assert "--ids" in capsys.readouterr().err
    assert taper_main(["generate", "--model", "preset:llama:tiny", "--ids", "1,2", "--max-new-tokens", "3",
                       "--stop-ids", ""]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out[0].split()) == 3 and all(t.isdigit() for t in out[0].split()) and FINAL.search(out[-1])


def test_a_step_that_cannot_be_recorded_runs_uncaptured(monkeypatch):
    """A decode step whose recording fails (CaptureError: here a quantized mixture of experts, which reads its
    routing on the host, under Captured's check_host as a CUDA graph has it) warns once, goes back to where
    the step began (the recording had advanced the cache's position) and runs as written: every step then
    runs the model's ops (the first, eager one too), so the tokens are the plain step's; an explicit
    capture=True raises instead."""
    import functools
    import warnings
    from engine import generation
    from engine.capture import Captured, CaptureError
    from engine.quant import quantize_module
    m = engine.models.from_preset("mixtral", "tiny")
    quantize_module(m, "q8_0")
    want = generate(m, [[3, 17, 42]], max_new_tokens=8, capture="plain").tokens[0]
    monkeypatch.setattr(generation, "Captured", functools.partial(Captured, check_host=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert generate(m, [[3, 17, 42]], max_new_tokens=8, capture=False).tokens[0] == want
        dec = generation.Decoder(m, 1, 3 + 4, capture=False)
        dec.prefill(engine.tensor([[3, 17, 42]], device=m.device))
        for _ in range(3):
            dec.step()
    assert [str(w.message) for w in caught if "runs uncaptured" in str(w.message)]
    assert dec.step_fn is None and dec.cache.seen == 6 and dec.cache.pos.tolist() == [6]
    with pytest.raises(CaptureError):
        generate(m, [[3, 17, 42]], max_new_tokens=8, capture=True)
