"""Qwen2 / Qwen2.5 (HF model_type "qwen2"): LLaMA's decoder with a bias on the q, k and v
projections (none on o_proj or the MLP), rope_theta 1e6, tied embeddings in the small sizes. Optional
sliding-window layers (use_sliding_window: layers from max_window_layers on, or as `layer_types` says).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from engine import dtype as D
from engine import ops
from engine.nn import Module, ModuleList
from engine.nn.attention import attention, causal_mask, positions
from engine.nn.linear import Embedding, Linear
from engine.nn.norm import RmsNorm
from engine.nn.rotary import RotaryEmbedding, apply_rotary, rope_parameters, signed_sin
from engine.models import config_from_dict
from engine.models.base import CausalLM


@dataclass
class Config:
    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 22016
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 32
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    rope_parameters: dict | None = None  # transformers >= 5 writes rope_theta and scaling here
    use_sliding_window: bool = False
    sliding_window: int | None = 4096
    max_window_layers: int = 28
    layer_types: list | None = None
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list | None = None
    pad_token_id: int | None = None
    model_type: str = "qwen2"

    def __post_init__(self):
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
        if self.hidden_act != "silu":
            raise NotImplementedError(f"qwen2 with hidden_act={self.hidden_act!r} (only silu)")
        if not self.use_sliding_window:
            self.sliding_window = None
        if self.layer_types is None:  # transformers' default placement of sliding layers
            self.layer_types = ["sliding_attention" if self.sliding_window is not None and i >= self.max_window_layers
                                else "full_attention" for i in range(self.num_hidden_layers)]

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return config_from_dict(cls, d)

    def rope(self) -> dict:
        return rope_parameters(asdict(self))


PRESETS = {
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, rope_theta=1000000.0, tie_word_embeddings=True),
    "qwen2-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                       rope_theta=1000000.0, tie_word_embeddings=True, eos_token_id=151643),
    "qwen2.5-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1000000.0, tie_word_embeddings=True, eos_token_id=151643),
    "qwen2-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                     rope_theta=1000000.0, eos_token_id=151643),
}


class Qwen2MLP(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        h, i, bias = cfg.hidden_size, cfg.intermediate_size, False
        self.gate_proj = Linear(h, i, bias, vb=vb.pp("gate_proj"))
        self.up_proj = Linear(h, i, bias, vb=vb.pp("up_proj"))
        self.down_proj = Linear(i, h, bias, vb=vb.pp("down_proj"))

    def forward(self, x):
        return self.down_proj(self.gate_proj(x).silu() * self.up_proj(x))  # SwiGLU


class Qwen2Attention(Module):
    def __init__(self, cfg: Config, layer_idx: int, vb):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.scaling = self.head_dim ** -0.5
        h, d = cfg.hidden_size, cfg.head_dim
        self.q_proj = Linear(h, self.num_heads * d, True, vb=vb.pp("q_proj"))  # Qwen2: q, k, v carry a bias
        self.k_proj = Linear(h, self.num_kv_heads * d, True, vb=vb.pp("k_proj"))
        self.v_proj = Linear(h, self.num_kv_heads * d, True, vb=vb.pp("v_proj"))
        self.o_proj = Linear(self.num_heads * d, h, False, vb=vb.pp("o_proj"))

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


class Qwen2DecoderLayer(Module):
    def __init__(self, cfg: Config, layer_idx: int, vb):
        super().__init__()
        self.self_attn = Qwen2Attention(cfg, layer_idx, vb.pp("self_attn"))
        self.mlp = Qwen2MLP(cfg, vb.pp("mlp"))
        self.input_layernorm = RmsNorm(cfg.hidden_size, cfg.rms_norm_eps, vb=vb.pp("input_layernorm"))
        self.post_attention_layernorm = RmsNorm(cfg.hidden_size, cfg.rms_norm_eps, vb=vb.pp("post_attention_layernorm"))

    def forward(self, x, cos, sin, mask, cache=None, step=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, step)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2Model(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.config = cfg
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, vb=vb.pp("embed_tokens"))
        self.layers = ModuleList(Qwen2DecoderLayer(cfg, i, vb.pp(f"layers.{i}")) for i in range(cfg.num_hidden_layers))
        self.norm = RmsNorm(cfg.hidden_size, cfg.rms_norm_eps, vb=vb.pp("norm"))
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope(), cfg.max_position_embeddings,
                                          device=self.embed_tokens.weight.device)

    def forward(self, input_ids, cache=None, attention_mask=None, position_ids=None):
        """input_ids (B, L) -> final normed hidden states (B, L, hidden)."""
        x = self.embed_tokens(input_ids)  # (B, L, hidden)
        position_ids, mask, step = positions(input_ids, cache, attention_mask, position_ids, None, x.dtype)
        masks = {"full_attention": mask}
        if "sliding_attention" in self.config.layer_types:  # same positions, plus the window
            q_pos = step.query_pos if step is not None else ops.arange(x.shape[1], dtype=D.int64, device=x.device)
            k_pos = step.key_pos if step is not None else q_pos
            masks["sliding_attention"] = causal_mask(q_pos, k_pos, attention_mask, self.config.sliding_window, x.dtype)
        cos, sin = self.rotary_emb(position_ids, x.dtype)  # (B|1, L, head_dim) each
        sin = signed_sin(sin)  # (-s1, s2): the sign of rotate_half folded in once for all layers
        for layer, kind in zip(self.layers, self.config.layer_types):
            x = layer(x, cos, sin, masks[kind], cache, step)
        return self.norm(x)


class Qwen2ForCausalLM(CausalLM):
    Config = Config
    PRESETS = PRESETS
    Model = Qwen2Model
