"""UNet2DConditionModel (diffusers' `_class_name` "UNet2DConditionModel"): the Stable Diffusion
denoiser. Latents (B, 4, h, w), a timestep and text states (B, S, cross_attention_dim) -> the
predicted noise (B, 4, h, w). Attribute paths equal diffusers' state-dict keys.

Layout: sinusoidal time embedding -> MLP (time_embedding); conv_in; down blocks (ResnetBlock2D with
the time embedding, Transformer2DModel with self- and cross-attention in the CrossAttn ones, a
stride-2 conv between levels), each output kept as a skip; a mid block (resnet, transformer,
resnet); up blocks that concatenate the skips channel-wise, nearest-2x upsampling between levels;
GroupNorm, SiLU, conv_out.

Quirk kept from diffusers: the config's `attention_head_dim` is the number of heads when
`num_attention_heads` is unset (SD 1.5: 8 heads of 40/80/160 dims), not the head dim.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from engine import dtype as D
from engine import functional as F
from engine import ops
from engine.models import config_from_dict
from engine.models.base import Pretrained
from engine.models.stable_diffusion.layers import (Attention, Downsample2D, GroupNorm, ResnetBlock2D, Upsample2D,
                                                   conv2d)
from engine.nn import Identity, Module, ModuleList
from engine.nn.linear import Linear
from engine.nn.norm import LayerNorm

DOWN = ("CrossAttnDownBlock2D", "DownBlock2D")
UP = ("CrossAttnUpBlock2D", "UpBlock2D")


@dataclass
class Config:
    sample_size: int = 64
    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    only_cross_attention: bool = False
    block_out_channels: tuple = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1280
    transformer_layers_per_block: int = 1
    attention_head_dim: int | tuple = 8
    num_attention_heads: int | tuple | None = None
    use_linear_projection: bool = False
    upcast_attention: bool = False  # softmax in fp32 for 16-bit: the engine's sdpa always is
    resnet_time_scale_shift: str = "default"
    class_embed_type: str | None = None
    addition_embed_type: str | None = None
    time_embedding_type: str = "positional"
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    _class_name: str = "UNet2DConditionModel"

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)
        n = len(self.block_out_channels)
        unsupported = {"center_input_sample": self.center_input_sample, "only_cross_attention": self.only_cross_attention,
                       "class_embed_type": self.class_embed_type, "addition_embed_type": self.addition_embed_type,
                       "resnet_time_scale_shift": self.resnet_time_scale_shift != "default",
                       "time_embedding_type": self.time_embedding_type != "positional",
                       "act_fn": self.act_fn != "silu", "mid_block_type": self.mid_block_type != "UNetMidBlock2DCrossAttn",
                       "transformer_layers_per_block": not isinstance(self.transformer_layers_per_block, int)}
        bad = [k for k, v in unsupported.items() if v]
        if bad:
            raise NotImplementedError(f"UNet2DConditionModel options the engine does not have: "
                                      + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad))
        for name, types, known in (("down_block_types", self.down_block_types, DOWN),
                                   ("up_block_types", self.up_block_types, UP)):
            if len(types) != n or any(t not in known for t in types):
                raise NotImplementedError(f"UNet2DConditionModel {name}={list(types)}: the engine has "
                                          f"{len(self.block_out_channels)} of {', '.join(known)}")
        heads = self.num_attention_heads or self.attention_head_dim  # diffusers' naming quirk
        self.heads = tuple(heads) if isinstance(heads, (list, tuple)) else (heads,) * n

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return config_from_dict(cls, d)


PRESETS = {
    "tiny": dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
                 norm_num_groups=16, sample_size=16, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
    # runwayml/stable-diffusion-v1-5 unet/config.json
    "sd-1.5": dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                   attention_head_dim=8, norm_num_groups=32, sample_size=64),
}


def timestep_embedding(t, dim: int, flip_sin_to_cos: bool, shift: float, device):
    """diffusers' get_timestep_embedding: t (B,) -> (B, dim) of sin / cos at frequencies
    exp(-ln(10000) * i / (dim/2 - shift)), in fp32; flip_sin_to_cos puts cos first."""
    half = dim // 2
    freqs = (ops.arange(half, dtype=D.float32, device=device) * -math.log(10000) / (half - shift)).exp()  # (dim/2,)
    arg = t.to(D.float32)[:, None] * freqs[None, :]  # (B, dim/2)
    sin, cos = arg.sin(), arg.cos()
    return ops.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)


class TimestepEmbedding(Module):
    def __init__(self, cin: int, dim: int, vb):
        super().__init__()
        self.linear_1 = Linear(cin, dim, vb=vb.pp("linear_1"))
        self.linear_2 = Linear(dim, dim, vb=vb.pp("linear_2"))

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))  # (B, 4 * ch0)


class GEGLU(Module):
    def __init__(self, dim: int, inner: int, vb):
        super().__init__()
        self.proj = Linear(dim, 2 * inner, vb=vb.pp("proj"))

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)  # (B, N, inner) each
        return h * F.gelu(gate)


class FeedForward(Module):
    """net.0 = GEGLU (dim -> 4 dim, gated), net.1 = dropout (nothing at inference), net.2 = Linear."""

    def __init__(self, dim: int, vb):
        super().__init__()
        self.net = ModuleList([GEGLU(dim, 4 * dim, vb.pp("net.0")), Identity(), Linear(4 * dim, dim, vb=vb.pp("net.2"))])

    def forward(self, x):
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(Module):
    """Pre-LayerNorm self-attention, cross-attention to the text states, GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, eps: float, vb):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps, vb=vb.pp("norm1"))
        self.attn1 = Attention(dim, heads, dim_head, vb.pp("attn1"))
        self.norm2 = LayerNorm(dim, eps, vb=vb.pp("norm2"))
        self.attn2 = Attention(dim, heads, dim_head, vb.pp("attn2"), context_dim=context_dim)
        self.norm3 = LayerNorm(dim, eps, vb=vb.pp("norm3"))
        self.ff = FeedForward(dim, vb.pp("ff"))

    def forward(self, x, context):
        x = x + self.attn1(self.norm1(x))  # (B, N, dim)
        x = x + self.attn2(self.norm2(x), context)  # queries from pixels, keys/values from text (B, S, ctx)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(Module):
    """GroupNorm -> proj_in (1x1 conv, or a Linear with use_linear_projection) -> pixels as tokens
    through the transformer blocks -> proj_out -> plus the input."""

    def __init__(self, heads: int, dim_head: int, cin: int, layers: int, cfg: Config, vb):
        super().__init__()
        inner = heads * dim_head
        self.linear = cfg.use_linear_projection
        self.norm = GroupNorm(cfg.norm_num_groups, cin, 1e-6, vb.pp("norm"))
        self.proj_in = Linear(cin, inner, vb=vb.pp("proj_in")) if self.linear else conv2d(vb.pp("proj_in"), cin, inner, 1)
        self.transformer_blocks = ModuleList([
            BasicTransformerBlock(inner, heads, dim_head, cfg.cross_attention_dim, cfg.norm_eps,
                                  vb.pp(f"transformer_blocks.{i}")) for i in range(layers)])
        self.proj_out = Linear(inner, cin, vb=vb.pp("proj_out")) if self.linear else conv2d(vb.pp("proj_out"), inner, cin, 1)

    def forward(self, x, context):
        b, c, hh, ww = x.shape
        h = self.norm(x)
        if not self.linear:
            h = self.proj_in(h)
        h = h.permute(0, 2, 3, 1).reshape(b, hh * ww, h.shape[1])  # (B, N, C)
        if self.linear:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.linear:
            h = self.proj_out(h)
        h = h.reshape(b, hh, ww, h.shape[-1]).permute(0, 3, 1, 2)  # (B, C, H, W)
        if not self.linear:
            h = self.proj_out(h)
        return h + x


