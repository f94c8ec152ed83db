"""Text generation with engine language models: sampling, stopping, streaming.

    result = generate(model, [[1, 450, 4996]], max_new_tokens=32, temperature=0.7, top_p=0.9, seed=0,
                      callback=lambda toks: print(toks))
    result.tokens          # new tokens per row
    result.prefill_ms, result.decode_tokens_per_s, result.peak_bytes

    dec = Decoder(model, batch_size=1, max_len=160)     # the loop underneath, tokens on the device
    first = dec.prefill(ids)                            # (B,) device tensor
    for _ in range(31):
        dec.step()                                      # a CUDA-graph replay on a GPU
    dec.tokens()                                        # (B, 32) host ids, one read

The model needs the family interface (engine.models.base.CausalLM): `model.model(ids, cache,
attention_mask, position_ids)` -> hidden states, `model.lm_head`, `model.new_cache(..., static=True)`
and `model.config`. The prompt runs once (prefill) into a StaticCache (by default on a device without graphs,
the model's plain cache); each decode step feeds one token
per row, computes only the last position's logits, chooses the next token on the device (the
backend's `sample` op: engine/sampling.py's processors, in transformers' order) and writes it into
the device buffer of generated tokens. On CUDA the step is captured as a CUDA graph after two eager
steps (engine.capture), so a token costs one graph launch; capture=False launches the same fused
kernels one by one from the host and capture="plain" runs the model's ops as written (the default on
a device without graphs; all three give the same tokens). The host reads tokens only to stream
them or to look for stop tokens, every `read_every` steps.

The prefill runs eagerly, except for a prompt shape the decoder has prefilled before (capture=True, the
CUDA default): its second prefill runs the three calls of a Captured (eager, recorded, planned then
captured; the cache reset before each), and later prefills of that shape replay the graph. A one-off
prompt (`taper generate`) never pays for a capture; a loop over prompts of a few fixed shapes (a server
with padded buckets, a benchmark) skips the host's ~750 launches of a 7B prefill. A shape whose capture
fails (CaptureError, e.g. a product cuBLAS serves with no capture-safe path) warns once and runs eagerly.
"""
from __future__ import annotations

import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import engine
from engine import dtype as D
from engine.capture import Captured, CaptureError, capture_mode
from engine.nn.kv_cache import CacheFullError
from engine.sampling import apply_repetition_penalty, next_tokens, top_k_filter, top_p_filter  # noqa: F401


PREFILL_GRAPHS = 2  # captured prefill shapes a Decoder keeps (the least recently used graph and its memory go first)
PREFILL_SHAPES = 64  # prompt shapes a Decoder remembers having prefilled (to capture the ones that recur)
WARM_STEPS = 3  # a captured step's first calls: eager (kernels compile on first use), recorded, captured (engine.capture)


@dataclass
class GenerationResult:
    tokens: list  # new tokens per row (without the prompt), stop token included when one was hit
    prompt_lengths: list
    prefill_ms: float
    decode_ms: float
    decode_steps: int
    peak_bytes: int
    stop_reasons: list = field(default_factory=list)  # per row: "stop_token" or "max_new_tokens"
    capture_ms: float = 0.0  # recording and capturing the decode step (part of decode_ms)
    steady_ms: float = 0.0  # the decode steps after the first WARM_STEPS (the eager, recorded and captured ones)
    steady_steps: int = 0

    @property
    def decode_tokens_per_s(self) -> float:
        """Decode steps per second (per row; a batch makes B tokens per step)."""
        return self.decode_steps / (self.decode_ms / 1e3) if self.decode_ms > 0 else float("nan")

    @property
    def steady_tokens_per_s(self) -> float:
        """Decode steps per second after the first WARM_STEPS (which compile kernels on first use, record and capture
        the step): the rate a longer generation approaches."""
        return self.steady_steps / (self.steady_ms / 1e3) if self.steady_ms > 0 else float("nan")


def validate_sampling(temperature=0.0, top_k=None, top_p=None, repetition_penalty=1.0) -> None:
    """ValueError naming the value for sampling settings transformers' logits processors refuse:
    temperature finite and >= 0 (0: greedy); top_k None or an int >= 0 (0: off); top_p None or in
    (0, 1]; repetition_penalty finite and > 0. (transformers lets an infinite temperature or penalty
    and a nan top_p through; they turn logits into nan here, so they are refused too.)"""
    import math
    import numbers
    if not isinstance(temperature, numbers.Real) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"`temperature` (={temperature!r}) has to be a finite number >= 0 (0 is greedy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0):
        raise ValueError(f"`top_k` (={top_k!r}) has to be an integer >= 0 (0 or None: no top-k filtering)")
    if top_p is not None and (not isinstance(top_p, numbers.Real) or not 0.0 < top_p <= 1.0):
        raise ValueError(f"`top_p` (={top_p!r}) has to be in (0, 1] (None or 1: no nucleus filtering)")
    if not isinstance(repetition_penalty, numbers.Real) or not math.isfinite(repetition_penalty) \
            or not repetition_penalty > 0:
        raise ValueError(f"`repetition_penalty` (={repetition_penalty!r}) has to be a finite number > 0 (1: none)")


