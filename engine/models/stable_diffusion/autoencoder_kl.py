"""AutoencoderKL (diffusers' `_class_name` "AutoencoderKL"): the Stable Diffusion VAE. The encoder
maps an image (B, 3, H, W) in [-1, 1] to the moments of a diagonal Gaussian over latents
(B, 2 * latent_channels, H/f, W/f), f = 2^(len(blocks) - 1); the decoder maps latents back. Attribute
paths equal diffusers' state-dict keys (encoder.*, decoder.*, quant_conv, post_quant_conv).

    vae = AutoencoderKL.from_pretrained("sd-1.5/vae")
    image = vae.decode(latents / vae.config.scaling_factor)      # (B, 3, 8h, 8w)
"""
from __future__ import annotations

from dataclasses import dataclass

from engine import functional as F
from engine import ops
from engine.models import config_from_dict
from engine.models.base import Pretrained
from engine.models.stable_diffusion.layers import (Attention, Downsample2D, GroupNorm, ResnetBlock2D, Upsample2D,
                                                   conv2d)
from engine.nn import Module, ModuleList

EPS = 1e-6  # every norm of the VAE


@dataclass
class Config:
    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple = ("DownEncoderBlock2D",)
    up_block_types: tuple = ("UpDecoderBlock2D",)
    block_out_channels: tuple = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    _class_name: str = "AutoencoderKL"

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)
        n = len(self.block_out_channels)
        if self.act_fn != "silu":
            raise NotImplementedError(f"AutoencoderKL with act_fn={self.act_fn!r} (only silu)")
        for name, types, want in (("down_block_types", self.down_block_types, "DownEncoderBlock2D"),
                                  ("up_block_types", self.up_block_types, "UpDecoderBlock2D")):
            if len(types) != n or any(t != want for t in types):
                raise NotImplementedError(f"AutoencoderKL {name}={list(types)}: the engine has {n} x {want}")

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return config_from_dict(cls, d)


PRESETS = {
    "tiny": dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=16, sample_size=32),
    # runwayml/stable-diffusion-v1-5 vae/config.json
    "sd-1.5": dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                   up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, norm_num_groups=32,
                   sample_size=512, scaling_factor=0.18215),
}


class UNetMidBlock2D(Module):
    """resnet -> self-attention over all pixels (one head) -> resnet."""

    def __init__(self, c: int, groups: int, add_attention: bool, vb):
        super().__init__()
        self.resnets = ModuleList([ResnetBlock2D(c, c, None, groups, EPS, vb.pp(f"resnets.{i}")) for i in range(2)])
        self.attentions = ModuleList([Attention(c, 1, c, vb.pp("attentions.0"), bias=True, groups=groups, eps=EPS)]
                                     if add_attention else [])

    def forward(self, x):
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)  # (B, C, H, W), residual inside
        return self.resnets[1](x)


class DownEncoderBlock2D(Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, downsample: bool, vb):
        super().__init__()
        self.resnets = ModuleList([ResnetBlock2D(cin if i == 0 else cout, cout, None, groups, EPS, vb.pp(f"resnets.{i}"))
                                   for i in range(layers)])
        self.downsamplers = ModuleList([Downsample2D(cout, 0, vb.pp("downsamplers.0"))] if downsample else [])

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        for d in self.downsamplers:
            x = d(x)  # (B, C, H/2, W/2)
        return x


class UpDecoderBlock2D(Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, upsample: bool, vb):
        super().__init__()
        self.resnets = ModuleList([ResnetBlock2D(cin if i == 0 else cout, cout, None, groups, EPS, vb.pp(f"resnets.{i}"))
                                   for i in range(layers)])
        self.upsamplers = ModuleList([Upsample2D(cout, vb.pp("upsamplers.0"))] if upsample else [])

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        for u in self.upsamplers:
            x = u(x)  # (B, C, 2H, 2W)
        return x


