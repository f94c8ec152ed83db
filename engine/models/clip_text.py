"""CLIP's text encoder (HF model_type "clip_text_model"; Stable Diffusion 1.x/2.x `text_encoder`):
token + absolute position embeddings, pre-norm layers of causal self-attention and an MLP (quick_gelu
in OpenAI's CLIP, gelu in OpenCLIP's, as config.json says), a final LayerNorm, and the pooled output
at each row's end-of-text token. Attribute paths equal transformers 5's CLIPTextModel keys.

    model = engine.models.from_pretrained("sd-1.5/text_encoder")
    out = model(input_ids)                   # EncoderOutput
    out.last_hidden_state                    # (B, 77, hidden): what the UNet cross-attends to
    out.pooler_output                        # (B, hidden)

Released checkpoints (SD 1.5, transformers 4.x saves) prefix every key with "text_model."; the model
reads either layout (transformers 5 removes the prefix on load; migration/module_map.py declares it).
"""
from __future__ import annotations

from dataclasses import dataclass

from engine import dtype as D
from engine import ops
from engine.layout import ShapeError
from engine.models import config_from_dict
from engine.models.base import EncoderOutput, Pretrained
from engine.nn import Module, ModuleList
from engine.nn.activation import hf_activation
from engine.nn.attention import attention, causal_mask
from engine.nn.linear import Embedding, Linear, input_major
from engine.nn.norm import LayerNorm

RELEASED_PREFIX = "text_model"


@dataclass
class Config:
    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int | None = 512  # CLIPTextModelWithProjection's; unused by the text model itself
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    eos_token_id: int | None = 49407
    model_type: str = "clip_text_model"

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"clip_text_model: hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if isinstance(self.eos_token_id, (list, tuple)):
            raise NotImplementedError(f"clip_text_model with several eos_token_id {self.eos_token_id} (one id only)")
        hf_activation(self.hidden_act)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return config_from_dict(cls, d)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


# SD checkpoints keep the pre-2023 eos_token_id 2, which selects transformers' legacy pooling (argmax id)
PRESETS = {
    "tiny": dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77, bos_token_id=998, eos_token_id=999, pad_token_id=1),
    "sd-1.5": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, projection_dim=768, num_hidden_layers=12,
                   num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=0,
                   eos_token_id=2, pad_token_id=1),  # openai/clip-vit-large-patch14's text tower
    "sd-2.1": dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, projection_dim=512, num_hidden_layers=23,
                   num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", bos_token_id=0,
                   eos_token_id=2, pad_token_id=1),  # OpenCLIP ViT-H/14's text tower, last layer dropped
}


class CLIPTextEmbeddings(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.token_embedding = Embedding(cfg.vocab_size, cfg.hidden_size, vb=vb.pp("token_embedding"))
        self.position_embedding = Embedding(cfg.max_position_embeddings, cfg.hidden_size,
                                            vb=vb.pp("position_embedding"))

    def forward(self, input_ids, position_ids=None):
        L = input_ids.shape[1]
        if position_ids is None:
            position_ids = ops.arange(L, dtype=D.int64, device=input_ids.device).unsqueeze(0)  # (1, L)
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)  # (B, L, hidden)


