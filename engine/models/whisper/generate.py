"""Whisper decoding: the special-token prompt, suppressed tokens, language detection and greedy
decoding whose step is engine.generation's Decoder step (a StaticCache with device positions and the
token chosen on the device), so on a GPU each token is one CUDA-graph replay.

    gen = GenerationSettings.from_dir(model_dir)           # generation_config.json (or config.json)
    out = greedy(model, features, gen, language="en", task="transcribe", max_new_tokens=64)
    out.tokens        # per row: prompt + new tokens (eos included when reached), as transformers returns

The prompt is transformers' (and openai-whisper's): <|startoftranscript|>, then for multilingual models
the language token (given, or detected: the most likely language token after <|startoftranscript|>)
and the task token, then <|notimestamps|>. Logits get -inf at `suppress_tokens` on every step and also
at `begin_suppress_tokens` on the first generated token.

Also here, as host loops (eager steps, logits read each step): `greedy_with_timestamps` (no
<|notimestamps|>; transformers' timestamp rules) with `segments`, and `beam_search` (transformers'
beam search, early_stopping=False). `transcribe` cuts long audio into fixed 30 s windows (the only
long-form mode without timestamps); `transcribe_long` is transformers' (and openai-whisper's) long-form
with timestamps: each window starts at the previous one's last timestamp pair, with temperature fallback
(compression ratio, average log-probability) and optional conditioning on the previous text.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine import dtype as D
from engine import ops
from engine.generation import Decoder
from engine.nn.attention import attention_keys


@dataclass
class GenerationSettings:
    """The generation_config.json keys Whisper's decoding reads (transformers' names)."""
    decoder_start_token_id: int
    eos_token_id: int | list | None = None
    pad_token_id: int | None = None
    no_timestamps_token_id: int | None = None
    lang_to_id: dict = field(default_factory=dict)
    task_to_id: dict = field(default_factory=dict)
    is_multilingual: bool = False
    suppress_tokens: list = field(default_factory=list)
    begin_suppress_tokens: list = field(default_factory=list)
    max_length: int | None = None
    max_initial_timestamp_index: int | None = None
    prev_sot_token_id: int | None = None  # <|startofprev|>: conditioning on previous text (long-form)

    @classmethod
    def from_dict(cls, d: dict) -> "GenerationSettings":
        names = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in names and v is not None}
        if "decoder_start_token_id" not in kw:
            raise ValueError("whisper generation settings need decoder_start_token_id (<|startoftranscript|>)")
        return cls(**kw)

    @classmethod
    def from_config(cls, config) -> "GenerationSettings":
        """From the model config alone (no generation_config.json): start token, eos and suppressions."""
        c = config if isinstance(config, dict) else config.__dict__
        return cls.from_dict({k: c.get(k) for k in ("decoder_start_token_id", "eos_token_id", "pad_token_id",
                                                     "suppress_tokens", "begin_suppress_tokens")})

    @classmethod
    def from_dir(cls, path, config=None) -> "GenerationSettings":
        """generation_config.json of a model directory, with config.json's values for keys it lacks."""
        from engine.models import read_config
        base = read_config(path) if config is None else (config if isinstance(config, dict) else config.__dict__)
        file = Path(path) / "generation_config.json"
        gen = {}
        if file.is_file():
            try:
                gen = json.loads(file.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{file}: not valid JSON ({e.msg})") from None
        merged = {k: base.get(k) for k in ("decoder_start_token_id", "eos_token_id", "pad_token_id",
                                           "suppress_tokens", "begin_suppress_tokens")}
        merged.update({k: v for k, v in gen.items() if v is not None})
        return cls.from_dict(merged)

    @property
    def stop_ids(self) -> set:
        e = self.eos_token_id
        return set() if e is None else set(e) if isinstance(e, (list, tuple)) else {int(e)}

    def language_id(self, language: str) -> int:
        """'en' or '<|en|>' -> its token id (ValueError listing the known ones)."""
        if not self.lang_to_id:
            raise ValueError("this model has no language tokens (generation_config.json lacks lang_to_id)")
        lang = language.strip().lower()
        key = lang if lang.startswith("<|") else f"<|{lang}|>"
        if key not in self.lang_to_id:
            known = ", ".join(k.strip("<|>") for k in sorted(self.lang_to_id))
            raise ValueError(f"unknown language {language!r} (this model knows: {known})")
        return int(self.lang_to_id[key])

    @property
    def timestamp_begin(self) -> int:
        """The first timestamp token (<|0.00|>): right after <|notimestamps|>."""
        if self.no_timestamps_token_id is None:
            raise ValueError("this model has no timestamp tokens (generation_config.json lacks no_timestamps_token_id)")
        return int(self.no_timestamps_token_id) + 1

    def prompt(self, language_id: int | None = None, task: str | None = None, timestamps: bool = False) -> list:
        """[<|startoftranscript|>, <|lang|>, <|task|>, <|notimestamps|>] as the model has them (without
        <|notimestamps|> when decoding timestamps)."""
        ids = [int(self.decoder_start_token_id)]
        if self.is_multilingual or self.lang_to_id:
            if language_id is not None:
                ids.append(int(language_id))
            t = task or "transcribe"
            if t not in self.task_to_id:
                raise ValueError(f"unknown task {t!r} (known: {', '.join(sorted(self.task_to_id)) or 'none'})")
            ids.append(int(self.task_to_id[t]))
        elif task not in (None, "transcribe"):
            raise ValueError(f"task {task!r} needs a multilingual model; this one only transcribes")
        if self.no_timestamps_token_id is not None and not timestamps:
            ids.append(int(self.no_timestamps_token_id))
        return ids


@dataclass
class WhisperOutput:
    tokens: list  # per row: the prompt then the new tokens (eos included when reached)
    prompt: list
    encode_ms: float
    decode_ms: float
    decode_steps: int

    @property
    def new_tokens(self) -> list:
        return [t[len(self.prompt):] for t in self.tokens]


class DecoderView:
    """What engine.generation.Decoder needs of a model (`model(ids, cache, mask, pos)` -> hidden,
    `lm_head`, `new_cache`, config, device), over Whisper's decoder and one audio's cross K/V. The
    logits get the suppression bias: the first-token one during the prefill (an empty cache), the
    every-step one after (fixed tensors: a captured step reads the same buffer every replay).
    `set_cross` puts another audio's cross K/V into the same buffers, so a captured step serves it."""

    def __init__(self, whisper, cross, bias_first=None, bias=None):
        self.whisper, self.cross = whisper, cross
        self.config, self.device = whisper.config, whisper.device
        self.bias_first, self.bias = bias_first, bias
        self._first = True

    def set_cross(self, cross) -> None:
        """Copy cross = model.cross_cache(encoder output) of the same shape into this view's buffers."""
        if [tuple(k.shape) for k, _ in cross] != [tuple(k.shape) for k, _ in self.cross]:
            raise ValueError(f"set_cross: cross K/V of shape {tuple(cross[0][0].shape)} for a view of "
                             f"{tuple(self.cross[0][0].shape)} (make a new DecoderView)")
        for (k0, v0), (k, v) in zip(self.cross, cross):
            k0.copy_(k)
            v0.copy_(v)

    def new_cache(self, batch_size, max_len, static=False):
        return self.whisper.new_cache(batch_size, max_len, static=static)

    def model(self, ids, cache, mask=None, position_ids=None):
        self._first = cache.seen == 0  # host bookkeeping: the prefill is the first call on a fresh cache
        return self.whisper.model.decoder(ids, self.cross, cache)

    def lm_head(self, h):
        logits = self.whisper.proj_out(h)
        bias = self.bias_first if self._first else self.bias
        return logits if bias is None else logits + bias


def _bias(vocab: int, ids, dtype, device):
    ids = [int(i) for i in ids or () if 0 <= int(i) < vocab]
    if not ids:
        return None
    b = np.zeros(vocab, np.float32)
    b[ids] = -np.inf
    return ops.tensor(b, dtype=dtype, device=device)


def detect_language(model, cross, gen: GenerationSettings) -> list:
    """Per row, the id of the most likely language token after <|startoftranscript|>."""
    b = cross[0][0].shape[0]
    ids = ops.tensor(np.full((b, 1), gen.decoder_start_token_id, np.int64), dtype=D.int64, device=model.device)
    logits = model.decode(ids, cross)[:, -1].float().numpy()  # (B, V)
    lang = np.array(sorted(int(v) for v in gen.lang_to_id.values()))
    return [int(lang[np.argmax(row[lang])]) for row in logits]


def _room(model, plen: int, max_new_tokens) -> int:
    """max_new_tokens, or (None) all the decoder's positions leave after the prompt of plen tokens; a
    clear error past them."""
    room = model.config.max_target_positions - plen
    if max_new_tokens is None:
        return room
    if max_new_tokens > room:
        raise ValueError(f"whisper: a prompt of {plen} tokens + max_new_tokens={max_new_tokens} exceeds "
                         f"max_target_positions={model.config.max_target_positions}")
    return max_new_tokens


def _start(model, features, encoder_out, gen: GenerationSettings, language, task, timestamps: bool = False):
    """(encoder output, cross-attention cache, one prompt per row): the language given, detected (a
    multilingual model) or none."""
    enc = encoder_out if encoder_out is not None else model.encode(features)
    cross = model.cross_cache(enc)
    b = enc.shape[0]
    if language is not None:
        lang = [gen.language_id(language)] * b
    elif gen.is_multilingual and gen.lang_to_id:
        lang = detect_language(model, cross, gen)
    else:
        lang = [None] * b
    return enc, cross, [gen.prompt(lang_id, task, timestamps=timestamps) for lang_id in lang]


def greedy(model, features, gen: GenerationSettings | None = None, language: str | None = None,
           task: str | None = None, max_new_tokens: int = 64, capture=None, encoder_out=None) -> WhisperOutput:
    """Greedy transcription of log-mel features (B, n_mels, 3000) (or a given encoder output): the
    prompt of the module docstring, tokens until eos or max_new_tokens. capture: engine.generation.Decoder's."""
    gen = gen or GenerationSettings.from_config(model.config)
    t0 = time.perf_counter()
    enc, cross, prompts = _start(model, features, encoder_out, gen, language, task)
    b = enc.shape[0]
    plen = len(prompts[0])
    encode_ms = (time.perf_counter() - t0) * 1e3
    max_new_tokens = _room(model, plen, max_new_tokens)
    max_len = plen + max_new_tokens
    vocab = model.config.vocab_size
    every = list(gen.suppress_tokens or [])
    view = DecoderView(model, cross, _bias(vocab, every + list(gen.begin_suppress_tokens or []), model.dtype,
                                            model.device), _bias(vocab, every, model.dtype, model.device))
    dec = Decoder(view, b, max_len, capture=capture)
    stops = gen.stop_ids
    t1 = time.perf_counter()
    dec.prefill(ops.tensor(np.array(prompts, np.int64), dtype=D.int64, device=model.device))
    steps = 0
    done = np.zeros(b, bool)
    while True:
        new = dec.tokens(dec.count - 1)[:, 0]  # the token just chosen (one host read per step)
        done |= np.isin(new, list(stops)) if stops else False
        if done.all() or dec.count >= max_new_tokens:
            break
        dec.step()
        steps += 1
    toks = dec.tokens()
    out = []
    for i in range(b):
        row = [int(t) for t in toks[i]]
        hit = [j for j, t in enumerate(row) if t in stops]
        out.append(prompts[i] + (row[:hit[0] + 1] if hit else row))
    return WhisperOutput(out, prompts[0], encode_ms, (time.perf_counter() - t1) * 1e3, steps)


def transcribe(model, samples, gen: GenerationSettings | None = None, language: str | None = None,
               task: str | None = None, max_new_tokens: int | None = None, capture=None, timestamps: bool = False) -> list:
    """16 kHz mono samples of any length -> one WhisperOutput per 30 s window, in order (cut into
    consecutive fixed 30 s windows, each decoded once; the last one is zero-padded). Without timestamps
    this is the only long-form mode: the prompt says <|notimestamps|>, so an id in the timestamp range is
    not a segment end and never moves a window (transformers' generate seeks on any such id, and on
    30 s or less decodes the rest again; it refuses long-form without timestamps). With timestamps,
    `transcribe_long` seeks to the last timestamp as transformers and openai-whisper do; here
    (timestamps=True) each fixed window is decoded with greedy_with_timestamps."""
    from engine import audio
    x = np.asarray(samples, np.float32)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"transcribe(): mono (n,) samples expected, got shape {x.shape}")
    from engine.capture import CapturedForward
    n = audio.N_SAMPLES
    encoder = CapturedForward(model.encode, capture, fallback=True)  # one shape for every window: one graph
    out = []
    for start in range(0, len(x), n):
        feats = audio.log_mel_spectrogram(x[start:start + n], model.config.num_mel_bins)[None]  # (1, n_mels, 3000)
        if timestamps:
            out.append(greedy_with_timestamps(model, feats, gen or GenerationSettings.from_config(model.config),
                                              language, task, max_new_tokens))
        else:  # the encoder output is read into the cross K/V before the next window's encode overwrites it
            t0 = time.perf_counter()
            enc = encoder(ops.tensor(feats, dtype=D.float32, device=model.device))  # cast to the model's in encode
            enc_ms = (time.perf_counter() - t0) * 1e3
            w = greedy(model, None, gen, language, task, max_new_tokens, capture, encoder_out=enc)
            w.encode_ms += enc_ms
            out.append(w)
    return out


