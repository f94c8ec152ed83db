"""torch.compile: what a PyTorch user would pick for speed. The same transformers models as `torch`;
on CUDA the decode step runs over a StaticCache under torch.compile(mode="reduce-overhead",
fullgraph=True) (CUDA graphs, the recipe of transformers' and gpt-fast's docs); on the CPU the
default mode. The prefill runs eagerly (it allocates the static cache's tensors, which a captured
graph must not own). Compile time is kept apart (Model.warmup_s) from the timed runs."""
from __future__ import annotations

import inspect
import time

import numpy as np

from impls.base import TapsUnsupported, Unavailable, as_ids
from impls.torch_eager import TorchImpl, TorchModel, TorchSeq2SeqModel, torch


class TorchCompileImpl(TorchImpl):
    name = "torch-compile"

    def __init__(self, device, dtype):
        super().__init__(device, dtype)
        self.mode = "reduce-overhead" if device == "cuda" else None
        try:
            import torch._dynamo  # noqa: F401
        except ImportError as e:  # pragma: no cover
            raise Unavailable(f"torch-compile: {e}") from None

    @property
    def label(self):
        return f"torch {torch.__version__} compile ({self.mode or 'default'} mode)"

    def _ops(self):
        return {k: _compiled(fn, self.mode) for k, fn in super()._ops().items()}

    @property
    def model_class(self):
        return CompiledModel

    @property
    def seq2seq_class(self):
        return CompiledSeq2SeqModel


def _compiled(fn, mode):
    cache = {}

    def run(*args, **kwargs):
        if "f" not in cache:
            cache["f"] = torch.compile(fn, mode=mode, dynamic=False)
        return cache["f"](*args, **kwargs)
    return run


def _full_attention_config(config, max_len: int):
    """The config a static cache of max_len is built from. A sliding window at least max_len wide never
    slides, so its cache layers are plain static ones: transformers' sliding static layers keep a host
    int of the length seen that dynamo guards on, which recompiles the step at every token (Mistral-7B:
    ~30 s each on the H200). Same attention, same outputs; a narrower window keeps its sliding layers."""
    window = getattr(config, "sliding_window", None)
    if window is None or window < max_len:
        return config
    import copy
    cfg = copy.deepcopy(config)
    cfg.sliding_window = None
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = ["full_attention" for _ in cfg.layer_types]
    return cfg


