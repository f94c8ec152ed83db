"""The plumbing every decoder LM shares, once: loading (from_pretrained, presets), dtype and device,
caches, the tied or separate LM head and the one narrow forward. A model file holds the math (its
`Model`: embeddings, layers, final norm) and names it here.

    class LlamaForCausalLM(CausalLM):
        Config, PRESETS, Model = Config, PRESETS, LlamaModel
"""
from __future__ import annotations

from typing import NamedTuple

from engine import dtype as D
from engine import ops
from engine.models import load_pretrained, load_preset
from engine.nn.kv_cache import KVCache, SlidingWindowCache, StaticCache
from engine.nn.linear import Linear
from engine.nn.module import Module


class EncoderOutput(NamedTuple):
    """What an encoder's forward returns, in transformers' order (BaseModelOutputWithPooling)."""
    last_hidden_state: object  # (B, L, hidden)
    pooler_output: object  # (B, hidden), or None for a model without a pooler


class Pretrained(Module):
    """The loading plumbing of every engine model (from_pretrained, presets, dtype and device), once;
    CausalLM adds the decode side. A model file names its Config and PRESETS and holds the math."""
    Config = None
    PRESETS: dict = {}
    IGNORED_KEYS: tuple = ()
    # engine.nn.rules applied to a checkpoint at load (from_pretrained), for differences between HF's
    # state dict and the model's attribute paths; migration.module_map.HF_MODELS names the same tuple
    CHECKPOINT_RULES: tuple = ()

    @classmethod
    def from_pretrained(cls, path, dtype=None, device=None, variant=None):
        return load_pretrained(cls, path, dtype, device, variant)

    @classmethod
    def from_preset(cls, preset: str, dtype=None, device=None, seed: int = 0, **overrides):
        return load_preset(cls, preset, dtype, device, seed, **overrides)

    @property
    def dtype(self):
        return next(iter(self.parameters())).dtype

    @property
    def device(self):
        return next(iter(self.parameters())).device


class CausalLM(Pretrained):
    Model = None  # the decoder: Model(cfg, vb) with embed_tokens, and forward(ids, cache, mask, positions)
    IGNORED_KEYS = (r"\.rotary_emb\.inv_freq$",)  # saved by some 2023 conversions; recomputed here

    def __init__(self, cfg, vb):
        super().__init__()
        self.config = cfg
        self.model = self.Model(cfg, vb.pp("model"))
        if cfg.tie_word_embeddings:  # the LM head reads the (unscaled) embedding matrix itself
            self.lm_head = Linear.from_weight(self.model.embed_tokens.weight)
            vb.skip("lm_head.weight")
        else:
            self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, False, vb=vb.pp("lm_head"))

    @property
    def dtype(self):
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self):
        return self.model.embed_tokens.weight.device

    def new_cache(self, batch_size: int, max_len: int, full_length: bool = False, static: bool = False):
        """A KVCache; a ring of sliding_window slots when max_len is longer than the model's window;
        static=True: a StaticCache (device positions, for captured decoding)."""
        c = self.config
        shape = (c.num_hidden_layers, batch_size, c.num_key_value_heads, c.head_dim)
        if static:
            return StaticCache(*shape, max_len, dtype=self.dtype, device=self.device)
        window = getattr(c, "sliding_window", None)
        if window is not None and max_len > window and not full_length:
            return SlidingWindowCache(*shape, window, dtype=self.dtype, device=self.device)
        return KVCache(*shape, max_len, dtype=self.dtype, device=self.device, full_length=full_length)

    def forward(self, input_ids, cache=None, attention_mask=None, position_ids=None):
        """input_ids (B, L) int64 -> logits (B, L, vocab). With a cache, only the new tokens are passed;
        attention_mask (B, all positions so far) marks left padding with 0."""
        ids = input_ids if hasattr(input_ids, "storage") else ops.tensor(input_ids, dtype=D.int64)
        return self.lm_head(self.model(ids, cache, attention_mask, position_ids))