# ---- timestamps (a host loop: each step's rules read the tokens so far) -------------------------------------
TIME_PRECISION = 0.02  # seconds per timestamp token


def timestamp_rules(scores: np.ndarray, generated: list, gen: GenerationSettings) -> np.ndarray:
    """transformers' WhisperTimeStampLogitsProcessor on (B, V) host logits; generated: per row, the
    tokens after the prompt. -inf at: <|notimestamps|>; after one timestamp, text (a pair must close)
    and after a closed pair, timestamps; timestamps before the last one; on the first token anything but
    a timestamp up to max_initial_timestamp_index; text, when the timestamps' total probability beats
    the likeliest text token."""
    s = np.array(scores, dtype=np.float32)
    tb, eos = gen.timestamp_begin, min(gen.stop_ids) if gen.stop_ids else gen.timestamp_begin - 1
    s[:, gen.no_timestamps_token_id] = -np.inf
    for k, seq in enumerate(generated):
        last = len(seq) >= 1 and seq[-1] >= tb
        penultimate = len(seq) < 2 or seq[-2] >= tb
        if last:
            if penultimate:
                s[k, tb:] = -np.inf
            else:
                s[k, :eos] = -np.inf
        stamps = [t for t in seq if t >= tb]
        lowest = tb if not stamps else (stamps[-1] if last and not penultimate else stamps[-1] + 1)
        s[k, tb:lowest] = -np.inf
    if not generated[0]:  # the first token: a timestamp
        s[:, :tb] = -np.inf
        if gen.max_initial_timestamp_index is not None:
            s[:, tb + gen.max_initial_timestamp_index + 1:] = -np.inf
    with np.errstate(invalid="ignore", divide="ignore"):
        m = s.max(axis=-1, keepdims=True)
        logp = s - m - np.log(np.exp(s - m).sum(axis=-1, keepdims=True))  # log_softmax
        mt = logp[:, tb:].max(axis=-1, keepdims=True)
        ts_logp = (mt + np.log(np.exp(logp[:, tb:] - mt).sum(axis=-1, keepdims=True)))[:, 0]  # logsumexp
    text_max = logp[:, :tb].max(axis=-1)
    s[ts_logp > text_max, :tb] = -np.inf
    return s


