"""Whisper (engine.models.whisper) against transformers' WhisperForConditionalGeneration built from the
same tiny config with the same random weights (save_pretrained -> safetensors -> engine), on real
speech features (tests/fixtures/speech_16k.wav through engine.audio).

fp32: max abs error <= 1e-4 x the reference's scale (encoder output: max |h|; logits: max - min).
Greedy tokens: identical to transformers' generate with the same prompt and suppressions.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GenerationConfig, WhisperConfig
from transformers import WhisperForConditionalGeneration as HFWhisper
from transformers.modeling_outputs import BaseModelOutput

import engine
from engine import audio
from engine.models import from_pretrained, from_preset, model_class
from engine.models.whisper.generate import (GenerationSettings, greedy, greedy_with_timestamps, segments,
                                           timestamp_rules)
from engine.nn import StateDictError
from helpers import DEVICE

FP32_REL = 1e-4
SPEECH = "tests/fixtures/speech_16k.wav"
# the tiny preset's special tokens, laid out as Whisper's: 200 <|endoftext|>, 201 <|startoftranscript|>,
# 202/203 languages, 204/205 tasks. GEN: <|notimestamps|> is the last id (255), so the vocabulary has no
# timestamp tokens (transformers treats any id above <|notimestamps|> as a timestamp and seeks on it).
# GEN_TS (timestamp tests): 206 <|notimestamps|>, timestamps 207..255 (<|0.00|> .. <|0.96|>).
GEN = dict(decoder_start_token_id=201, eos_token_id=200, pad_token_id=200, no_timestamps_token_id=255,
           lang_to_id={"<|en|>": 202, "<|de|>": 203}, task_to_id={"transcribe": 204, "translate": 205},
           is_multilingual=True, suppress_tokens=[1, 2, 3, 7], begin_suppress_tokens=[30, 200])
GEN_TS = dict(GEN, no_timestamps_token_id=206)


def hf_whisper(overrides=None, seed=0):
    """transformers' Whisper of the engine's "tiny" preset; matrices N(0, 1/fan_in), vectors around
    their identity, encoder positions left sinusoidal."""
    cfg = WhisperConfig(**{**model_class("whisper").PRESETS["tiny"], **(overrides or {})})
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    m = HFWhisper(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name == "model.encoder.embed_positions.weight":
                continue
            if p.ndim == 1:
                p.copy_((0.0 if name.endswith("bias") else 1.0) + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / float(np.prod(p.shape[1:])) ** 0.5)
    m.generation_config = GenerationConfig(**GEN, max_length=64)
    return m


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    m = hf_whisper(seed=3)  # seed 3: greedy decoding that does not repeat one token from the start
    d = tmp_path_factory.mktemp("whisper") / "model"
    m.save_pretrained(d)
    return m, from_pretrained(d, device=DEVICE), d


@pytest.fixture(scope="module")
def features():
    """(2, 80, 3000): the speech and the same speech quieter and shifted by 0.25 s."""
    x, _ = audio.read_wav(SPEECH)
    return audio.log_mel_spectrogram(np.stack([audio.pad_or_trim(x), audio.pad_or_trim(np.r_[np.zeros(4000), 0.3 * x])]))


@pytest.fixture(scope="module")
def encoded(pair, features):
    """(transformers' encoder output, the engine's) for the two rows: computed once (the numpy
    backend's encoder over 1500 positions takes about a second)."""
    m, em, _ = pair
    with torch.no_grad():
        ref = m.model.encoder(torch.from_numpy(features)).last_hidden_state
    return ref, em.encode(engine.tensor(features, device=DEVICE))


def ids_for(batch=2, seq=12, seed=1):
    return torch.randint(0, 200, (batch, seq), generator=torch.Generator().manual_seed(seed))


def close(ref, got, scale, what):
    err = float(np.abs(ref - got).max())
    assert err <= FP32_REL * scale, f"{what}: max abs error {err:.3g} > {FP32_REL} x {scale:.3g}"
    return err


def test_loads_with_hf_names_and_tied_projection(pair):
    m, em, d = pair
    assert em.proj_out.weight is em.model.decoder.embed_tokens.weight
    # held once, input-major where the backend's GEMV reads that faster (input_major(gemv=True))
    assert em.proj_out.weight.t().is_contiguous() == bool(getattr(em.proj_out.weight.storage.backend, "LINEAR_INPUT_MAJOR", False))
    names = set(em.state_dict())
    hf = set(m.state_dict()) - {"proj_out.weight"}
    assert hf <= names | {"proj_out.weight"}, sorted(hf - names)[:5]


def test_encoder_parity(encoded):
    ref, got = encoded[0].numpy(), encoded[1].numpy()
    assert got.shape == ref.shape == (2, 1500, 64)
    close(ref, got, np.abs(ref).max(), "encoder output")


def test_teacher_forced_logits_parity(pair, features):
    m, em, _ = pair
    ids = ids_for()
    with torch.no_grad():
        ref = m(input_features=torch.from_numpy(features), decoder_input_ids=ids).logits.numpy()
    got = em(engine.tensor(features, device=DEVICE), engine.tensor(ids.numpy(), device=DEVICE)).numpy()
    assert got.shape == ref.shape == (2, 12, 256)
    close(ref, got, np.ptp(ref), "logits")
    one = em(engine.tensor(features[1:], device=DEVICE), engine.tensor(ids[1:].numpy(), device=DEVICE)).numpy()
    close(ref[1:], one, np.ptp(ref), "batch 1 vs row of batch 2")


@pytest.mark.parametrize("static", [False, True], ids=["kvcache", "static"])
def test_cache_matches_no_cache(pair, encoded, static):
    """A 4-token prefill then 8 single-token steps through the self-attention cache (cross K/V once)."""
    _, em, _ = pair
    ids = ids_for().numpy()
    cross = em.cross_cache(encoded[1])
    full = em.decode(ids, cross).numpy()
    cache = em.new_cache(2, 16, static=static)
    out = [em.decode(ids[:, :4], cross, cache).numpy()]
    out += [em.decode(ids[:, t:t + 1], cross, cache).numpy() for t in range(4, 12)]
    assert cache.seen == 12
    close(full, np.concatenate(out, 1), np.ptp(full), "cache vs no cache")


def hf_generate(m, enc, n=20, **kw):
    """transformers' WhisperForConditionalGeneration.generate on a given encoder output: the new tokens."""
    with torch.no_grad():
        return m.generate(encoder_outputs=BaseModelOutput(last_hidden_state=enc), max_new_tokens=n, **kw).numpy()


def new_of(row, eos=200):
    """transformers' row without its padding after the first eos."""
    row = [int(t) for t in row]
    return row[:row.index(eos) + 1] if eos in row else row


def test_greedy_tokens_match_transformers_generate(pair, encoded):
    """Prompt with language and task, suppress_tokens and begin_suppress_tokens from the generation
    config; each side on its own encoder output."""
    m, em, d = pair
    gen = GenerationSettings.from_dir(d)
    assert gen.lang_to_id == GEN["lang_to_id"] and gen.suppress_tokens == GEN["suppress_tokens"]
    ref = hf_generate(m, encoded[0], language="de", task="translate")
    out = greedy(em, None, gen, language="de", task="translate", max_new_tokens=20, encoder_out=encoded[1])
    assert out.prompt == [201, 203, 205, 255] and all(t[:4] == out.prompt for t in out.tokens)
    assert [new_of(r) for r in ref] == out.new_tokens
    new = [t for row in out.new_tokens for t in row]
    assert len(set(new)) >= 3  # a real sequence, not one token repeated
    assert not set(new) & set(GEN["suppress_tokens"])  # suppressed everywhere
    assert all(row[0] not in GEN["begin_suppress_tokens"] for row in out.new_tokens)  # and at the start


def test_language_detection_matches_transformers(pair, encoded):
    """No language given: both pick the most likely language token, then decode the same."""
    m, em, d = pair
    gen = GenerationSettings.from_dir(d)
    with torch.no_grad():
        lang = m.detect_language(encoder_outputs=BaseModelOutput(last_hidden_state=encoded[0]),
                                 generation_config=m.generation_config).numpy()
    out = greedy(em, None, gen, max_new_tokens=20, encoder_out=encoded[1])
    assert [t[1] for t in out.tokens] == [int(v) for v in lang.reshape(-1)]
    assert [new_of(r) for r in hf_generate(m, encoded[0], task="transcribe")] == out.new_tokens


def test_greedy_on_the_same_encoder_output(pair, encoded):
    """Both decoders fed transformers' encoder output: the same tokens."""
    m, em, d = pair
    ref = hf_generate(m, encoded[0], n=30, language="en")
    out = greedy(em, None, GenerationSettings.from_dir(d), language="en", max_new_tokens=30,
                 encoder_out=engine.tensor(encoded[0].numpy(), device=DEVICE))
    assert [new_of(r) for r in ref] == out.new_tokens


def test_capture_modes_give_the_same_tokens(pair, encoded):
    """The Decoder's planned step (capture=False), the model's plain ops (capture="plain") and the
    default (a CUDA graph on a GPU)."""
    _, em, d = pair
    gen = GenerationSettings.from_dir(d)
    a = greedy(em, None, gen, language="en", max_new_tokens=12, capture=False, encoder_out=encoded[1]).tokens
    assert a == greedy(em, None, gen, language="en", max_new_tokens=12, capture="plain", encoder_out=encoded[1]).tokens
    assert a == greedy(em, None, gen, language="en", max_new_tokens=12, encoder_out=encoded[1]).tokens


def test_without_generation_config_prompt_is_start_token(pair, encoded):
    _, em, _ = pair
    gen = GenerationSettings.from_config(em.config)
    assert gen.prompt() == [201] and not gen.lang_to_id
    out = greedy(em, None, gen, max_new_tokens=5, encoder_out=encoded[1][:1])
    assert out.prompt == [201] and 1 <= len(out.new_tokens[0]) <= 5


def test_settings_errors(pair):
    gen = GenerationSettings.from_dir(pair[2])
    with pytest.raises(ValueError, match="unknown language 'fr'.*knows: de, en"):
        gen.language_id("fr")
    with pytest.raises(ValueError, match="unknown task 'summarize'"):
        gen.prompt(202, "summarize")


def test_errors(pair, encoded):
    _, em, _ = pair
    with pytest.raises(Exception, match=r"input features must be \(batch, 80, 3000\).*got \(1, 80, 100\)"):
        em.encode(np.zeros((1, 80, 100), np.float32))
    with pytest.raises(ValueError, match="max_target_positions=64"):
        greedy(em, None, GenerationSettings.from_dir(pair[2]), language="en", max_new_tokens=100,
               encoder_out=encoded[1])


def test_missing_keys_listed(tmp_path):
    from safetensors.torch import load_file, save_file
    m = hf_whisper()
    m.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    del sd["model.decoder.layers.1.encoder_attn.k_proj.weight"]
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(StateDictError, match=r"missing    model.decoder.layers.1.encoder_attn.k_proj.weight \(64, 64\)"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize("preset,d,layers,params", [("whisper-tiny", 384, 4, 37_760_640),
                                                    ("whisper-base", 512, 6, 72_593_920)])
def test_real_size_presets_match_transformers_shapes(preset, d, layers, params):
    """The presets are openai/whisper-tiny and -base shaped: transformers' model of the same config has
    the same parameters (names and shapes), and the counts of the published checkpoints."""
    cls = model_class("whisper")
    cfg = cls.Config.from_dict(cls.PRESETS[preset])
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.vocab_size) == (d, layers, layers, 51865)
    with torch.device("meta"):
        hf = HFWhisper(WhisperConfig(**cls.PRESETS[preset]))
    shapes = {k: tuple(v.shape) for k, v in hf.state_dict().items() if k != "proj_out.weight"}
    assert sum(int(np.prod(s)) for s in shapes.values()) == params


def test_tiny_preset_runs(features):
    em = from_preset("whisper", "tiny", device=DEVICE)
    out = greedy(em, features[:1], max_new_tokens=4)
    assert out.prompt == [201] and len(out.new_tokens[0]) <= 4


def test_impls_adapters_encode_and_decode_alike(pair, features):
    """impls' engine and torch adapters on the same directory: the encoder outputs agree and the greedy
    loops (engine.generation's Decoder over DecoderView; transformers with an EncoderDecoderCache)
    choose the same tokens; a second audio reuses the engine's decoder (cross K/V copied in place)."""
    import impls
    _, _, d = pair
    e = impls.get("engine", "cpu" if DEVICE.type == "cpu" else "cuda").load(str(d))
    t = impls.get("torch", "cpu").load(str(d))
    prompt = [[201, 202, 204, 255]]
    for row in (0, 1):
        f = features[row:row + 1]
        ref = t.encode(f).numpy()
        close(ref, e.encode(f).float().numpy(), np.abs(ref).max(), "impls encode")
        assert (e.generate(prompt, 10) == t.generate(prompt, 10)).all()
    with pytest.raises(NotImplementedError, match="call encode"):
        impls.get("engine", "cpu").load("whisper:tiny").start(prompt, 2)


# ---- timestamps -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_initial", [None, 5])
def test_timestamp_rules_match_transformers_processor(max_initial):
    """timestamp_rules against transformers' WhisperTimeStampLogitsProcessor on random logits and token
    histories (text, single and paired timestamps, decreasing ones, the first step)."""
    from transformers.generation.logits_process import WhisperTimeStampLogitsProcessor
    gen = GenerationSettings.from_dict({**GEN_TS, "max_initial_timestamp_index": max_initial})
    hf = WhisperTimeStampLogitsProcessor(GenerationConfig(**GEN_TS, max_initial_timestamp_index=max_initial),
                                         begin_index=4)
    rng = np.random.default_rng(0)
    histories = [[], [210], [10, 230], [211, 12], [12, 220, 221], [215, 40, 212], [5, 6], [230, 231, 7, 240]]
    for hist in histories:
        for bias in (0.0, 4.0):  # 4: timestamps likely enough to win over text
            scores = rng.standard_normal((2, 256)).astype(np.float32)
            scores[:, 207:] += bias
            rows = [[201, 202, 204, 30] + hist] * 2
            ref = hf(torch.tensor(rows), torch.from_numpy(scores.copy())).numpy()
            got = timestamp_rules(scores, [hist, hist], gen)
            np.testing.assert_array_equal(np.isinf(got), np.isinf(ref), err_msg=str(hist))
            assert got.argmax(-1).tolist() == ref.argmax(-1).tolist()


@pytest.fixture
def pair_ts(pair):
    m, em, d = pair
    m.generation_config = GenerationConfig(**GEN_TS, max_length=64)  # restored below
    yield m, em, GenerationSettings.from_dict(GEN_TS)
    m.generation_config = GenerationConfig(**GEN, max_length=64)


def test_timestamp_decoding_matches_transformers(pair_ts, encoded):
    """One window with timestamps against transformers' generation loop with its Whisper processors in
    its order (begin-suppress, suppress, timestamps) on the same prompt (no <|notimestamps|>)."""
    from transformers.generation.logits_process import (LogitsProcessorList, SuppressTokensAtBeginLogitsProcessor,
                                                        SuppressTokensLogitsProcessor,
                                                        WhisperTimeStampLogitsProcessor)
    from transformers.generation.utils import GenerationMixin
    m, em, gen = pair_ts
    out = greedy_with_timestamps(em, None, gen, language="en", max_new_tokens=24, encoder_out=encoded[1])
    assert out.prompt == [201, 202, 204]
    procs = LogitsProcessorList([SuppressTokensAtBeginLogitsProcessor(GEN["begin_suppress_tokens"], 3),
                                 SuppressTokensLogitsProcessor(GEN["suppress_tokens"]),
                                 WhisperTimeStampLogitsProcessor(m.generation_config, begin_index=3)])
    with torch.no_grad():
        ref = GenerationMixin.generate(m, encoder_outputs=BaseModelOutput(last_hidden_state=encoded[0]),
                                       decoder_input_ids=torch.tensor([out.prompt] * 2), logits_processor=procs,
                                       max_new_tokens=24, do_sample=False, num_beams=1, suppress_tokens=None,
                                       begin_suppress_tokens=None).numpy()
    assert [new_of(r[3:]) for r in ref] == out.new_tokens
    stamps = [t for row in out.new_tokens for t in row if t >= 207]
    assert stamps and out.new_tokens[0][0] >= 207  # it does emit timestamps, starting with one
    for row in out.new_tokens:
        for start, end, _ in segments(row, gen):
            assert 0.0 <= start <= end <= 0.96


# ---- reduced precision ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_reduced_precision_error_within_ratio_of_torch(tmp_path, features, dtype):
    """Saved in `dtype`, loaded by transformers in fp64 (the reference) and in `dtype`, and by the
    engine in `dtype`: the engine's max abs error from the fp64 run is at most REDUCED_ERROR_RATIO x
    torch's own, for the encoder output and the teacher-forced logits."""
    from migration.tolerances import REDUCED_ERROR_RATIO
    tdt = {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    hf_whisper(seed=3).to(tdt).save_pretrained(tmp_path)
    m64 = HFWhisper.from_pretrained(tmp_path, dtype=torch.float64, attn_implementation="eager").eval()
    m16 = HFWhisper.from_pretrained(tmp_path, dtype=tdt, attn_implementation="eager").eval()
    em = from_pretrained(tmp_path, device=DEVICE)
    assert em.dtype.name == dtype
    f, ids = features[:1], ids_for(1)
    with torch.no_grad():
        ref = m64(input_features=torch.from_numpy(f).double(), decoder_input_ids=ids)
        tor = m16(input_features=torch.from_numpy(f).to(tdt), decoder_input_ids=ids)
    enc = em.encode(engine.tensor(f, device=DEVICE))
    got = {"encoder": enc.float().numpy(), "logits": em.decode(ids.numpy(), em.cross_cache(enc)).float().numpy()}
    refs = {"encoder": (ref.encoder_last_hidden_state, tor.encoder_last_hidden_state), "logits": (ref.logits, tor.logits)}
    for k, (r, t) in refs.items():
        r, t = r.double().numpy(), t.double().numpy()
        torch_err, engine_err = np.abs(r - t).max(), np.abs(r - got[k]).max()
        assert torch_err > 0 and engine_err <= REDUCED_ERROR_RATIO * torch_err, (k, engine_err, torch_err)


@pytest.mark.parametrize("num_beams,n", [(2, 12), (4, 16)])
def test_beam_search_matches_transformers(pair, encoded, num_beams, n):
    """The best beam against transformers' generate(num_beams=...) on the same encoder output."""
    from engine.models.whisper.generate import beam_search
    m, em, d = pair
    ref = hf_generate(m, encoded[0], n=n, language="en", num_beams=num_beams)
    out = beam_search(em, None, GenerationSettings.from_dir(d), language="en", num_beams=num_beams,
                      max_new_tokens=n, encoder_out=encoded[1])
    assert [new_of(r) for r in ref] == out.new_tokens
    greedy_out = greedy(em, None, GenerationSettings.from_dir(d), language="en", max_new_tokens=n,
                        encoder_out=encoded[1])
    assert greedy_out.new_tokens != out.new_tokens  # the beams found another answer than greedy
