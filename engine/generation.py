"""Text generation with engine language models: sampling, stopping, streaming.

    result = generate(model, [[1, 450, 4996]], max_new_tokens=32, temperature=0.7, top_p=0.9, seed=0,
                      callback=lambda toks: print(toks))
    result.tokens          # new tokens per row
    result.prefill_ms, result.decode_tokens_per_s, result.peak_bytes

The model needs the family interface: `model.model(ids, cache, attention_mask, position_ids)` ->
hidden states, `model.lm_head`, `model.new_cache(batch, max_len)` and `model.config`. The prompt
runs once through the model (prefill) into a preallocated KV cache; each decode step feeds one
token per row. Only the last position's logits are computed. Sampling runs on the host in numpy
(after the step's logits are read back, so it never sits inside a layer forward).

Processing order is transformers': repetition penalty, then temperature, top-k, top-p, then greedy
argmax (temperature 0) or a draw from the softmax with a seeded generator.
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import engine
from engine import dtype as D


def validate_sampling(temperature=0.0, top_k=None, top_p=None, repetition_penalty=1.0) -> None:
    """Refuse sampling settings transformers' logits processors refuse (ValueError naming the value):
    temperature finite and >= 0 (0: greedy); top_k None or an int >= 0 (0: off); top_p None or in
    (0, 1]; repetition_penalty finite and > 0."""
    def bad(name, value, rule):
        raise ValueError(f"`{name}` (={value!r}) {rule}")
    if not isinstance(temperature, numbers.Real) or not math.isfinite(temperature) or temperature < 0:
        bad("temperature", temperature, "has to be a finite float >= 0 (0 is greedy decoding)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0):
        bad("top_k", top_k, "has to be an integer >= 0 (0 or None: no top-k filtering)")
    if top_p is not None and (not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1):
        bad("top_p", top_p, "has to be a float in (0, 1] (None or 1: no nucleus filtering)")
    if not isinstance(repetition_penalty, numbers.Real) or not math.isfinite(repetition_penalty) \
            or repetition_penalty <= 0:
        bad("repetition_penalty", repetition_penalty, "has to be a strictly positive float (1: no penalty)")


@dataclass
class GenerationResult:
    tokens: list  # new tokens per row (without the prompt), stop token included when one was hit
    prompt_lengths: list
    prefill_ms: float
    decode_ms: float
    decode_steps: int
    peak_bytes: int
    stop_reasons: list = field(default_factory=list)  # per row: "stop_token" or "max_new_tokens"

    @property
    def decode_tokens_per_s(self) -> float:
        """Decode steps per second (per row; a batch makes B tokens per step)."""
        return self.decode_steps / (self.decode_ms / 1e3) if self.decode_ms > 0 else float("nan")


# ---- logits processing (numpy, float32 logits (B, V)) ------------------------------------------------
def apply_repetition_penalty(logits: np.ndarray, seen: list, penalty: float) -> np.ndarray:
    """transformers' RepetitionPenaltyLogitsProcessor: every token already in the row (prompt
    included) has its logit divided by `penalty` when positive, multiplied when negative."""
    if penalty == 1.0:
        return logits
    out = logits.copy()
    for b, toks in enumerate(seen):
        idx = np.unique(np.asarray(toks, dtype=np.int64))
        s = out[b, idx]
        out[b, idx] = np.where(s < 0, s * penalty, s / penalty)
    return out


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest logits per row (ties at the k-th value kept too, as transformers does)."""
    if not k or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k, axis=-1)[:, -k][:, None]
    return np.where(logits < kth, -np.inf, logits)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability reaches p
    (at least one token)."""
    if p is None or p >= 1.0:
        return logits
    order = np.argsort(-logits, axis=-1, kind="stable")
    sorted_logits = np.take_along_axis(logits, order, -1)
    probs = _softmax(sorted_logits)
    cum = np.cumsum(probs, -1)
    remove = (cum - probs) >= p  # tokens whose predecessors already reach p
    remove[:, 0] = False
    out = logits.copy()
    np.put_along_axis(out, order, np.where(remove, -np.inf, sorted_logits), -1)
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = np.max(x, -1, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(-1, keepdims=True)


def next_tokens(logits: np.ndarray, seen: list, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, repetition_penalty: float = 1.0, rng=None) -> np.ndarray:
    """(B, V) logits -> (B,) token ids."""
    logits = apply_repetition_penalty(logits.astype(np.float32), seen, repetition_penalty)
    if not temperature:  # greedy
        return np.argmax(logits, -1)
    logits = top_p_filter(top_k_filter(logits / np.float32(temperature), top_k), top_p)
    probs = _softmax(logits)
    rng = rng if rng is not None else np.random.default_rng()
    u = rng.random((probs.shape[0], 1))
    return np.minimum((np.cumsum(probs, -1) < u).sum(-1), probs.shape[-1] - 1)


# ---- the loop ----------------------------------------------------------------------------------------------
def _stop_ids(model, stop_token_ids):
    if stop_token_ids is not None:
        return set(int(t) for t in stop_token_ids)
    eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


def generate(model, prompts, max_new_tokens: int = 32, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, repetition_penalty: float = 1.0, seed: int | None = None,
             stop_token_ids=None, callback=None, pad_token_id: int | None = None) -> GenerationResult:
    """Generate up to max_new_tokens for each prompt (a list of token lists, or one list).

    Prompts of different lengths are left-padded and masked. A row stops at its first stop token
    (default: the config's eos_token_id; pass [] for none); the loop ends when every row has
    stopped. callback(tokens) is called with the list of this step's tokens (one per row) as soon
    as they are chosen. The device's peak-memory counter is reset at the start.
    """
    validate_sampling(temperature, top_k, top_p, repetition_penalty)
    if prompts and isinstance(prompts[0], (int, np.integer)):
        prompts = [prompts]
    prompts = [list(map(int, p)) for p in prompts]
    if not prompts or any(not p for p in prompts):
        raise ValueError("generate(): every prompt needs at least one token")
    b = len(prompts)
    plen = max(len(p) for p in prompts)
    pad = pad_token_id if pad_token_id is not None else (getattr(model.config, "pad_token_id", None) or 0)
    stops = _stop_ids(model, stop_token_ids)
    rng = np.random.default_rng(seed)
    device = model.device
    pool = engine.backend(device).pool
    pool.reset_peak()

    ids = np.full((b, plen), pad, np.int64)
    full_mask = np.zeros((b, plen + max_new_tokens), np.int64)  # grows by a column per step: preallocated
    for i, p in enumerate(prompts):
        ids[i, plen - len(p):] = p
        full_mask[i, plen - len(p):] = 1
    full_mask[:, plen:] = 1
    padded = any(len(p) != plen for p in prompts)
    mask_t = engine.tensor(full_mask, device=device) if padded else None

    cache = model.new_cache(b, plen + max_new_tokens)
    seen = [list(p) for p in prompts]
    out = [[] for _ in range(b)]
    done = np.zeros(b, bool)
    reasons = ["max_new_tokens"] * b

    def step(tokens_in, total):
        h = model.model(engine.tensor(tokens_in, device=device), cache,
                        mask_t[:, :total] if mask_t is not None else None, None)
        logits = model.lm_head(h[:, -1:])  # (B, 1, V): only the last position
        return logits.float().numpy()[:, -1]

    t0 = time.perf_counter()
    logits = step(ids, plen)
    prefill_ms = (time.perf_counter() - t0) * 1e3
    t_dec, steps = time.perf_counter(), 0
    for n in range(max_new_tokens):
        if n:
            logits = step(tok[:, None], plen + n)
            steps += 1
        tok = next_tokens(logits, seen, temperature, top_k, top_p, repetition_penalty, rng)
        tok = np.where(done, pad, tok)
        for i in range(b):
            if not done[i]:
                out[i].append(int(tok[i]))
                seen[i].append(int(tok[i]))
                if int(tok[i]) in stops:
                    done[i], reasons[i] = True, "stop_token"
        if callback is not None:
            callback([int(t) for t in tok])
        if done.all():
            break
    decode_ms = (time.perf_counter() - t_dec) * 1e3 if steps else 0.0
    return GenerationResult(out, [len(p) for p in prompts], prefill_ms, decode_ms, steps,
                            int(pool.stats()["peak_bytes"]), reasons)


# ---- tokenizers ------------------------------------------------------------------------------------------
def load_tokenizer(model_dir):
    """A `tokenizers.Tokenizer` from model_dir/tokenizer.json, or None when the directory has none."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(path))


class TextStreamer:
    """Decodes a growing token list and yields only the new text (keeps multi-byte characters whole
    by holding back text that ends in the replacement character). The prompt ids give the context,
    so spaces between the prompt and the first new token come out right; `prompt_text` is the
    prompt as decoded."""

    def __init__(self, tokenizer, prompt_ids=(), skip_special_tokens: bool = True):
        self.tok, self.skip = tokenizer, skip_special_tokens
        self.ids = [int(i) for i in prompt_ids]
        self.prompt_text = tokenizer.decode(self.ids, skip_special_tokens=self.skip) if self.ids else ""
        self.printed = len(self.prompt_text)

    def put(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        text = self.tok.decode(self.ids, skip_special_tokens=self.skip)
        if text.endswith("\ufffd"):
            return ""
        new, self.printed = text[self.printed:], len(text)
        return new