class Encoder(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        ch, g, n = cfg.block_out_channels, cfg.norm_num_groups, len(cfg.block_out_channels)
        self.conv_in = conv2d(vb.pp("conv_in"), cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = ModuleList([DownEncoderBlock2D(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, g, i < n - 1,
                                                          vb.pp(f"down_blocks.{i}")) for i in range(n)])
        self.mid_block = UNetMidBlock2D(ch[-1], g, cfg.mid_block_add_attention, vb.pp("mid_block"))
        self.conv_norm_out = GroupNorm(g, ch[-1], EPS, vb.pp("conv_norm_out"))
        self.conv_out = conv2d(vb.pp("conv_out"), ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)  # (B, ch0, H, W)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)  # (B, ch[-1], H/f, W/f)
        return self.conv_out(F.silu(self.conv_norm_out(x)))  # (B, 2 * latent, H/f, W/f)


class Decoder(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        ch, g, n = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups, len(cfg.block_out_channels)
        self.conv_in = conv2d(vb.pp("conv_in"), cfg.latent_channels, ch[0], 3, padding=1)
        self.mid_block = UNetMidBlock2D(ch[0], g, cfg.mid_block_add_attention, vb.pp("mid_block"))
        self.up_blocks = ModuleList([UpDecoderBlock2D(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, g, i < n - 1,
                                                      vb.pp(f"up_blocks.{i}")) for i in range(n)])
        self.conv_norm_out = GroupNorm(g, ch[-1], EPS, vb.pp("conv_norm_out"))
        self.conv_out = conv2d(vb.pp("conv_out"), ch[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z):
        x = self.mid_block(self.conv_in(z))  # (B, ch[-1], h, w)
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))  # (B, 3, f*h, f*w)


class AutoencoderKL(Pretrained):
    Config = Config
    PRESETS = PRESETS

    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg, vb.pp("encoder"))
        self.decoder = Decoder(cfg, vb.pp("decoder"))
        lc = cfg.latent_channels
        self.quant_conv = conv2d(vb.pp("quant_conv"), 2 * lc, 2 * lc, 1) if cfg.use_quant_conv else None
        self.post_quant_conv = conv2d(vb.pp("post_quant_conv"), lc, lc, 1) if cfg.use_post_quant_conv else None

    def _check(self, x, channels: int, what: str):
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"AutoencoderKL.{what}: expected (B, {channels}, H, W), got {tuple(x.shape)}")
        f = 2 ** (len(self.config.block_out_channels) - 1)
        if what == "encode" and (x.shape[2] % f or x.shape[3] % f):
            raise ValueError(f"AutoencoderKL.encode: height and width must be multiples of {f}, got {tuple(x.shape)}")
        if x.dtype is not self.dtype:
            raise ValueError(f"AutoencoderKL.{what}: input is {x.dtype.name}, the model {self.dtype.name}")

    def encode(self, x):
        """Image (B, 3, H, W) in [-1, 1] -> (mean, logvar) of the latent Gaussian, each (B, latent, H/f, W/f);
        logvar clamped to [-30, 20] as diffusers' DiagonalGaussianDistribution."""
        self._check(x, self.config.in_channels, "encode")
        m = self.encoder(x)
        if self.quant_conv is not None:
            m = self.quant_conv(m)
        mean, logvar = m.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def sample_latents(self, x, generator=None):
        """A draw from the encoder's latent Gaussian: mean + exp(logvar / 2) * N(0, 1)."""
        mean, logvar = self.encode(x)
        noise = ops.randn(*mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + (logvar * 0.5).exp() * noise

    def decode(self, z):
        """Latents (B, latent, h, w) (already divided by scaling_factor) -> image (B, 3, f*h, f*w)."""
        self._check(z, self.config.latent_channels, "decode")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(self, x):
        """The round trip through the latent mean: decode(encode(x).mean)."""
        return self.decode(self.encode(x)[0])