def greedy_with_timestamps(model, features, gen: GenerationSettings, language: str | None = None,
                           task: str | None = None, max_new_tokens: int = 64, encoder_out=None) -> WhisperOutput:
    """Greedy decoding of one 30 s window with timestamp tokens (the prompt without <|notimestamps|>;
    processors in transformers' order: begin_suppress_tokens, suppress_tokens, timestamp_rules). The
    rules run on the host every step, so this loop is eager (KVCache, logits read per step);
    `segments` of the output turn the tokens into (start s, end s, tokens)."""
    t0 = time.perf_counter()
    enc, cross, prompts = _start(model, features, encoder_out, gen, language, task, timestamps=True)
    b = enc.shape[0]
    plen = len(prompts[0])
    max_new_tokens = _room(model, plen, max_new_tokens)
    encode_ms = (time.perf_counter() - t0) * 1e3
    t1 = time.perf_counter()
    cache = model.new_cache(b, plen + max_new_tokens)
    ids = np.array(prompts, np.int64)
    stops, pad = gen.stop_ids, gen.pad_token_id if gen.pad_token_id is not None else 0
    new = [[] for _ in range(b)]
    done = np.zeros(b, bool)
    every = [int(t) for t in gen.suppress_tokens or ()]
    first = every + [int(t) for t in gen.begin_suppress_tokens or ()]
    steps = 0
    while True:
        scores = model.decode(ids, cross, cache)[:, -1].float().numpy()  # (B, V)
        scores[:, first if not new[0] else every] = -np.inf
        tok = timestamp_rules(scores, new, gen).argmax(-1)
        tok = np.where(done, pad, tok)
        for i in range(b):
            if not done[i]:
                new[i].append(int(tok[i]))
                done[i] = int(tok[i]) in stops
        steps += 1
        if done.all() or steps >= max_new_tokens:
            break
        ids = tok[:, None].astype(np.int64)
    return WhisperOutput([p + n for p, n in zip(prompts, new)], prompts[0], encode_ms,
                         (time.perf_counter() - t1) * 1e3, steps - 1)