class DownBlock(Module):
    """DownBlock2D and CrossAttnDownBlock2D: (resnet [, transformer]) x layers, then a stride-2 conv.
    Returns the output and every intermediate state (the skips)."""

    def __init__(self, kind: str, cin: int, cout: int, heads: int, temb: int, downsample: bool, cfg: Config, vb):
        super().__init__()
        n, g, eps = cfg.layers_per_block, cfg.norm_num_groups, cfg.norm_eps
        self.resnets = ModuleList([ResnetBlock2D(cin if i == 0 else cout, cout, temb, g, eps, vb.pp(f"resnets.{i}"))
                                   for i in range(n)])
        self.attentions = ModuleList([Transformer2DModel(heads, cout // heads, cout, cfg.transformer_layers_per_block,
                                                         cfg, vb.pp(f"attentions.{i}")) for i in range(n)]
                                     if kind.startswith("CrossAttn") else [])
        self.downsamplers = ModuleList([Downsample2D(cout, cfg.downsample_padding, vb.pp("downsamplers.0"))]
                                       if downsample else [])

    def forward(self, x, temb, context):
        skips = []
        for i, r in enumerate(self.resnets):
            x = r(x, temb)
            if len(self.attentions):
                x = self.attentions[i](x, context)
            skips.append(x)
        for d in self.downsamplers:
            x = d(x)  # (B, C, H/2, W/2)
            skips.append(x)
        return x, skips


