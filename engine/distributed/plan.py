"""The tensor-parallel plan of every LLM family, as data keyed by Hugging Face parameter names.

Megatron-style: in each block the first linears are column-parallel (each rank holds a block of output
rows: its attention heads, its slice of the MLP's intermediate units) and the last one is
row-parallel (the matching block of input columns); its output is a partial sum that one all-reduce
completes, at the module named in REDUCE_AT. Everything not matched here is replicated: embeddings,
norms, the LM head, Mixtral's router.

Why a replicated LM head (and not a vocabulary split with an all-gather): every rank then computes
the same logits and picks the same token on its own device (greedy, or sampling with the same seed),
so a decode step needs no collective after the last layer and no token broadcast; the price is reading
the head on every rank, 1.5% of a Llama-2-70B rank's weight bytes (0.5 of 34.5 GB).

SHARDED_CONFIG names the config.json keys divided by the world size: the model is built from that
per-rank config by its own class (its Linear shapes, head counts and KV cache follow), and the
VarBuilder hands it the slices below.
"""
from __future__ import annotations

from dataclasses import dataclass

SHARDED_CONFIG = ("num_attention_heads", "num_key_value_heads", "intermediate_size")


@dataclass(frozen=True)
class Split:
    """Contiguous blocks along `dim` (0: output rows, column-parallel; 1: input columns, row-parallel).
    parts(config) -> sizes of blocks stacked along dim in one fused tensor (Phi-3's qkv_proj: q | k | v);
    each part is split alike and a rank's shard stacks its block of every part."""
    dim: int
    parts: object = None


@dataclass(frozen=True)
class RankZero:
    """A row-parallel layer's bias: rank 0 holds it, the other ranks zeros, so the all-reduce adds it once."""


COLUMN, ROW, BIAS_ONCE = Split(0), Split(1), RankZero()


def _qkv(c):
    return (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim, c.num_key_value_heads * c.head_dim)


def _gate_up(c):
    return (c.intermediate_size, c.intermediate_size)


# (regex on the HF parameter name, rule); the first match wins
PARAMS = (
    (r"\.self_attn\.[qkv]_proj\.(weight|bias)$", COLUMN),  # llama, mistral, qwen2 (biases), gemma, mixtral
    (r"\.self_attn\.qkv_proj\.(weight|bias)$", Split(0, _qkv)),  # phi3: rows q | k | v
    (r"\.self_attn\.o_proj\.weight$", ROW),
    (r"\.self_attn\.o_proj\.bias$", BIAS_ONCE),
    (r"\.mlp\.(gate|up)_proj\.(weight|bias)$", COLUMN),
    (r"\.mlp\.gate_up_proj\.(weight|bias)$", Split(0, _gate_up)),  # phi3: rows gate | up
    (r"\.mlp\.down_proj\.weight$", ROW),
    (r"\.mlp\.down_proj\.bias$", BIAS_ONCE),
    (r"\.block_sparse_moe\.experts\.\d+\.w[13]\.weight$", COLUMN),  # mixtral experts: w1 gate, w3 up
    (r"\.block_sparse_moe\.experts\.\d+\.w2\.weight$", ROW),  # down; the experts' sum is reduced once
)

# modules whose output is a partial sum over the ranks: one all-reduce after each (a forward hook)
REDUCE_AT = (r"\.self_attn\.o_proj$", r"\.mlp\.down_proj$", r"\.block_sparse_moe$")
