"""Phi-3 (HF model_type "phi3"): LLaMA's decoder with fused projections
- self_attn.qkv_proj: one (Hq*D + 2*Hkv*D, hidden) matrix, rows ordered q, k, v,
- mlp.gate_up_proj: one (2*intermediate, hidden) matrix, rows ordered gate, up,
a sliding-window mask when config.sliding_window is set (2047 in Phi-3-mini-4k), and optional partial
rotary (partial_rotary_factor < 1 rotates only the first dims of each head). "longrope" scaling
(Phi-3.5, the 128k variants) is not implemented.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from engine.nn import Module, ModuleList
from engine.nn.attention import attention, positions
from engine.nn.linear import Embedding, Linear
from engine.nn.norm import RmsNorm
from engine.nn.rotary import RotaryEmbedding, apply_rotary, rope_parameters, signed_sin
from engine.models import config_from_dict
from engine.models.base import CausalLM


@dataclass
class Config:
    vocab_size: int = 32064
    hidden_size: int = 3072
    intermediate_size: int = 8192
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    rope_parameters: dict | None = None  # transformers >= 5 writes rope_theta and scaling here
    sliding_window: int | None = None
    partial_rotary_factor: float | None = None
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list | None = 32000
    pad_token_id: int | None = 32000
    model_type: str = "phi3"

    def __post_init__(self):
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
        if self.hidden_act != "silu":
            raise NotImplementedError(f"phi3 with hidden_act={self.hidden_act!r} (only silu)")
        rtype = self.rope()["rope_type"]
        if rtype != "default":
            raise NotImplementedError(f"phi3 with rope_type {rtype!r} (only default; longrope is not implemented)")

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return config_from_dict(cls, d)

    def rope(self) -> dict:
        return rope_parameters(asdict(self))


PRESETS = {
    "tiny": dict(vocab_size=256, hidden_size=160, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=2, max_position_embeddings=256, eos_token_id=2, pad_token_id=0),
    "phi-3-mini-4k": dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                          sliding_window=2047),
    "phi-3-medium-4k": dict(vocab_size=32064, hidden_size=5120, intermediate_size=17920, num_hidden_layers=40,
                            num_attention_heads=40, num_key_value_heads=10, max_position_embeddings=4096,
                            sliding_window=2047),
}


class Phi3MLP(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.gate_up_proj = Linear(h, 2 * i, False, vb=vb.pp("gate_up_proj"))
        self.down_proj = Linear(i, h, False, vb=vb.pp("down_proj"))

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, -1)  # (..., 2I) -> 2 x (..., I) views
        return self.down_proj(up * gate.silu())


class Phi3Attention(Module):
    def __init__(self, cfg: Config, layer_idx: int, vb):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.scaling = self.head_dim ** -0.5
        h, d = cfg.hidden_size, cfg.head_dim
        self.qkv_proj = Linear(h, (self.num_heads + 2 * self.num_kv_heads) * d, False, vb=vb.pp("qkv_proj"))
        self.o_proj = Linear(self.num_heads * d, h, False, vb=vb.pp("o_proj"))

    def forward(self, x, cos, sin, mask, cache=None, step=None):
        b, L, _ = x.shape
        d, hq, hkv = self.head_dim, self.num_heads, self.num_kv_heads
        qkv = self.qkv_proj(x)  # (B, L, (Hq + 2 Hkv) D), rows q | k | v
        q, k, v = qkv.split([hq * d, hkv * d, hkv * d], -1)
        q = q.reshape(b, L, hq, d).transpose(1, 2)  # (B, Hq, L, D)
        k = k.reshape(b, L, hkv, d).transpose(1, 2)  # (B, Hkv, L, D)
        v = v.reshape(b, L, hkv, d).transpose(1, 2)  # (B, Hkv, L, D)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v, step)  # (B, Hkv, S, D) views of the cache
        return self.o_proj(attention(q, k, v, mask, self.scaling))  # (B, L, Hq*D) -> (B, L, hidden)


class Phi3DecoderLayer(Module):
    def __init__(self, cfg: Config, layer_idx: int, vb):
        super().__init__()
        self.self_attn = Phi3Attention(cfg, layer_idx, vb.pp("self_attn"))
        self.mlp = Phi3MLP(cfg, vb.pp("mlp"))
        self.input_layernorm = RmsNorm(cfg.hidden_size, cfg.rms_norm_eps, vb=vb.pp("input_layernorm"))
        self.post_attention_layernorm = RmsNorm(cfg.hidden_size, cfg.rms_norm_eps, vb=vb.pp("post_attention_layernorm"))

    def forward(self, x, cos, sin, mask, cache=None, step=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, step)
        return x + self.mlp(self.post_attention_layernorm(x))


class Phi3Model(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.config = cfg
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, vb=vb.pp("embed_tokens"))
        self.layers = ModuleList(Phi3DecoderLayer(cfg, i, vb.pp(f"layers.{i}")) for i in range(cfg.num_hidden_layers))
        self.norm = RmsNorm(cfg.hidden_size, cfg.rms_norm_eps, vb=vb.pp("norm"))
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope(), cfg.max_position_embeddings,
                                          device=self.embed_tokens.weight.device)

    def forward(self, input_ids, cache=None, attention_mask=None, position_ids=None):
        """input_ids (B, L) -> final normed hidden states (B, L, hidden)."""
        x = self.embed_tokens(input_ids)  # (B, L, hidden)
        position_ids, mask, step = positions(input_ids, cache, attention_mask, position_ids,
                                             self.config.sliding_window, x.dtype)  # the window lives in the mask
        cos, sin = self.rotary_emb(position_ids, x.dtype)  # (B|1, L, head_dim) each
        sin = signed_sin(sin)  # (-s1, s2): the sign of rotate_half folded in once for all layers
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache, step)
        return self.norm(x)


class Phi3ForCausalLM(CausalLM):
    Config = Config
    PRESETS = PRESETS
    Model = Phi3Model