class UpBlock(Module):
    """UpBlock2D and CrossAttnUpBlock2D: (concat a skip, resnet [, transformer]) x (layers + 1), then
    nearest 2x upsampling and a conv."""

    def __init__(self, kind: str, cin: int, cprev: int, cout: int, heads: int, temb: int, upsample: bool,
                 cfg: Config, vb):
        super().__init__()
        n, g, eps = cfg.layers_per_block + 1, cfg.norm_num_groups, cfg.norm_eps
        self.resnets = ModuleList([
            ResnetBlock2D((cprev if i == 0 else cout) + (cin if i == n - 1 else cout), cout, temb, g, eps,
                          vb.pp(f"resnets.{i}")) for i in range(n)])
        self.attentions = ModuleList([Transformer2DModel(heads, cout // heads, cout, cfg.transformer_layers_per_block,
                                                         cfg, vb.pp(f"attentions.{i}")) for i in range(n)]
                                     if kind.startswith("CrossAttn") else [])
        self.upsamplers = ModuleList([Upsample2D(cout, vb.pp("upsamplers.0"))] if upsample else [])

    def forward(self, x, skips, temb, context, size=None):
        for i, r in enumerate(self.resnets):
            x = r(ops.cat([x, skips.pop()], dim=1), temb)  # (B, C + C_skip, H, W) -> (B, Cout, H, W)
            if len(self.attentions):
                x = self.attentions[i](x, context)
        for u in self.upsamplers:
            x = u(x, size)  # to the next skip's size (2x)
        return x


class UNetMidBlock2DCrossAttn(Module):
    def __init__(self, c: int, heads: int, temb: int, cfg: Config, vb):
        super().__init__()
        g, eps = cfg.norm_num_groups, cfg.norm_eps
        self.resnets = ModuleList([ResnetBlock2D(c, c, temb, g, eps, vb.pp(f"resnets.{i}")) for i in range(2)])
        self.attentions = ModuleList([Transformer2DModel(heads, c // heads, c, cfg.transformer_layers_per_block, cfg,
                                                         vb.pp("attentions.0"))])

    def forward(self, x, temb, context):
        x = self.resnets[0](x, temb)
        return self.resnets[1](self.attentions[0](x, context), temb)


