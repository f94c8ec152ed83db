"""Mixtral (HF model_type "mixtral"): Mistral's decoder with a sparse mixture-of-experts MLP.

Each token's router logits (gate: hidden -> num_local_experts) go through a softmax in fp32; the
top `num_experts_per_tok` experts are kept and their probabilities renormalised to sum to 1; the
token's output is the weighted sum of those experts' SwiGLU MLPs (w1 gate, w3 up, w2 down).
Ties: topk keeps the lowest expert index first (a stable sort); torch's CPU topk breaks exact ties
in an unspecified order, so only ties at the top-k boundary between different experts can differ.

Names follow the released checkpoints (block_sparse_moe.experts.N.w1/w2/w3, block_sparse_moe.gate),
which transformers >= 5 still reads and writes, although its own modules hold fused 3-d expert
tensors under `mlp.experts`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from engine import dtype as D
from engine import functional as F
from engine.nn import Module, ModuleList
from engine.nn.attention import attention, positions
from engine.nn.linear import Embedding, Linear
from engine.nn.moe import moe
from engine.nn.norm import RmsNorm
from engine.nn.rotary import RotaryEmbedding, apply_rotary, rope_parameters, signed_sin
from engine.models import config_from_dict
from engine.models.base import CausalLM


@dataclass
class Config:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 8
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 131072
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1000000.0  # Mixtral's default_theta
    rope_scaling: dict | None = None
    rope_parameters: dict | None = None  # transformers >= 5 writes rope_theta and scaling here
    sliding_window: int | None = None
    num_local_experts: int = 8
    num_experts_per_tok: int = 2
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list | None = 2
    pad_token_id: int | None = None
    model_type: str = "mixtral"

    def __post_init__(self):
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
        if self.hidden_act != "silu":
            raise NotImplementedError(f"mixtral with hidden_act={self.hidden_act!r} (only silu)")

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return config_from_dict(cls, d)

    def rope(self) -> dict:
        return rope_parameters(asdict(self))


PRESETS = {
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, num_local_experts=4, num_experts_per_tok=2,
                 rope_theta=1000000.0),
    "mixtral-8x7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                         rms_norm_eps=1e-5, rope_theta=1000000.0, num_local_experts=8, num_experts_per_tok=2),
}


class MixtralBlockSparseTop2MLP(Module):
    """One expert: SwiGLU with w1 (gate), w3 (up), w2 (down)."""

    def __init__(self, cfg: Config, vb):
        super().__init__()
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.w1 = Linear(h, i, False, vb=vb.pp("w1"))
        self.w2 = Linear(i, h, False, vb=vb.pp("w2"))
        self.w3 = Linear(h, i, False, vb=vb.pp("w3"))

    def forward(self, x):
        return self.w2(self.w1(x).silu() * self.w3(x))


class MixtralSparseMoeBlock(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.top_k, self.num_experts = cfg.num_experts_per_tok, cfg.num_local_experts
        self.gate = Linear(cfg.hidden_size, cfg.num_local_experts, False, vb=vb.pp("gate"))
        self.experts = ModuleList(MixtralBlockSparseTop2MLP(cfg, vb.pp(f"experts.{e}")) for e in range(self.num_experts))

    def route(self, x):
        """x (T, hidden) -> (weights (T, k) fp32 summing to 1, expert ids (T, k) int64)."""
        probs = F.softmax(self.gate(x), -1, dtype=D.float32)  # (T, E): router softmax in fp32
        weights, experts = probs.topk(self.top_k, -1)  # ties: lower expert index first
        return weights / weights.sum(-1, keepdim=True), experts

    def forward(self, x):
        b, L, h = x.shape
        x = x.reshape(b * L, h)  # (T, hidden)
        weights, experts = self.route(x)  # (T, k) each
        ex = self.experts
        out = moe(x, weights, experts, [e.w1.weight for e in ex], [e.w3.weight for e in ex],
                  [e.w2.weight for e in ex], act="silu")  # ascending expert order, as transformers sums
        return out.reshape(b, L, h)


class MixtralAttention(Module):
    def __init__(self, cfg: Config, layer_idx: int, vb):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.scaling = self.head_dim ** -0.5
        h, d, bias = cfg.hidden_size, cfg.head_dim, False
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


class MixtralDecoderLayer(Module):
    def __init__(self, cfg: Config, layer_idx: int, vb):
        super().__init__()
        self.self_attn = MixtralAttention(cfg, layer_idx, vb.pp("self_attn"))
        self.block_sparse_moe = MixtralSparseMoeBlock(cfg, vb.pp("block_sparse_moe"))
        self.input_layernorm = RmsNorm(cfg.hidden_size, cfg.rms_norm_eps, vb=vb.pp("input_layernorm"))
        self.post_attention_layernorm = RmsNorm(cfg.hidden_size, cfg.rms_norm_eps, vb=vb.pp("post_attention_layernorm"))

    def forward(self, x, cos, sin, mask, cache=None, step=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, step)
        return x + self.block_sparse_moe(self.post_attention_layernorm(x))


class MixtralModel(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.config = cfg
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, vb=vb.pp("embed_tokens"))
        self.layers = ModuleList(MixtralDecoderLayer(cfg, i, vb.pp(f"layers.{i}")) for i in range(cfg.num_hidden_layers))
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


class MixtralForCausalLM(CausalLM):
    Config = Config
    PRESETS = PRESETS
    Model = MixtralModel
