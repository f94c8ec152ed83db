"""Whisper (HF model_type "whisper"): an encoder over 30 s of log-mel features (two conv1d + GELU stem,
sinusoidal positions, pre-LN transformer layers) and a text decoder (learned positions, causal
self-attention with a KV cache, cross-attention over the encoder output whose keys and values are
computed once per audio, output projection tied to the token embeddings). Attribute paths equal the
HF state-dict keys of WhisperForConditionalGeneration.

    model = WhisperForConditionalGeneration.from_pretrained(dir)
    enc = model.encode(features)                  # (B, n_mels, 3000) -> (B, 1500, d_model)
    cross = model.cross_cache(enc)                # per-layer cross-attention K/V, once per audio
    cache = model.new_cache(B, max_len)           # self-attention KV cache
    logits = model.decode(ids, cross, cache)      # (B, L, vocab); then one token at a time
    logits = model(features, decoder_input_ids)   # teacher forcing in one call

Numerical quirks kept from transformers: the query is multiplied by head_dim ** -0.5 right after
q_proj (before the scores, which then use scale 1; a power of two goes to the attention op instead,
which gives the same bits); k_proj has no bias; in fp16 the encoder layers
clamp their output to +-(fp16 max - 1000).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine import dtype as D
from engine import functional as F
from engine import ops
from engine.layout import ShapeError
from engine.models import config_from_dict
from engine.models.base import Pretrained
from engine.nn import Module, ModuleList
from engine.nn.attention import attention, attention_keys, positions
from engine.nn.kv_cache import KVCache, StaticCache
from engine.nn.linear import Embedding, Linear, input_major
from engine.nn.norm import LayerNorm


@dataclass
class Config:
    vocab_size: int = 51865
    num_mel_bins: int = 80
    d_model: int = 384
    encoder_layers: int = 4
    encoder_attention_heads: int = 6
    encoder_ffn_dim: int = 1536
    decoder_layers: int = 4
    decoder_attention_heads: int = 6
    decoder_ffn_dim: int = 1536
    activation_function: str = "gelu"
    max_source_positions: int = 1500
    max_target_positions: int = 448
    scale_embedding: bool = False
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 50257
    bos_token_id: int | None = 50257
    eos_token_id: int | list | None = 50257
    decoder_start_token_id: int | None = 50258
    suppress_tokens: list | None = None
    begin_suppress_tokens: list | None = None
    model_type: str = "whisper"

    def __post_init__(self):
        if self.activation_function not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
            raise NotImplementedError(f"whisper with activation_function={self.activation_function!r} (gelu only)")
        for n in ("encoder", "decoder"):
            if self.d_model % getattr(self, f"{n}_attention_heads"):
                raise ValueError(f"whisper: d_model {self.d_model} is not divisible by {n}_attention_heads")

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return config_from_dict(cls, d)


PRESETS = {
    # tiny: head_dim 32, the smallest the GPU decode-attention kernel takes (so tests exercise it there)
    "tiny": dict(vocab_size=256, num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=2,
                 encoder_ffn_dim=128, decoder_layers=2, decoder_attention_heads=2, decoder_ffn_dim=128,
                 max_source_positions=1500, max_target_positions=64, pad_token_id=200, bos_token_id=200,
                 eos_token_id=200, decoder_start_token_id=201),  # specials 200-206, timestamps 207-255
    "whisper-tiny": dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
                         decoder_layers=4, decoder_attention_heads=6, decoder_ffn_dim=1536),
    "whisper-base": dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048,
                         decoder_layers=6, decoder_attention_heads=8, decoder_ffn_dim=2048),
}


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """(length, channels) float32: Whisper's encoder positions, sin in the first half, cos in the second."""
    inc = math.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(-inc * np.arange(channels // 2, dtype=np.float32))
    t = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def _act(x, name: str):
    return F.gelu(x) if name == "gelu" else F.gelu(x, approximate="tanh")


class WhisperAttention(Module):
    def __init__(self, d: int, heads: int, vb, layer_idx: int = 0):
        super().__init__()
        self.num_heads, self.head_dim, self.layer_idx = heads, d // heads, layer_idx
        self.scaling = self.head_dim ** -0.5
        self.k_proj = Linear(d, d, False, vb=vb.pp("k_proj"))
        self.v_proj = Linear(d, d, True, vb=vb.pp("v_proj"))
        self.q_proj = Linear(d, d, True, vb=vb.pp("q_proj"))
        self.out_proj = Linear(d, d, True, vb=vb.pp("out_proj"))

    def heads(self, x):
        """(B, S, d) -> (B, H, S, D)."""
        b, s, _ = x.shape
        return x.view(b, s, self.num_heads, self.head_dim).transpose(1, 2)

    def kv(self, x):
        """Keys and values of x (B, S, d): (B, H, S, D) each (cross-attention computes them once)."""
        return self.heads(self.k_proj(x)), self.heads(self.v_proj(x))

    def forward(self, x, kv=None, mask=None, cache=None, step=None):
        """x (B, L, d); kv: precomputed (k, v) for cross-attention, else self-attention over x (through
        the cache when given) -> (B, L, d)."""
        q = self.heads(self.q_proj(x))  # (B, H, L, D)
        if math.frexp(self.scaling)[0] == 0.5:  # a power of two (head_dim 64: 0.125): the attention op scales,
            scale = self.scaling  # the same bits as scaling q first (exact), one op less
        else:
            q, scale = q * self.scaling, 1.0  # scaled before the scores, as transformers does
        if kv is None:
            k, v = self.kv(x)
            if cache is not None:
                k, v = cache.update(self.layer_idx, k, v, step)  # (B, H, S, D) views of the cache
        else:
            k, v = kv
        return self.out_proj(attention(q, k, v, mask, scale))  # (B, L, H*D) -> (B, L, d)


class WhisperEncoderLayer(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        d = cfg.d_model
        self.act = cfg.activation_function
        self.self_attn = WhisperAttention(d, cfg.encoder_attention_heads, vb.pp("self_attn"))
        self.self_attn_layer_norm = LayerNorm(d, vb=vb.pp("self_attn_layer_norm"))
        self.fc1 = Linear(d, cfg.encoder_ffn_dim, vb=vb.pp("fc1"))
        self.fc2 = Linear(cfg.encoder_ffn_dim, d, vb=vb.pp("fc2"))
        self.final_layer_norm = LayerNorm(d, vb=vb.pp("final_layer_norm"))

    def forward(self, x):
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        x = x + self.fc2(_act(self.fc1(self.final_layer_norm(x)), self.act))
        if x.dtype is D.float16:  # transformers keeps fp16 activations finite here
            c = float(np.finfo(np.float16).max) - 1000
            x = x.clamp(-c, c)
        return x


class WhisperEncoder(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        d, n = cfg.d_model, cfg.num_mel_bins
        self.config = cfg
        self.conv1 = _Conv1d(n, d, 3, 1, vb.pp("conv1"))
        self.conv2 = _Conv1d(d, d, 3, 2, vb.pp("conv2"))
        if vb.keys():  # a checkpoint: its own table (transformers saves it)
            self.embed_positions = Embedding(cfg.max_source_positions, d, vb=vb.pp("embed_positions"))
        else:  # random weights (presets): the sinusoids themselves, as transformers initialises them
            self.embed_positions = Embedding(cfg.max_source_positions, d, dtype=vb.dtype, device=vb.device)
            self.embed_positions.weight = ops.tensor(sinusoids(cfg.max_source_positions, d), dtype=vb.dtype,
                                                     device=vb.device)
        self.layers = ModuleList(WhisperEncoderLayer(cfg, vb.pp(f"layers.{i}")) for i in range(cfg.encoder_layers))
        self.layer_norm = LayerNorm(d, vb=vb.pp("layer_norm"))

    def forward(self, features):
        """features (B, n_mels, 2 * max_source_positions) -> (B, max_source_positions, d)."""
        cfg = self.config
        want = (cfg.num_mel_bins, 2 * cfg.max_source_positions)
        if features.ndim != 3 or tuple(features.shape[1:]) != want:
            raise ShapeError(f"whisper encoder: input features must be (batch, {want[0]}, {want[1]}) "
                             f"(30 s of log-mel frames, padded), got {tuple(features.shape)}")
        x = F.gelu(self.conv1(features))  # (B, d, 3000)
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, 1500, d)
        x = x + self.embed_positions.weight
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x)


class _Conv1d(Module):
    """conv1d with padding 1 and the HF names (weight (out, in, k), bias (out,))."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, vb):
        super().__init__()
        self.stride = stride
        self.weight = vb.get("weight", (cout, cin, k))
        self.bias = vb.get("bias", (cout,))

    def forward(self, x):
        return F.conv1d(x, self.weight, self.bias, stride=self.stride, padding=1)


class WhisperDecoderLayer(Module):
    def __init__(self, cfg: Config, i: int, vb):
        super().__init__()
        d, h = cfg.d_model, cfg.decoder_attention_heads
        self.act = cfg.activation_function
        self.self_attn = WhisperAttention(d, h, vb.pp("self_attn"), i)
        self.self_attn_layer_norm = LayerNorm(d, vb=vb.pp("self_attn_layer_norm"))
        self.encoder_attn = WhisperAttention(d, h, vb.pp("encoder_attn"), i)
        self.encoder_attn_layer_norm = LayerNorm(d, vb=vb.pp("encoder_attn_layer_norm"))
        self.fc1 = Linear(d, cfg.decoder_ffn_dim, vb=vb.pp("fc1"))
        self.fc2 = Linear(cfg.decoder_ffn_dim, d, vb=vb.pp("fc2"))
        self.final_layer_norm = LayerNorm(d, vb=vb.pp("final_layer_norm"))

    def forward(self, x, cross_kv, mask, cache=None, step=None):
        x = x + self.self_attn(self.self_attn_layer_norm(x), None, mask, cache, step)
        x = x + self.encoder_attn(self.encoder_attn_layer_norm(x), cross_kv)
        return x + self.fc2(_act(self.fc1(self.final_layer_norm(x)), self.act))


class WhisperDecoder(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        d = cfg.d_model
        self.config = cfg
        self.embed_scale = math.sqrt(d) if cfg.scale_embedding else 1.0
        self.embed_tokens = Embedding(cfg.vocab_size, d, vb=vb.pp("embed_tokens"))
        self.embed_positions = Embedding(cfg.max_target_positions, d, vb=vb.pp("embed_positions"))
        self.layers = ModuleList(WhisperDecoderLayer(cfg, i, vb.pp(f"layers.{i}")) for i in range(cfg.decoder_layers))
        self.layer_norm = LayerNorm(d, vb=vb.pp("layer_norm"))

    def forward(self, ids, cross, cache=None):
        """ids (B, L) int64, cross: per-layer (k, v) of the encoder output -> normed hidden (B, L, d).
        With a cache, positions continue from the tokens already in it (device positions for a
        StaticCache, so a decode step can be captured)."""
        x = self.embed_tokens(ids)  # (B, L, d)
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        position_ids, mask, step = positions(ids, cache, None, None, None, x.dtype)  # (1, L), (1, 1, L, S)
        x = x + self.embed_positions(position_ids)
        for layer, kv in zip(self.layers, cross):
            x = layer(x, kv, mask, cache, step)
        return self.layer_norm(x)


class WhisperModel(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.encoder = WhisperEncoder(cfg, vb.pp("encoder"))
        self.decoder = WhisperDecoder(cfg, vb.pp("decoder"))


class WhisperForConditionalGeneration(Pretrained):
    Config = Config
    PRESETS = PRESETS

    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.config = cfg
        self.model = WhisperModel(cfg, vb.pp("model"))
        if cfg.tie_word_embeddings:  # the output projection reads the token embedding matrix itself
            self.proj_out = Linear.from_weight(self.model.decoder.embed_tokens.weight)
            vb.skip("proj_out.weight")
        else:
            self.proj_out = Linear(cfg.d_model, cfg.vocab_size, False, vb=vb.pp("proj_out"))
        # the decoder's one-row products read their weights in the layout the backend's GEMV reads fastest
        # (input_major's gemv rule; the LM head: half the time); a tied embedding reads its rows from the same
        # copy (one token's row: a strided gather of d_model values), so the matrix is held once
        input_major(self.model.decoder, gemv=True)
        input_major(self.proj_out, gemv=True)
        if cfg.tie_word_embeddings:
            self.model.decoder.embed_tokens.weight = self.proj_out.weight

    def _features(self, features):
        if not hasattr(features, "storage"):
            features = ops.tensor(np.asarray(features, np.float32), device=self.device)
        return features.to(self.dtype)

    def encode(self, features):
        """Log-mel features (B, n_mels, 3000) (a Tensor or host array) -> encoder output (B, 1500, d)."""
        return self.model.encoder(self._features(features))

    def cross_cache(self, encoder_out) -> list:
        """Per decoder layer, the cross-attention (k, v) of the encoder output: (B, H, 1500, D) each, copied
        once here (every decode step reads them): v contiguous, k as the backend's attention reads it best
        (attention_keys: each head's K^T contiguous on numpy)."""
        out = []
        for layer in self.model.decoder.layers:
            k, v = layer.encoder_attn.kv(encoder_out)
            out.append((attention_keys(k), v.contiguous()))
        return out

    def new_cache(self, batch_size: int, max_len: int, static: bool = False):
        """The decoder's self-attention cache (static: device positions, for a captured decode step)."""
        c = self.config
        if max_len > c.max_target_positions:
            raise ValueError(f"whisper decodes at most max_target_positions={c.max_target_positions} tokens, "
                             f"asked for a cache of {max_len}")
        shape = (c.decoder_layers, batch_size, c.decoder_attention_heads, c.d_model // c.decoder_attention_heads)
        cls = StaticCache if static else KVCache
        return cls(*shape, max_len, dtype=self.dtype, device=self.device)

    def decode(self, ids, cross, cache=None):
        """Decoder ids (B, L) -> logits (B, L, vocab) against cross = cross_cache(encoder output)."""
        ids = ids if hasattr(ids, "storage") else ops.tensor(np.asarray(ids, np.int64), dtype=D.int64,
                                                            device=self.device)
        if cross and cross[0][0].shape[0] != ids.shape[0]:
            raise ShapeError(f"whisper decode: {ids.shape[0]} token rows for an encoder output of batch "
                             f"{cross[0][0].shape[0]}")
        return self.proj_out(self.model.decoder(ids, cross, cache))

    def forward(self, input_features, decoder_input_ids):
        """Teacher forcing: features (B, n_mels, 3000), decoder ids (B, L) -> logits (B, L, vocab)."""
        return self.decode(decoder_input_ids, self.cross_cache(self.encode(input_features)))