class UNet2DConditionModel(Pretrained):
    Config = Config
    PRESETS = PRESETS

    def __init__(self, cfg: Config, vb):
        super().__init__()
        if cfg.mid_block_scale_factor != 1:
            raise NotImplementedError(f"mid_block_scale_factor={cfg.mid_block_scale_factor} (only 1)")
        self.config = cfg
        ch, n, heads = cfg.block_out_channels, len(cfg.block_out_channels), cfg.heads
        temb = 4 * ch[0]
        self.conv_in = conv2d(vb.pp("conv_in"), cfg.in_channels, ch[0], cfg.conv_in_kernel, padding=cfg.conv_in_kernel // 2)
        self.time_embedding = TimestepEmbedding(ch[0], temb, vb.pp("time_embedding"))
        self.down_blocks = ModuleList([
            DownBlock(cfg.down_block_types[i], ch[max(i - 1, 0)], ch[i], heads[i], temb, i < n - 1, cfg,
                      vb.pp(f"down_blocks.{i}")) for i in range(n)])
        self.mid_block = UNetMidBlock2DCrossAttn(ch[-1], heads[-1], temb, cfg, vb.pp("mid_block"))
        rch, rheads = ch[::-1], heads[::-1]
        self.up_blocks = ModuleList([
            UpBlock(cfg.up_block_types[i], rch[min(i + 1, n - 1)], rch[max(i - 1, 0)], rch[i], rheads[i], temb, i < n - 1,
                    cfg, vb.pp(f"up_blocks.{i}")) for i in range(n)])
        self.conv_norm_out = GroupNorm(cfg.norm_num_groups, ch[0], cfg.norm_eps, vb.pp("conv_norm_out"))
        self.conv_out = conv2d(vb.pp("conv_out"), ch[0], cfg.out_channels, cfg.conv_out_kernel,
                               padding=cfg.conv_out_kernel // 2)

    def _timesteps(self, t, batch: int):
        """A number, a (1,) or a (B,) tensor -> (B,) on the model's device."""
        if not hasattr(t, "storage"):
            t = ops.tensor([float(t)], dtype=D.float32, device=self.device)
        t = t.reshape(-1)
        if t.shape[0] not in (1, batch):
            raise ValueError(f"UNet2DConditionModel: {t.shape[0]} timesteps for a batch of {batch}")
        return t.expand(batch)

    def forward(self, sample, timestep, encoder_hidden_states):
        """sample (B, in_channels, h, w), timestep (a number or (B,)), encoder_hidden_states
        (B, S, cross_attention_dim) -> (B, out_channels, h, w)."""
        cfg = self.config
        b = sample.shape[0]
        if sample.ndim != 4 or sample.shape[1] != cfg.in_channels:
            raise ValueError(f"UNet2DConditionModel: sample must be (B, {cfg.in_channels}, h, w), got {tuple(sample.shape)}")
        ctx = encoder_hidden_states
        if ctx.ndim != 3 or ctx.shape[0] != b or ctx.shape[2] != cfg.cross_attention_dim:
            raise ValueError(f"UNet2DConditionModel: encoder_hidden_states must be ({b}, S, {cfg.cross_attention_dim}), "
                             f"got {tuple(ctx.shape)}")
        if sample.dtype is not self.dtype or ctx.dtype is not self.dtype:
            raise ValueError(f"UNet2DConditionModel: inputs are {sample.dtype.name} / {ctx.dtype.name}, "
                             f"the model {self.dtype.name}")
        t = self._timesteps(timestep, b)
        emb = timestep_embedding(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift, sample.device)
        temb = self.time_embedding(emb.to(sample.dtype))  # (B, 4 * ch0)
        x = self.conv_in(sample)  # (B, ch0, h, w)
        skips = [x]
        for block in self.down_blocks:
            x, s = block(x, temb, ctx)
            skips += s
        x = self.mid_block(x, temb, ctx)  # (B, ch[-1], h/f, w/f)
        for block in self.up_blocks:
            n = len(block.resnets)
            mine, skips = skips[-n:], skips[:-n]
            x = block(x, mine, temb, ctx, tuple(skips[-1].shape[2:]) if skips else None)
        return self.conv_out(F.silu(self.conv_norm_out(x)))  # (B, out_channels, h, w)
