"""Choosing the next token from logits, in numpy: transformers' processors in transformers' order
(repetition penalty, then temperature, top-k, top-p), then greedy argmax (temperature 0) or a draw
from the softmax. This is the reference of every backend's `sample` op (engine/backends/fused.py);
the cupy backend runs the same steps in one kernel inside a captured decode step.

Draws come from a counter-based generator, u = uniform(seed, counter, row): the same seed gives the
same draws on every device, and a captured step draws anew at each replay because the counter
lives on the device and advances there.

Top-p keeps the smallest set of most likely tokens whose probability reaches p; tokens with equal
logits are kept or dropped together (transformers breaks such ties by position).
"""
from __future__ import annotations

import numpy as np

_M64 = (1 << 64) - 1


def seen_mask(seen, vocab_size: int) -> np.ndarray:
    """(B, V) bool: the tokens each row has seen (from a list of token lists, or a mask as is)."""
    if isinstance(seen, np.ndarray) and seen.dtype == np.bool_:
        return seen
    m = np.zeros((len(seen), vocab_size), np.bool_)
    for b, toks in enumerate(seen):
        m[b, np.asarray(list(toks), dtype=np.int64)] = True
    return m


def apply_repetition_penalty(logits: np.ndarray, seen, penalty: float) -> np.ndarray:
    """transformers' RepetitionPenaltyLogitsProcessor: every token already in the row (prompt
    included) has its logit divided by `penalty` when positive, multiplied when negative."""
    if penalty == 1.0 or seen is None:
        return logits
    mask = seen_mask(seen, logits.shape[-1])
    pen = np.float32(penalty)
    return np.where(mask, np.where(logits < 0, logits * pen, logits / pen), logits).astype(logits.dtype)


def top_k_filter(logits: np.ndarray, k: int | None) -> np.ndarray:
    """Keep the k largest logits per row (ties at the k-th value kept too, as transformers does)."""
    if not k or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k, axis=-1)[:, -k][:, None]
    return np.where(logits < kth, -np.inf, logits)


def top_p_filter(logits: np.ndarray, p: float | None) -> np.ndarray:
    """Nucleus filtering: keep a token when the probability of the strictly more likely tokens is
    below p (at least the most likely one)."""
    if p is None or p >= 1.0:
        return logits
    probs = softmax(logits)
    order = np.argsort(-logits, axis=-1, kind="stable")
    sorted_l = np.take_along_axis(logits, order, -1)
    sorted_p = np.take_along_axis(probs, order, -1)
    cum = np.cumsum(sorted_p, -1) - sorted_p  # mass before each token in the sorted order
    # ties: the mass of strictly larger logits, i.e. the cum of the first of each run of equal values
    first = np.concatenate([np.ones_like(sorted_l[:, :1], bool), sorted_l[:, 1:] != sorted_l[:, :-1]], -1)
    run_start = np.maximum.accumulate(np.where(first, np.arange(cum.shape[-1]), 0), axis=-1)
    before = np.take_along_axis(cum, run_start, -1)
    keep_sorted = before < p
    keep_sorted[:, 0] = True
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, -1)
    return np.where(keep, logits, -np.inf)


def softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = np.max(x, -1, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(-1, keepdims=True)


def _mix(z: int) -> int:
    """splitmix64's finaliser."""
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def uniform(seed: int, counter: int, rows: int) -> np.ndarray:
    """(rows,) float64 in [0, 1): u = mix(mix(seed) ^ mix(counter * 2^32 + row)) as 53 bits."""
    s = _mix(int(seed) & _M64)
    return np.array([(_mix(s ^ _mix(((int(counter) << 32) + r) & _M64)) >> 11) * (1.0 / (1 << 53))
                     for r in range(rows)])


def draw(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The first index whose cumulative probability reaches u (inverse CDF, in index order)."""
    return np.minimum((np.cumsum(probs, -1) < u[:, None]).sum(-1), probs.shape[-1] - 1)


def process(logits: np.ndarray, seen=None, penalty: float = 1.0, temperature: float = 0.0,
            top_k: int | None = None, top_p: float | None = None) -> np.ndarray:
    """The logits after the processors (float32, -inf for filtered tokens); temperature 0 skips the
    sampling warpers."""
    logits = apply_repetition_penalty(np.asarray(logits, np.float32), seen, penalty)
    if not temperature:
        return logits
    return top_p_filter(top_k_filter(logits / np.float32(temperature), top_k), top_p)


def sample(logits: np.ndarray, seen=None, penalty: float = 1.0, temperature: float = 0.0, top_k=None,
           top_p=None, seed: int = 0, counter: int = 0) -> np.ndarray:
    """(B, V) logits -> (B,) int64 tokens: greedy for temperature 0, else a draw with uniform(seed,
    counter, row)."""
    x = process(logits, seen, penalty, temperature, top_k, top_p)
    if not temperature:
        return np.argmax(x, -1).astype(np.int64)
    return draw(softmax(x), uniform(seed, counter, x.shape[0])).astype(np.int64)


def next_tokens(logits: np.ndarray, seen, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, repetition_penalty: float = 1.0, rng=None) -> np.ndarray:
    """(B, V) logits -> (B,) token ids, drawing with a numpy Generator (host-side callers)."""
    x = process(logits, seen, repetition_penalty, temperature, top_k, top_p)
    if not temperature:
        return np.argmax(x, -1)
    rng = rng if rng is not None else np.random.default_rng()
    return draw(softmax(x), rng.random(x.shape[0]))
