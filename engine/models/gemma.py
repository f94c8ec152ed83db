"""Gemma (HF model_type "gemma"): LLaMA's decoder with
- embeddings scaled by sqrt(hidden_size), the scale rounded to the weights' dtype first (as HF does),
- RMSNorm weights stored as offsets: the norm multiplies by (1 + w), in fp32, before rounding,
- a GeGLU MLP with the tanh approximation of GELU ("gelu_pytorch_tanh"),
- head_dim independent of hidden_size / num_attention_heads (256 in the released sizes),
- tied input and output embeddings.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from engine import ops
from engine.nn import Module, ModuleList
from engine.nn.attention import attention, positions
from engine.nn.linear import Embedding, Linear
from engine.nn.norm import RmsNorm
from engine.nn.rotary import RotaryEmbedding, apply_rotary, rope_parameters, signed_sin
from engine.models import config_from_dict
from engine.models.base import CausalLM


@dataclass
class Config:
    vocab_size: int = 256000
    hidden_size: int = 3072
    intermediate_size: int = 24576
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int | None = 16
    head_dim: int | None = 256
    hidden_act: str = "gelu_pytorch_tanh"
    hidden_activation: str | None = None  # older configs name the activation here
    max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    rope_parameters: dict | None = None  # transformers >= 5 writes rope_theta and scaling here
    attention_bias: bool = False
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 2
    eos_token_id: int | list | None = 1
    pad_token_id: int | None = 0
    model_type: str = "gemma"

    def __post_init__(self):
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
        act = self.hidden_activation or self.hidden_act
        if act not in ("gelu", "gelu_pytorch_tanh"):  # HF maps the legacy "gelu" to the tanh form too
            raise NotImplementedError(f"gemma with hidden activation {act!r} (only gelu_pytorch_tanh)")

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return config_from_dict(cls, d)

    def rope(self) -> dict:
        return rope_parameters(asdict(self))


PRESETS = {
    "tiny": dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=256, max_position_embeddings=256),
    "gemma-2b": dict(vocab_size=256000, hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
                     num_attention_heads=8, num_key_value_heads=1, head_dim=256),
    "gemma-7b": dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                     num_attention_heads=16, num_key_value_heads=16, head_dim=256),
}


class GemmaMLP(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Linear(h, i, False, vb=vb.pp("gate_proj"))
        self.up_proj = Linear(h, i, False, vb=vb.pp("up_proj"))
        self.down_proj = Linear(i, h, False, vb=vb.pp("down_proj"))

    def forward(self, x):
        return self.down_proj(self.gate_proj(x).gelu_tanh() * self.up_proj(x))  # GeGLU, tanh-approximate GELU


class GemmaRmsNorm(RmsNorm):
    """Gemma stores w with the identity at 0: out = (x_normed * (1 + w)) in fp32, rounded once at the
    end (LLaMA instead rounds x_normed first, then multiplies by w)."""

    style = "gemma"


class GemmaScaledEmbedding(Embedding):
    """Embedding rows times sqrt(hidden_size); the factor is rounded to the weights' dtype first
    (bf16: sqrt(2048) = 45.25 rather than 45.2548), which is what the checkpoints were trained with."""

    def __init__(self, num_embeddings, embedding_dim, vb):
        super().__init__(num_embeddings, embedding_dim, vb=vb)
        scale = ops.tensor(embedding_dim ** 0.5, dtype=self.weight.dtype, device=self.weight.device)
        self.register_buffer("embed_scale", scale, persistent=False)

    def forward(self, ids):
        return super().forward(ids) * self.embed_scale


class GemmaAttention(Module):
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


class GemmaDecoderLayer(Module):
    def __init__(self, cfg: Config, layer_idx: int, vb):
        super().__init__()
        self.self_attn = GemmaAttention(cfg, layer_idx, vb.pp("self_attn"))
        self.mlp = GemmaMLP(cfg, vb.pp("mlp"))
        self.input_layernorm = GemmaRmsNorm(cfg.hidden_size, cfg.rms_norm_eps, vb=vb.pp("input_layernorm"))
        self.post_attention_layernorm = GemmaRmsNorm(cfg.hidden_size, cfg.rms_norm_eps, vb=vb.pp("post_attention_layernorm"))

    def forward(self, x, cos, sin, mask, cache=None, step=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, step)
        return x + self.mlp(self.post_attention_layernorm(x))


class GemmaModel(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.config = cfg
        self.embed_tokens = GemmaScaledEmbedding(cfg.vocab_size, cfg.hidden_size, vb=vb.pp("embed_tokens"))
        self.layers = ModuleList(GemmaDecoderLayer(cfg, i, vb.pp(f"layers.{i}")) for i in range(cfg.num_hidden_layers))
        self.norm = GemmaRmsNorm(cfg.hidden_size, cfg.rms_norm_eps, vb=vb.pp("norm"))
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


class GemmaForCausalLM(CausalLM):
    Config = Config
    PRESETS = PRESETS
    Model = GemmaModel
