"""BERT (HF model_type "bert"): post-norm encoder. Embeddings (word + token type + absolute position,
then LayerNorm), layers of bidirectional self-attention over a padding mask and a GELU MLP, each
sub-block followed by LayerNorm(x + residual), and the pooler (tanh(dense(first token))).
Attribute paths equal transformers' BertModel state-dict keys (MiniLM, all-MiniLM-L6-v2, bert-base);
checkpoints of BertFor* models (bert-base-uncased: BertForPreTraining) hold them under "bert." beside
task heads, and load the same way (heads ignored, as BertModel.from_pretrained drops them).

    model = engine.models.from_pretrained("all-MiniLM-L6-v2")   # a BertModel directory
    out = model(input_ids, attention_mask)                     # EncoderOutput
    out.last_hidden_state                                      # (B, L, hidden)
    out.pooler_output                                          # (B, hidden)

Sentence embeddings (mean pooling, normalisation) as sentence-transformers computes them live in
engine/models/sentence_embedding.py.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine import dtype as D
from engine import ops
from engine.layout import ShapeError
from engine.models import config_from_dict
from engine.models.base import EncoderOutput, Pretrained
from engine.nn import Module, ModuleList
from engine.nn.activation import Tanh, hf_activation
from engine.nn.attention import attention, min_value
from engine.nn.linear import Embedding, Linear, input_major
from engine.nn.norm import LayerNorm


@dataclass
class Config:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    position_embedding_type: str = "absolute"
    is_decoder: bool = False
    add_cross_attention: bool = False
    model_type: str = "bert"

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"bert: hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                             f"{self.num_attention_heads}")
        if self.position_embedding_type != "absolute":
            raise NotImplementedError(f"bert with position_embedding_type={self.position_embedding_type!r} "
                                      "(only absolute)")
        if self.is_decoder or self.add_cross_attention:
            raise NotImplementedError("bert as a decoder (is_decoder / add_cross_attention): only the encoder")
        hf_activation(self.hidden_act)  # NotImplementedError for an unknown name, at config time

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return config_from_dict(cls, d)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


PRESETS = {
    "tiny": dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                 max_position_embeddings=64),
    "all-minilm-l6-v2": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                             intermediate_size=1536),
    "bert-base-uncased": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                              intermediate_size=3072),
}


TASK_PREFIX = "bert"
TASK_HEADS = (r"^cls\.", r"^classifier\.", r"^qa_outputs\.")  # pretraining / classification / QA heads


def padding_mask(attention_mask, L: int, dtype):
    """attention_mask (B, S), 0 at padding -> additive (B, 1, L, S): 0 where a key is readable, the
    dtype's minimum at padded keys (transformers' bidirectional mask; a stride-0 view over L)."""
    b, s = attention_mask.shape
    add = ops.where(attention_mask != 0, 0.0, min_value(dtype)).to(dtype)  # (B, S)
    return add.view(b, 1, 1, s).expand(b, 1, L, s)


class BertEmbeddings(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        h = cfg.hidden_size
        self.word_embeddings = Embedding(cfg.vocab_size, h, vb=vb.pp("word_embeddings"))
        self.position_embeddings = Embedding(cfg.max_position_embeddings, h, vb=vb.pp("position_embeddings"))
        self.token_type_embeddings = Embedding(cfg.type_vocab_size, h, vb=vb.pp("token_type_embeddings"))
        self.LayerNorm = LayerNorm(h, cfg.layer_norm_eps, vb=vb.pp("LayerNorm"))

    def forward(self, input_ids, token_type_ids=None, position_ids=None):
        b, L = input_ids.shape
        if position_ids is None:
            position_ids = ops.arange(L, dtype=D.int64, device=input_ids.device).unsqueeze(0)  # (1, L)
        if token_type_ids is None:  # type 0 everywhere, as transformers' zero buffer (expanded to (B, L))
            token_type_ids = ops.zeros(b, L, dtype=D.int64, device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)  # (B, L, hidden)
        x = x + self.position_embeddings(position_ids)
        return self.LayerNorm(x)


class BertSelfAttention(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.scaling = self.head_dim ** -0.5
        h = cfg.hidden_size
        self.query = Linear(h, h, vb=vb.pp("query"))
        self.key = Linear(h, h, vb=vb.pp("key"))
        self.value = Linear(h, h, vb=vb.pp("value"))

    def forward(self, hidden_states, mask=None):
        b, L, _ = hidden_states.shape
        shape = (b, L, self.num_heads, self.head_dim)
        q = self.query(hidden_states).view(*shape).transpose(1, 2)  # (B, H, L, D)
        k = self.key(hidden_states).view(*shape).transpose(1, 2)  # (B, H, L, D)
        v = self.value(hidden_states).view(*shape).transpose(1, 2)  # (B, H, L, D)
        return attention(q, k, v, mask, self.scaling)  # (B, L, H*D), before the output projection


class BertSelfOutput(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.dense = Linear(cfg.hidden_size, cfg.hidden_size, vb=vb.pp("dense"))
        self.LayerNorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, vb=vb.pp("LayerNorm"))

    def forward(self, hidden_states, input_tensor):
        return self.LayerNorm(self.dense(hidden_states) + input_tensor)  # post-norm residual


class BertAttention(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.self = BertSelfAttention(cfg, vb.pp("self"))
        self.output = BertSelfOutput(cfg, vb.pp("output"))

    def forward(self, hidden_states, mask=None):
        return self.output(self.self(hidden_states, mask), hidden_states)


class BertIntermediate(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.dense = Linear(cfg.hidden_size, cfg.intermediate_size, vb=vb.pp("dense"))
        self.act = hf_activation(cfg.hidden_act)

    def forward(self, hidden_states):
        return self.act(self.dense(hidden_states))  # (B, L, intermediate)


class BertOutput(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.dense = Linear(cfg.intermediate_size, cfg.hidden_size, vb=vb.pp("dense"))
        self.LayerNorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, vb=vb.pp("LayerNorm"))

    def forward(self, hidden_states, input_tensor):
        return self.LayerNorm(self.dense(hidden_states) + input_tensor)


class BertLayer(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.attention = BertAttention(cfg, vb.pp("attention"))
        self.intermediate = BertIntermediate(cfg, vb.pp("intermediate"))
        self.output = BertOutput(cfg, vb.pp("output"))

    def forward(self, hidden_states, mask=None):
        a = self.attention(hidden_states, mask)
        return self.output(self.intermediate(a), a)


class BertEncoder(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.layer = ModuleList(BertLayer(cfg, vb.pp(f"layer.{i}")) for i in range(cfg.num_hidden_layers))

    def forward(self, hidden_states, mask=None):
        for layer in self.layer:
            hidden_states = layer(hidden_states, mask)
        return hidden_states


class BertPooler(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.dense = Linear(cfg.hidden_size, cfg.hidden_size, vb=vb.pp("dense"))
        self.activation = Tanh()

    def forward(self, hidden_states):
        return self.activation(self.dense(hidden_states[:, 0]))  # the first ([CLS]) token: (B, hidden)


def _ids(x):
    """An int64 engine tensor from a tensor, array or nested list."""
    return x if hasattr(x, "storage") else ops.tensor(x, dtype=D.int64)


class BertModel(Pretrained):
    Config = Config
    PRESETS = PRESETS
    # transformers saved the position_ids buffer until 4.31 (all-MiniLM-L6-v2 carries it); rebuilt here
    IGNORED_KEYS = (r"(^|\.)embeddings\.position_ids$", r"(^|\.)embeddings\.token_type_ids$")

    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.config = cfg
        if f"{TASK_PREFIX}.embeddings.word_embeddings.weight" in vb.keys():
            # saved from a BertFor* model (bert-base-uncased is BertForPreTraining): the encoder under bert.,
            # task heads beside it, which a BertModel does not have (transformers' AutoModel drops them too)
            vb.ignore(*TASK_HEADS)
            vb = vb.pp(TASK_PREFIX)
        self.embeddings = BertEmbeddings(cfg, vb.pp("embeddings"))
        self.encoder = BertEncoder(cfg, vb.pp("encoder"))
        # checkpoints saved with add_pooling_layer=False have no pooler: then no pooler_output
        self.pooler = BertPooler(cfg, vb.pp("pooler")) if vb.contains("pooler.dense.weight") else None
        input_major(self)  # the linears' weights in the layout the backend's GEMMs read fastest (same names)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None) -> EncoderOutput:
        """input_ids (B, L) int64; attention_mask (B, L), 0 at padding; token_type_ids (B, L) (default
        all 0) -> EncoderOutput(last_hidden_state (B, L, hidden), pooler_output (B, hidden) or None)."""
        ids = _ids(input_ids)
        if ids.ndim != 2:
            raise ShapeError(f"bert: input_ids must be (batch, length), got shape {ids.shape}")
        b, L = ids.shape
        if L > self.config.max_position_embeddings:
            raise ValueError(f"bert: {L} tokens exceed max_position_embeddings {self.config.max_position_embeddings}")
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and tuple(t.shape) != (b, L):
                raise ShapeError(f"bert: {name} must have the shape of input_ids {(b, L)}, got {tuple(t.shape)}")
        x = self.embeddings(ids, None if token_type_ids is None else _ids(token_type_ids),
                            position_ids)  # (B, L, hidden)
        mask = None if attention_mask is None else padding_mask(_ids(attention_mask), L, x.dtype)
        x = self.encoder(x, mask)
        return EncoderOutput(x, self.pooler(x) if self.pooler is not None else None)