class Decoder:
    """One batch decoding on the model's device with the tokens on the device (module docstring).

    attention_mask: (B, max_len) host ints, 0 at left padding (every slot after the prompt 1)."""

    def __init__(self, model, batch_size: int, max_len: int, capture=None, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
                 seed: int | None = None, attention_mask=None):
        validate_sampling(temperature, top_k, top_p, repetition_penalty)
        self.model = model
        dev = model.device
        self.device = dev
        self.max_len = max_len
        # None: a CUDA graph on CUDA; elsewhere the model's ops as written, as a forward's default (engine.capture's
        # capture_mode): a backend without graphs runs the plan's groups as FusedOps' compositions, the same
        # ops, so the plan only adds its per-call check (1.5 ms of a 14 ms Whisper-tiny step on the CPU)
        self.capture = capture_mode(capture, dev)
        self.asked = capture  # as given: None and False fall back to an uncaptured step when recording fails
        # a StaticCache (device positions, every step over all max_len slots behind a mask), except by default
        # on a device without graphs (capture=None resolved to "plain", no padding mask): there the model's
        # plain cache, whose one-token step reads just the filled slots and builds no mask (transformers'
        # DynamicCache does the same; Whisper-tiny on 2 cores: 4% less CPU per step). An explicit "plain"
        # keeps the StaticCache, so it runs the same ops as the plan it debugs, bit for bit
        static = capture is not None or self.capture != "plain" or attention_mask is not None
        self.cache = model.new_cache(batch_size, max_len, static=static)
        i64 = D.int64
        self.tok = engine.zeros(batch_size, 1, dtype=i64, device=dev)  # the token each row feeds next
        self.out = engine.zeros(batch_size, max_len, dtype=i64, device=dev)  # tokens chosen so far
        self.n = engine.zeros(1, dtype=i64, device=dev)  # how many: the column the next one goes to
        self.count = 0  # the same count on the host
        self.mask = None
        if attention_mask is not None:
            m = np.asarray(attention_mask, np.int64)
            if m.shape != (batch_size, max_len):
                raise ValueError(f"attention_mask must be (batch, max_len) = {(batch_size, max_len)}, got {m.shape}")
            self.mask = engine.tensor(m, device=dev)
        self.sampling = (float(temperature), top_k, top_p, float(repetition_penalty),
                         int(seed if seed is not None else np.random.SeedSequence().entropy % (1 << 63)))
        vocab = model.config.vocab_size
        self.seen = engine.zeros(batch_size, vocab, dtype=D.bool_, device=dev) if repetition_penalty != 1.0 else None
        self._rows = engine.arange(batch_size, dtype=D.int64, device=dev).unsqueeze(1)  # (B, 1): seen's rows
        self.counter = engine.zeros(1, dtype=i64, device=dev)  # draws so far (the generator's counter)
        # True: a CUDA graph; False: the same planned (fused) step launched from the host; "plain":
        # the model's ops as written, no plan (to debug the plan itself)
        self.step_fn = None if self.capture == "plain" else Captured(self._step, device=dev, graphs=bool(self.capture))
        self.prompt_len = 0
        self.prefills: OrderedDict = OrderedDict()  # prompt shape -> its Captured prefill (None: runs eagerly)

    @property
    def capture_s(self):
        return self.step_fn.capture_s if self.step_fn is not None else None

    def _choose(self, logits):
        """(B, V) logits -> (B,) int64 tokens, on the device; the token goes into out and tok."""
        t, k, p, pen, seed = self.sampling
        b = logits.backend
        s = self.seen.array if self.seen is not None else None
        nxt = engine.Tensor._wrap(b.sample(logits.array, s, pen, t, k, p, seed, self.counter.array), b, D.int64)
        b.advance(nxt.array, self.tok.array, self.out.array, self.n.array)  # tok = out[:, n] = nxt; n += 1
        if self.seen is not None:
            self._mark_seen(nxt.unsqueeze(1))
        return nxt

    def _mark_seen(self, ids):
        rows = self._rows.expand(*ids.shape)
        self.seen.backend.setitem(self.seen.array, (rows.array, ids.array), True)

    def prefill(self, ids):
        """ids (B, L) int64 tensor on the device -> the first new token of each row, (B,)."""
        if ids.shape[0] != self.cache.batch_size:
            raise ValueError(f"prefill: batch {ids.shape[0]} for a decoder of batch {self.cache.batch_size}")
        if ids.shape[1] >= self.max_len:
            raise ValueError(f"prefill: a prompt of {ids.shape[1]} tokens leaves no room in max_len={self.max_len}")
        self.n.zero_()
        self.counter.zero_()
        self.count, self.prompt_len = 0, ids.shape[1]
        if self.seen is not None:
            self.seen.fill_(False)
            self._mark_seen(ids)
        nxt = self._choose(self._prefill_logits(ids))
        self.count = 1
        return nxt

    def _last_logits(self, ids):
        """The prompt through the model from an empty cache (reset here, so that a captured prefill resets
        its position too) -> (B, V) logits of its last position."""
        self.cache.reset()
        h = self.model.model(ids, self.cache, self.mask, None)  # (B, L, hidden)
        return self.model.lm_head(h[:, -1:])[:, -1]  # (B, V): only the last position

    def _prefill_logits(self, ids):
        """_last_logits, eagerly, or through the prompt shape's Captured (module docstring)."""
        key = tuple(ids.shape)
        seen_before = key in self.prefills
        graph = self.prefills.pop(key, None)  # re-inserted below: the dict's order is the order of last use
        if self.capture is not True or not seen_before or graph is False:
            self.prefills[key] = False if graph is False else None
            while len(self.prefills) > PREFILL_SHAPES:
                self.prefills.popitem(last=False)
            return self._last_logits(ids)
        graph = graph or Captured(self._last_logits, device=self.device)
        try:
            logits = graph(ids)
            while graph.calls < 3:  # the first time, all three phases (each a whole prefill)
                logits = graph(ids)
        except CaptureError as e:
            warnings.warn(f"Decoder: prompts of shape {key} prefill eagerly: {e}", RuntimeWarning, stacklevel=3)
            self.prefills[key] = False
            return self._last_logits(ids)
        self.prefills[key] = graph
        for k in [k for k, g in self.prefills.items() if g][:-PREFILL_GRAPHS]:
            self.prefills[k] = None  # its graph and memory go; seen before, so a later prefill captures again
        self.cache.seen = key[1]  # the host count a replay does not advance
        return logits

    def _step(self):
        h = self.model.model(self.tok, self.cache, self.mask, None)  # (B, 1, hidden)
        self._choose(self.model.lm_head(h)[:, -1])

    def step(self) -> None:
        """One token per row (the host does not wait for it)."""
        if self.prompt_len + self.count >= self.max_len:
            raise CacheFullError(
                f"Decoder: {self.prompt_len} prompt + {self.count} new tokens fill max_len={self.max_len}")
        if self.step_fn is not None:
            # the recording (call 2) and the capture (call 3) may fail part way, after the step advanced the
            # cache's position or (a capture, after its eager rehearsal) chose its token: keep what to go back to
            mark = self._mark() if self.asked is not True and 1 <= self.step_fn.calls <= 2 else None
            try:
                self.step_fn()
            except CaptureError as e:
                if mark is None:  # capture=True asked for it; a replay of a captured step is not retried
                    raise
                # the step cannot be recorded or captured (e.g. a quantized mixture of experts routes on the host):
                # warn once, go back to where the step began and run it as written from here on
                import warnings
                warnings.warn(f"engine.generation: the decode step runs uncaptured: {e}", RuntimeWarning,
                              stacklevel=2)
                self.step_fn = None
                self._rewind(mark)
                self._step()
        else:
            self._step()
        self.count += 1

    def _mark(self):
        """The state a decode step changes (the cache's positions, the next token, the count and draws on the
        device, the tokens seen), copied; the cache's slots and the out column a step writes are not kept:
        running the step again from here writes them again."""
        keep = [t.clone() for t in (self.tok, self.n, self.counter, self.seen) if t is not None]
        return self.cache.mark(), keep

    def _rewind(self, mark) -> None:
        cache, keep = mark
        self.cache.rewind(cache)
        for t, k in zip([t for t in (self.tok, self.n, self.counter, self.seen) if t is not None], keep):
            t.copy_(k)

    def tokens(self, start: int = 0) -> np.ndarray:
        """(B, count - start) host ids of the tokens chosen so far (one read)."""
        return self.out[:, start:self.count].numpy()


