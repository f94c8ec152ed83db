"""LLaMA 1, 2 and 3 (HF model_type "llama"): pre-norm decoder, RMSNorm, SwiGLU MLP, rotary
positions (default / linear / dynamic / llama3 scaling), grouped-query attention, optionally tied
embeddings (Llama-3.2-1B/3B). Attribute paths equal the HF state-dict keys.
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
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    rope_parameters: dict | None = None  # transformers >= 5 writes rope_theta and scaling here
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list | None = 2
    pad_token_id: int | None = None
    model_type: str = "llama"

    def __post_init__(self):
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
        if self.hidden_act != "silu":
            raise NotImplementedError(f"llama with hidden_act={self.hidden_act!r} (only silu)")

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return config_from_dict(cls, d)

    def rope(self) -> dict:
        return rope_parameters(asdict(self))


_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
PRESETS = {
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256),
    "small": dict(vocab_size=8192, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=16,
                  num_key_value_heads=4, max_position_embeddings=2048),
    "tinyllama-1.1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                           num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                           rms_norm_eps=1e-5),
    "llama-2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       rms_norm_eps=1e-5),
    "llama-2-70b": dict(vocab_size=32000, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                        num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=4096,
                        rms_norm_eps=1e-5),
    "llama-3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                       rms_norm_eps=1e-5, rope_theta=500000.0, bos_token_id=128000, eos_token_id=128001),
    "llama-3.1-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                         rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE,
                         bos_token_id=128000, eos_token_id=[128001, 128008, 128009]),
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                         rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
                         rope_scaling={**_LLAMA3_ROPE, "factor": 32.0}, bos_token_id=128000, eos_token_id=128001),
}


class LlamaMLP(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        h, i, bias = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj = Linear(h, i, bias, vb=vb.pp("gate_proj"))
        self.up_proj = Linear(h, i, bias, vb=vb.pp("up_proj"))
        self.down_proj = Linear(i, h, bias, vb=vb.pp("down_proj"))

    def forward(self, x):
        return self.down_proj(self.gate_proj(x).silu() * self.up_proj(x))  # SwiGLU


class LlamaAttention(Module):
    def __init__(self, cfg: Config, layer_idx: int, vb):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.scaling = self.head_dim ** -0.5
        h, d, bias = cfg.hidden_size, cfg.head_dim, cfg.attention_bias
        self.q_proj = Linear(h, self.num_heads * d, bias, vb=vb.pp("q_proj"))
        self.k_proj = Linear(h, self.num_kv_heads * d, bias, vb=vb.pp("k_proj"))
        self.v_proj = Linear(h, self.num_kv_heads * d, bias, vb=vb.pp("v_proj"))
        self.o_proj = Linear(self.num_heads * d, h, bias, vb=vb.pp("o_proj"))

    def forward(self, x, cos, sin, mask, cache=None, step=None):
        b, L, _ = x.shape
        d = self.head_dim
        q = self.q_proj(x).view(b, L, self.num_heads, d).transpose(1, 2)  # (B, Hq, L, D)
        k = self.k_proj(x).view(b, L, self.num_kv_heads, d).transpose(1, 2)  # (B, Hkv, L, D)
        v = self.v_proj(x).view(b, L, self.num_kv_heads, d).transpose(1, 2)  # (B, Hkv, L, D)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v, step)  # (B, Hkv, S, D) views of the cache
        return self.o_proj(attention(q, k, v, mask, self.scaling))  # (B, L, Hq*D) -> (B, L, hidden)


class LlamaDecoderLayer(Module):
    def __init__(self, cfg: Config, layer_idx: int, vb):
        super().__init__()
        self.self_attn = LlamaAttention(cfg, layer_idx, vb.pp("self_attn"))
        self.mlp = LlamaMLP(cfg, vb.pp("mlp"))
        self.input_layernorm = RmsNorm(cfg.hidden_size, cfg.rms_norm_eps, vb=vb.pp("input_layernorm"))
        self.post_attention_layernorm = RmsNorm(cfg.hidden_size, cfg.rms_norm_eps, vb=vb.pp("post_attention_layernorm"))

    def forward(self, x, cos, sin, mask, cache=None, step=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, step)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.config = cfg
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, vb=vb.pp("embed_tokens"))
        self.layers = ModuleList(LlamaDecoderLayer(cfg, i, vb.pp(f"layers.{i}")) for i in range(cfg.num_hidden_layers))
        self.norm = RmsNorm(cfg.hidden_size, cfg.rms_norm_eps, vb=vb.pp("norm"))
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope(), cfg.max_position_embeddings,
                                          device=self.embed_tokens.weight.device)

    def forward(self, input_ids, cache=None, attention_mask=None, position_ids=None):
        """input_ids (B, L) -> final normed hidden states (B, L, hidden)."""
        x = self.embed_tokens(input_ids)  # (B, L, hidden)
        position_ids, mask, step = positions(input_ids, cache, attention_mask, position_ids, None, x.dtype)
        cos, sin = self.rotary_emb(position_ids, x.dtype)  # (B|1, L, head_dim) each
        sin = signed_sin(sin)  # (-s1, s2): the sign of rotate_half folded in once for all layers
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache, step)
        return self.norm(x)


class LlamaForCausalLM(CausalLM):
    Config = Config
    PRESETS = PRESETS
    Model = LlamaModel
