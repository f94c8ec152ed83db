"""Whisper long-form transcription (transformers' long-form generate): sequential 30 s windows that
seek to the last timestamp pair, temperature fallback on compression ratio and average log-probability,
optional conditioning on the previous text. The per-window decoding is generate.py's."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from engine.models.whisper.generate import TIME_PRECISION, GenerationSettings, _room, _start, timestamp_rules


# ---- long-form: sequential 30 s windows that seek to the last timestamp, with temperature fallback -------------
@dataclass
class Segment:
    start: float  # seconds from the start of the audio
    end: float
    tokens: list  # the segment's tokens, timestamps included (as transformers returns them)


@dataclass
class LongFormOutput:
    tokens: list  # every segment's tokens in order: transformers' long-form `sequences` row (no prompt, no eos)
    segments: list  # Segment, in order
    windows: list  # per decoded window: {"seek", "frames", "attempts": [{"temperature", "avg_logprob",
    #                "compression_ratio", "fallback"}]} (the last attempt is the one kept)
    encode_ms: float = 0.0
    decode_ms: float = 0.0


def compression_ratio(tokens, vocab_size: int) -> float:
    """Raw bytes of the tokens (little-endian, int(log2(vocab) / 8) + 1 bytes each) over their zlib size:
    high for a window that repeats itself (openai's and transformers' measure)."""
    import math
    import zlib
    width = int(math.log2(vocab_size) / 8) + 1
    raw = b"".join(int(t).to_bytes(width, "little") for t in tokens)
    return len(raw) / len(zlib.compress(raw))


def _log_softmax(s: np.ndarray) -> np.ndarray:
    s = s.astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.max(s, axis=-1, keepdims=True)
        return s - m - np.log(np.exp(s - m).sum(axis=-1, keepdims=True))


def _decode_window(model, cross, prompt: list, gen: GenerationSettings, max_new_tokens: int, temperature: float,
                   rng, top_k: int = 50):
    """One window with timestamps from `prompt` (conditioning tokens + the start tokens): greedy at
    temperature 0, else sampled from the top_k logits divided by the temperature (transformers'
    sampling defaults). Returns (new tokens, eos included when reached; the processed scores per step)."""
    cache = model.new_cache(1, len(prompt) + max_new_tokens)
    ids = np.array([prompt], np.int64)
    stops = gen.stop_ids
    every = [int(t) for t in gen.suppress_tokens or ()]
    first = every + [int(t) for t in gen.begin_suppress_tokens or ()]
    new, scores = [], []
    while len(new) < max_new_tokens:
        s = model.decode(ids, cross, cache)[:, -1].float().numpy()  # (1, V)
        s[:, first if not new else every] = -np.inf
        s = timestamp_rules(s, [new], gen)
        if temperature > 0:
            s = s / np.float32(temperature)
            kth = np.sort(s, axis=-1)[:, -top_k][:, None]
            s = np.where(s < kth, -np.inf, s)
            p = np.exp(_log_softmax(s)[0].astype(np.float64))
            tok = int(rng.choice(len(p), p=p / p.sum()))
        else:
            tok = int(s[0].argmax())
        scores.append(s[0])
        new.append(tok)
        if tok in stops:
            break
        ids = np.array([[tok]], np.int64)
    return new, scores


def _avg_logprob(scores: list, tokens: list, temperature: float) -> float:
    """transformers' _retrieve_avg_logprobs: the chosen tokens' log-probabilities (eos counted) under the
    processed scores (rescaled by the temperature), averaged."""
    s = np.stack(scores) * np.float32(temperature if temperature > 0 else 1.0)
    lp = _log_softmax(s)
    toks = tokens[-len(scores):] if len(scores) <= len(tokens) else tokens
    lp = lp[:len(toks)]
    return float(sum(float(lp[i, t]) for i, t in enumerate(toks)) / len(toks))


def _split(seq: list, tb: int, offset_s: float, seek_frames: int) -> tuple:
    """transformers' _retrieve_segment for one window's tokens (eos removed): (segments, frames to seek).
    Pairs of consecutive timestamps end segments; a window ending in a lone timestamp (no speech after
    it) or without any pair is consumed whole; otherwise the seek stops at the last closed pair."""
    is_ts = [t >= tb for t in seq]
    single_end = is_ts[-2:] == [False, True]
    cuts = [i + 1 for i in range(len(is_ts) - 1) if is_ts[i] and is_ts[i + 1]]
    if cuts:
        if single_end:
            cuts.append(len(seq))
        else:
            cuts[-1] += 1  # the last segment keeps its closing timestamp
        out, last = [], 0
        for i, cut in enumerate(cuts):
            part = seq[last:cut]
            end_tok = part[-1] if i < len(cuts) - 1 or single_end else part[-2]
            out.append(Segment(offset_s + (part[0] - tb) * TIME_PRECISION, offset_s + (end_tok - tb) * TIME_PRECISION,
                               list(part)))
            last = cut
        if single_end:
            return out, seek_frames
        return out, (seq[last - 2] - tb) * 2  # 2 mel frames per timestamp step (the encoder's stride)
    stamps = [t for t in seq if t >= tb]
    end_pos = seek_frames // 2 if not stamps or stamps[-1] == tb else stamps[-1] - tb
    return [Segment(offset_s, offset_s + end_pos * TIME_PRECISION, list(seq))], seek_frames


def transcribe_long(model, audio, gen: GenerationSettings, language: str | None = None, task: str | None = None,
                    max_new_tokens: int | None = None, temperatures=(0.0,), compression_ratio_threshold=None,
                    logprob_threshold=None, condition_on_prev_tokens: bool = False, seed: int = 0) -> LongFormOutput:
    """Sequential long-form transcription with timestamps, as transformers' WhisperForConditionalGeneration
    .generate on more than 3000 frames (and openai-whisper's transcribe): log-mel features of the whole
    audio (one normalisation), a 30 s window from `seek` (zero-padded at the end), decoded with timestamp
    rules; the window's tokens split into segments at timestamp pairs and `seek` moved to the last closed
    pair (or past the window: a lone final timestamp, or no pair). Temperature fallback: a window whose
    compression ratio is above compression_ratio_threshold or whose average log-probability is below
    logprob_threshold is decoded again at the next temperature (sampled, numpy's generator seeded by
    `seed`: the tokens of a sampled attempt are not transformers', whose sampler is torch's); the last
    attempt is kept. condition_on_prev_tokens: the previous segments' tokens (the last
    max_target_positions // 2 - 1 of them, after <|startofprev|>) prefix each window's prompt.
    audio: (n,) 16 kHz samples, or log-mel features (n_mels, frames)."""
    from engine import audio as A
    x = np.asarray(audio)
    if x.ndim not in (1, 2):
        raise ValueError(f"transcribe_long(): (n,) samples or ({model.config.num_mel_bins}, frames) features expected, "
                         f"got shape {x.shape}")
    feats = x.astype(np.float32) if x.ndim == 2 else A.log_mel_spectrogram(x.astype(np.float32), model.config.num_mel_bins,
                                                                           n_samples=None)
    if feats.shape[0] != model.config.num_mel_bins:
        raise ValueError(f"transcribe_long(): (n,) samples or ({model.config.num_mel_bins}, frames) features expected, "
                         f"got shape {x.shape}")
    tb = gen.timestamp_begin
    window = 2 * model.config.max_source_positions  # 3000 mel frames
    total = feats.shape[1]
    cut_off = model.config.max_target_positions // 2 - 1
    prev_sot = getattr(gen, "prev_sot_token_id", None)
    if prev_sot is None and len(gen.suppress_tokens or ()) >= 2:
        prev_sot = gen.suppress_tokens[-2]  # transformers' fallback for configs without prev_sot_token_id
    rng = np.random.default_rng(seed)
    init = None
    out = LongFormOutput([], [], [])
    seek = 0
    while seek < total:
        n = min(total - seek, window)
        seg = np.zeros((1, feats.shape[0], window), np.float32)
        seg[0, :, :n] = feats[:, seek:seek + n]
        t0 = time.perf_counter()
        enc, cross, prompts = _start(model, seg, None, gen, language, task, timestamps=True) if init is None else \
            (None, model.cross_cache(model.encode(seg)), [init])
        init = prompts[0]  # the language detected on the first window stays
        out.encode_ms += (time.perf_counter() - t0) * 1e3
        prompt = list(init)
        if condition_on_prev_tokens and out.segments:
            prev = []
            for s in out.segments:  # a segment ending in a timestamp pair gives its last timestamp once
                prev += s.tokens[:-1] if len(s.tokens) > 2 and s.tokens[-2] >= tb else s.tokens
            prompt = ([prev_sot] if prev_sot is not None else []) + prev[-cut_off:] + prompt
        budget = _room(model, len(prompt), max_new_tokens)  # conditioning counts: a clear error past the positions
        t1 = time.perf_counter()
        attempts = []
        for i, temp in enumerate(temperatures):
            temp = float(temp or 0.0)
            new, scores = _decode_window(model, cross, prompt, gen, budget, temp, rng)
            ratio = compression_ratio(new, model.config.vocab_size)
            avg = _avg_logprob(scores, new, temp)
            fallback = (compression_ratio_threshold is not None and ratio > compression_ratio_threshold) or \
                       (logprob_threshold is not None and avg < logprob_threshold)
            attempts.append({"temperature": temp, "avg_logprob": avg, "compression_ratio": ratio, "fallback": fallback})
            if not fallback:
                break
        out.decode_ms += (time.perf_counter() - t1) * 1e3
        seq = new[:-1] if new and new[-1] in gen.stop_ids else new
        out.windows.append({"seek": seek, "frames": n, "attempts": attempts})
        segs, step = _split(seq, tb, seek * TIME_PRECISION / 2, n)
        out.segments += segs
        for s in segs:
            out.tokens += s.tokens
        seek += max(int(step), 1)  # a pair at <|0.00|> would not move (transformers loops there for ever)
    return out