def segments(tokens: list, gen: GenerationSettings, offset_s: float = 0.0) -> list:
    """(start s, end s, text tokens) for each pair of timestamps in one row's new tokens; text after
    an unclosed timestamp runs to the last timestamp seen."""
    tb = gen.timestamp_begin
    out, start, text = [], None, []
    for t in tokens:
        if t >= tb:
            if start is None:
                start = (t - tb) * TIME_PRECISION
            else:
                out.append((offset_s + start, offset_s + (t - tb) * TIME_PRECISION, text))
                start, text = None, []
        elif t not in gen.stop_ids:
            text.append(t)
    if text:
        out.append((offset_s + (start or 0.0), offset_s + (start or 0.0), text))
    return out


# ---- beam search (a host loop over the beams' log-probabilities) -----------------------------------------------
def beam_search(model, features, gen: GenerationSettings | None = None, language: str | None = None,
                task: str | None = None, num_beams: int = 5, max_new_tokens: int = 64, length_penalty: float = 1.0,
                encoder_out=None) -> WhisperOutput:
    """Beam search over one 30 s window per row, as transformers' `_beam_search` with early_stopping=False:
    each step takes the log-softmax of the logits (suppressions applied to it), adds the running beam
    scores and keeps the top 2 * num_beams continuations (more with several eos ids); a continuation
    ending in eos (or at max length) among the first num_beams is a finished hypothesis scored
    sum_logprobs / new_len ** length_penalty; the num_beams best unfinished ones run on (their KV cache
    rows gathered); the loop stops when no running beam can beat the worst finished one. Returns the best
    hypothesis per row (prompt + new tokens, eos included). Host bookkeeping, eager steps."""
    gen = gen or GenerationSettings.from_config(model.config)
    t0 = time.perf_counter()
    enc, cross, prompts = _start(model, features, encoder_out, gen, language, task)
    b = enc.shape[0]
    plen = len(prompts[0])
    max_new_tokens = _room(model, plen, max_new_tokens)
    max_len = plen + max_new_tokens
    nb = num_beams
    rows = ops.tensor(np.repeat(np.arange(b), nb), dtype=D.int64, device=model.device)  # (B*nb,) -> row
    cross = [(attention_keys(k.index_select(0, rows)), v.index_select(0, rows)) for k, v in cross]  # per beam
    encode_ms = (time.perf_counter() - t0) * 1e3
    t1 = time.perf_counter()
    cache = model.new_cache(b * nb, max_len)
    stops = sorted(gen.stop_ids)
    keep = max(2, 1 + len(stops)) * nb
    pad = gen.pad_token_id if gen.pad_token_id is not None else (stops[0] if stops else -1)
    run_seq = np.full((b, nb, max_len), pad, np.int64)
    run_seq[:, :, :plen] = np.array(prompts)[:, None, :]
    run_score = np.zeros((b, nb), np.float32)
    run_score[:, 1:] = -1e9
    fin_seq, fin_score = run_seq.copy(), np.full((b, nb), -1e9, np.float32)
    fin = np.zeros((b, nb), bool)
    unsatisfied = np.ones((b, 1), bool)
    every = [int(t) for t in gen.suppress_tokens or ()]
    first = every + [int(t) for t in gen.begin_suppress_tokens or ()]
    ids = run_seq[:, :, :plen].reshape(b * nb, plen)
    cur, steps = plen, 0
    while True:
        logits = model.decode(ids, cross, cache)[:, -1].float().numpy().astype(np.float32)  # (B*nb, V)
        m = logits.max(-1, keepdims=True)
        logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
        logp[:, first if cur == plen else every] = -np.inf
        v = logp.shape[-1]
        acc = (logp.reshape(b, nb, v) + run_score[:, :, None]).reshape(b, nb * v)
        top = np.argsort(-acc, axis=-1, kind="stable")[:, :keep]  # (B, K), best first
        top_lp = np.take_along_axis(acc, top, -1)
        src, tok = top // v, top % v
        cand = np.take_along_axis(run_seq, src[:, :, None], 1)  # (B, K, max_len)
        cand[:, :, cur] = tok
        hits = np.isin(tok, stops) | (cur + 1 >= max_len)
        # finished hypotheses: among the first nb candidates, length-normalised, merged with the kept ones
        just = hits & (np.arange(keep) < nb)[None, :]
        norm = top_lp / float(cur + 1 - plen) ** length_penalty
        norm = norm + (~unsatisfied) * -1e9 + (~just) * -1e9
        all_seq, all_sc = np.concatenate([fin_seq, cand], 1), np.concatenate([fin_score, norm], 1)
        all_fin = np.concatenate([fin, just], 1)
        best = np.argsort(-all_sc, axis=-1, kind="stable")[:, :nb]
        fin_seq = np.take_along_axis(all_seq, best[:, :, None], 1)
        fin_score = np.take_along_axis(all_sc, best, -1)
        fin = np.take_along_axis(all_fin, best, -1)
        # running beams: the nb best candidates that did not stop
        live = top_lp + hits * -1e9
        nxt = np.argsort(-live, axis=-1, kind="stable")[:, :nb]
        run_seq = np.take_along_axis(cand, nxt[:, :, None], 1)
        run_score = np.take_along_axis(live, nxt, -1).astype(np.float32)
        beam_src = np.take_along_axis(src, nxt, -1) + np.arange(b)[:, None] * nb  # (B, nb) flat source beams
        cur += 1
        steps += 1
        best_run = run_score[:, :1] / float(cur - plen) ** length_penalty
        worst_fin = np.where(fin, fin_score.min(-1, keepdims=True), -1e9)
        unsatisfied = unsatisfied & (best_run > worst_fin).any(-1, keepdims=True)
        if not unsatisfied.any() or hits.all() or cur >= max_len:
            break
        idx = ops.tensor(beam_src.reshape(-1), dtype=D.int64, device=model.device)
        for layer in range(len(cache.keys)):  # the chosen beams' histories, in place
            for buf in (cache.keys[layer], cache.values[layer]):
                buf.copy_(buf.index_select(0, idx))
        ids = run_seq[:, :, cur - 1].reshape(b * nb, 1)
    out = []
    for i in range(b):
        row = [int(t) for t in fin_seq[i, 0, plen:cur]]
        hit = [j for j, t in enumerate(row) if t in gen.stop_ids]
        out.append(prompts[i] + (row[:hit[0] + 1] if hit else row))
    return WhisperOutput(out, prompts[0], encode_ms, (time.perf_counter() - t1) * 1e3, steps)