def _accepts(fn, name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params


class _CompiledSteps:
    """The compiled decode loop both model kinds share: one compiled step per token, the tokens kept on
    the device (warmup_s: the first step, which compiles)."""

    def step(self):
        first = self.warmup_s is None
        t0 = time.perf_counter()
        with torch.inference_mode():
            tok = self._step_fn(self._toks[-1][:, None], self._pos)
            self._toks.append(tok.clone())  # a CUDA-graph output is overwritten by the next replay
            self._pos.add_(1)
        if first:
            self.impl.synchronize()
            self.warmup_s = time.perf_counter() - t0

    def tokens(self):
        return torch.stack(self._toks, 1).cpu().numpy().astype(np.int64)


class CompiledModel(_CompiledSteps, TorchModel):
    def __init__(self, impl, source, module, config, weight_bytes, inputs=None):
        super().__init__(impl, source, module, config, weight_bytes, inputs)
        self.run_module = torch.compile(module, mode=impl.mode, dynamic=False)
        self._step_fn = None
        self._cache_position = _accepts(module.forward, "cache_position")

    # ---- greedy decode over a static cache ----------------------------------------------------------------
    def new_cache(self, batch: int, max_len: int):
        from transformers import StaticCache
        kw = {"config": _full_attention_config(self.module.config, max_len), "max_cache_len": max_len}
        params = inspect.signature(StaticCache.__init__).parameters
        for k, v in (("max_batch_size", batch), ("device", self.impl.tdevice), ("dtype", self.impl.tdtype)):
            if k in params:
                kw[k] = v
        return StaticCache(**kw)

    def _positions(self, pos):
        kw = {"position_ids": pos}
        if self._cache_position:
            kw["cache_position"] = pos[0]
        return kw

    def _decode(self, tok, pos):
        out = self.module(tok, use_cache=True, **{self._cache_kw: self.cache}, **self._positions(pos))
        return out.logits[:, -1].argmax(-1)

    def start(self, ids, max_new_tokens: int):
        ids = torch.as_tensor(as_ids(ids), device=self.impl.tdevice)
        b, L = ids.shape
        shape = (b, L + max_new_tokens)
        if getattr(self, "_cache_shape", None) == shape:
            with torch.inference_mode():
                self.cache.reset()  # the same buffers: the compiled graphs keep their addresses
        else:
            self.cache, self._cache_shape = self.new_cache(*shape), shape
        pos = torch.arange(L, device=self.impl.tdevice)[None]
        with torch.inference_mode():  # prefill runs eagerly: it also allocates the static cache's tensors
            tok = self._prefill_logits(ids, pos)
            self._pos = torch.full((1, 1), L, dtype=torch.long, device=self.impl.tdevice)
            self._toks = [tok.clone()]  # inference tensors, as every later step's: no recompile on the 2nd step
        if self._step_fn is None:
            self._step_fn = torch.compile(self._decode, mode=self.impl.mode, fullgraph=True, dynamic=False)
        return self._toks[0].cpu().numpy()

    def _prefill_logits(self, ids, pos):
        out = self.module(ids, use_cache=True, logits_to_keep=1, **{self._cache_kw: self.cache}, **self._positions(pos))
        return out.logits[:, -1].argmax(-1)

    def method(self, name: str):
        """getattr on the compiled module reaches the eager method: compile the bound method itself, once."""
        cache = self.__dict__.setdefault("_methods", {})
        if name not in cache:
            cache[name] = torch.compile(getattr(self.module, name), mode=self.impl.mode, dynamic=False)
        return cache[name]

    def tap(self, names, callback):
        """Hooks added after compilation fire nothing or break dynamo's guards: outputs only."""
        raise TapsUnsupported("torch-compile runs the model as compiled graphs: outputs only, no layer taps")


class CompiledSeq2SeqModel(_CompiledSteps, TorchSeq2SeqModel):
    """Whisper under torch.compile: the encoder compiled as a whole; the decode step over an
    EncoderDecoderCache of two StaticCaches (self-attention of max_len, cross-attention of the encoder
    length; transformers' cache_implementation="static" recipe) compiled with fullgraph, as the causal
    LMs' step. The prefill runs eagerly and fills the cross K/V; a new audio is copied into one encoder
    buffer and the caches are reset, so the compiled step serves every run of one shape."""

    def __init__(self, impl, source, module, config, weight_bytes, inputs=None):
        super().__init__(impl, source, module, config, weight_bytes, inputs)
        self._encoder = torch.compile(module.model.encoder, mode=impl.mode, dynamic=False)
        self._step_fn = None
        self._shape = None

    def encode(self, features):
        with torch.inference_mode():
            # a CUDA-graph output: the decode step's replays reuse its memory, and start() reads it
            # again for every run of the same audio, so keep a copy (torch's advice for cudagraph trees)
            self.encoder_out = self._encoder(self.impl.tensor(features)).last_hidden_state.clone()
        return self.encoder_out

    def _decode(self, tok, pos):
        out = self.module(decoder_input_ids=tok, encoder_outputs=(self._enc_buf,), use_cache=True,
                          decoder_position_ids=pos, **{self._cache_kw: self.cache})
        return out.logits[:, -1].argmax(-1)

    def start(self, ids, max_new_tokens: int):
        from transformers import EncoderDecoderCache, StaticCache
        enc = self._enc()[0]
        ids = torch.as_tensor(as_ids(ids), device=self.impl.tdevice)
        b, L = ids.shape
        shape = (b, L + max_new_tokens, tuple(enc.shape))
        with torch.inference_mode():
            if self._shape == shape:
                self.cache.reset()
                self._enc_buf.copy_(enc)
            else:
                cfg = self.module.config
                self.cache = EncoderDecoderCache(StaticCache(config=cfg, max_cache_len=shape[1]),
                                                 StaticCache(config=cfg, max_cache_len=enc.shape[1]))
                self._enc_buf, self._shape = enc.clone(), shape
            out = self.module(decoder_input_ids=ids, encoder_outputs=(self._enc_buf,), use_cache=True,
                              decoder_position_ids=torch.arange(L, device=self.impl.tdevice)[None],
                              **{self._cache_kw: self.cache})
            tok = out.logits[:, -1].argmax(-1)
        self._pos = torch.full((1, 1), L, dtype=torch.long, device=self.impl.tdevice)
        self._toks = [tok.clone()]
        if self._step_fn is None:
            self._step_fn = torch.compile(self._decode, mode=self.impl.mode, fullgraph=True, dynamic=False)
        return self._toks[0].cpu().numpy()

    def tap(self, names, callback):
        raise TapsUnsupported("torch-compile runs the model as compiled graphs: outputs only, no layer taps")