class CLIPAttention(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.scale = self.head_dim ** -0.5
        h = cfg.hidden_size
        self.k_proj = Linear(h, h, vb=vb.pp("k_proj"))
        self.v_proj = Linear(h, h, vb=vb.pp("v_proj"))
        self.q_proj = Linear(h, h, vb=vb.pp("q_proj"))
        self.out_proj = Linear(h, h, vb=vb.pp("out_proj"))

    def forward(self, hidden_states, mask=None):
        b, L, _ = hidden_states.shape
        shape = (b, L, self.num_heads, self.head_dim)
        q = self.q_proj(hidden_states).view(*shape).transpose(1, 2)  # (B, H, L, D)
        k = self.k_proj(hidden_states).view(*shape).transpose(1, 2)  # (B, H, L, D)
        v = self.v_proj(hidden_states).view(*shape).transpose(1, 2)  # (B, H, L, D)
        return self.out_proj(attention(q, k, v, mask, self.scale))  # (B, L, H*D) -> (B, L, hidden)


class CLIPMLP(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.act = hf_activation(cfg.hidden_act)
        self.fc1 = Linear(cfg.hidden_size, cfg.intermediate_size, vb=vb.pp("fc1"))
        self.fc2 = Linear(cfg.intermediate_size, cfg.hidden_size, vb=vb.pp("fc2"))

    def forward(self, hidden_states):
        return self.fc2(self.act(self.fc1(hidden_states)))


class CLIPEncoderLayer(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.self_attn = CLIPAttention(cfg, vb.pp("self_attn"))
        self.layer_norm1 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, vb=vb.pp("layer_norm1"))
        self.mlp = CLIPMLP(cfg, vb.pp("mlp"))
        self.layer_norm2 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, vb=vb.pp("layer_norm2"))

    def forward(self, hidden_states, mask):
        x = hidden_states + self.self_attn(self.layer_norm1(hidden_states), mask)  # pre-norm residuals
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.layers = ModuleList(CLIPEncoderLayer(cfg, vb.pp(f"layers.{i}")) for i in range(cfg.num_hidden_layers))

    def forward(self, hidden_states, mask):
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask)
        return hidden_states


def _ids(x):
    return x if hasattr(x, "storage") else ops.tensor(x, dtype=D.int64)


class CLIPTextModel(Pretrained):
    Config = Config
    PRESETS = PRESETS
    IGNORED_KEYS = (r"embeddings\.position_ids$",)  # a buffer older transformers saved; rebuilt here

    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.config = cfg
        if f"{RELEASED_PREFIX}.final_layer_norm.weight" in vb.keys():
            vb = vb.pp(RELEASED_PREFIX)  # the released layout: text_model.embeddings..., text_model.encoder...
        self.embeddings = CLIPTextEmbeddings(cfg, vb.pp("embeddings"))
        self.encoder = CLIPEncoder(cfg, vb.pp("encoder"))
        self.final_layer_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, vb=vb.pp("final_layer_norm"))
        input_major(self)  # the linears' weights in the layout the backend's GEMMs read fastest (same names)

    def eos_positions(self, ids):
        """(B,) int64: where each row's pooled output is read. eos_token_id 2 (configs from before
        transformers PR #24773, as SD's): the position of the largest id (the end-of-text token is the
        highest id of CLIP's vocabulary); else the first position of eos_token_id (0 when a row has none)."""
        if self.config.eos_token_id == 2:
            return ids.argmax(-1)
        return (ids == self.config.eos_token_id).int().argmax(-1)

    def forward(self, input_ids, attention_mask=None, position_ids=None) -> EncoderOutput:
        """input_ids (B, L) int64, L <= max_position_embeddings; attention_mask (B, L), 0 at padding
        (SD pads with the end token and passes none) -> EncoderOutput(last_hidden_state (B, L, hidden)
        after the final LayerNorm, pooler_output (B, hidden) at each row's end-of-text token)."""
        ids = _ids(input_ids)
        if ids.ndim != 2:
            raise ShapeError(f"clip_text_model: input_ids must be (batch, length), got shape {ids.shape}")
        b, L = ids.shape
        if L > self.config.max_position_embeddings:
            raise ValueError(f"clip_text_model: {L} tokens exceed max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        if attention_mask is not None and tuple(attention_mask.shape) != (b, L):
            raise ShapeError(f"clip_text_model: attention_mask must be {(b, L)}, got {tuple(attention_mask.shape)}")
        x = self.embeddings(ids, position_ids)  # (B, L, hidden)
        pos = ops.arange(L, dtype=D.int64, device=ids.device)
        mask = causal_mask(pos, pos, None if attention_mask is None else _ids(attention_mask), None, x.dtype)
        x = self.final_layer_norm(self.encoder(x, mask))  # (B, L, hidden)
        rows = ops.arange(b, dtype=D.int64, device=ids.device) * L + self.eos_positions(ids)  # (B,) flat rows
        pooled = x.reshape(b * L, -1).index_select(0, rows)  # (B, hidden)
        return EncoderOutput(x, pooled)