def generate(model, prompts, max_new_tokens: int = 32, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, repetition_penalty: float = 1.0, seed: int | None = None,
             stop_token_ids=None, callback=None, pad_token_id: int | None = None, capture=None,
             read_every: int | None = None) -> GenerationResult:
    """Generate up to max_new_tokens for each prompt (a list of token lists, or one list).

    Prompts of different lengths are left-padded and masked. A row stops at its first stop token
    (default: the config's eos_token_id; pass [] for none); the loop ends when every row has
    stopped. callback(tokens) is called with each step's tokens (one per row), read from the device
    every `read_every` steps (default: 1 with a callback or stop tokens, else once at the end). The
    device's peak-memory counter is reset at the start. capture: see Decoder.
    """
    validate_sampling(temperature, top_k, top_p, repetition_penalty)
    if prompts and isinstance(prompts[0], (int, np.integer)):
        prompts = [prompts]
    prompts = [list(map(int, p)) for p in prompts]
    if not prompts or any(not p for p in prompts):
        raise ValueError("generate(): every prompt needs at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"generate(): max_new_tokens must be >= 1, got {max_new_tokens}")
    vocab = model.config.vocab_size
    bad = [t for p in prompts for t in p if not 0 <= t < vocab]
    if bad:
        raise ValueError(f"generate(): token id {bad[0]} is outside the vocabulary of {vocab}")
    b = len(prompts)
    plen = max(len(p) for p in prompts)
    pad = pad_token_id if pad_token_id is not None else (getattr(model.config, "pad_token_id", None) or 0)
    stops = _stop_ids(model, stop_token_ids)
    device = model.device
    pool = engine.backend(device).pool
    pool.reset_peak()
    max_len = plen + max_new_tokens
    ids = np.full((b, plen), pad, np.int64)
    mask = np.ones((b, max_len), np.int64)  # all slots; future ones are hidden by causality
    for i, p in enumerate(prompts):
        ids[i, plen - len(p):] = p
        mask[i, :plen - len(p)] = 0
    padded = any(len(p) != plen for p in prompts)
    dec = Decoder(model, b, max_len, capture=capture, temperature=temperature, top_k=top_k, top_p=top_p,
                  repetition_penalty=repetition_penalty, seed=seed, attention_mask=mask if padded else None)
    every = read_every or (1 if (callback is not None or stops) else max_new_tokens)

    out = [[] for _ in range(b)]
    done = np.zeros(b, bool)
    reasons = ["max_new_tokens"] * b

    def take(new: np.ndarray) -> None:  # (B, n) tokens, in order
        for col in new.T:
            col = np.where(done, pad, col)
            for i in range(b):
                if not done[i]:
                    out[i].append(int(col[i]))
                    if int(col[i]) in stops:
                        done[i], reasons[i] = True, "stop_token"
            if callback is not None:
                callback([int(t) for t in col])
            if done.all():
                return

    t0 = time.perf_counter()
    dec.prefill(engine.tensor(ids, device=device))
    first = dec.tokens()
    prefill_ms = (time.perf_counter() - t0) * 1e3
    take(first)
    read, steps = 1, 0
    t_dec = time.perf_counter()
    t_steady = None
    while dec.count < max_new_tokens and not done.all():
        if steps == WARM_STEPS:
            engine.synchronize(device)
            t_steady = time.perf_counter()
        dec.step()
        steps += 1
        if dec.count - read >= every or dec.count == max_new_tokens:
            take(dec.tokens(read))
            read = dec.count
    if steps:
        engine.synchronize(device)
    t_end = time.perf_counter()
    decode_ms = (t_end - t_dec) * 1e3 if steps else 0.0
    cap = dec.capture_s
    return GenerationResult(out, [len(p) for p in prompts], prefill_ms, decode_ms, steps,
                            int(pool.stats()["peak_bytes"]), reasons, (cap or 0.0) * 1e3,
                            (t_end - t_steady) * 1e3 if t_steady is not None else 0.0,
                            steps - WARM_STEPS if t_steady is not None else 0)


def _stop_ids(model, stop_token_ids):
    if stop_token_ids is not None:
        return set(int(t) for t in stop_token_ids)
    eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


# ---- tokenizers ------------------------------------------------------------------------------------------
def load_tokenizer(model_dir):
    """A `tokenizers.Tokenizer` from model_dir/tokenizer.json (a .gguf file: from its metadata), or
    None when the directory has none (a .gguf file: no tokenizer.ggml.model nor tokens, as a converter
    writes a model alone)."""
    if Path(model_dir).suffix == ".gguf":
        from engine.io.gguf import open_gguf
        g = open_gguf(model_dir)
        if "tokenizer.ggml.model" not in g.metadata and "tokenizer.ggml.tokens" not in g.metadata:
            return None
        return g.tokenizer()
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ImportError(f"{path}: reading it needs the tokenizers package: pip install tokenizers") from None
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
