"""The building blocks the UNet and the VAE share, with diffusers' names (models/resnet.py,
attention_processor.py, downsampling.py, upsampling.py): ResnetBlock2D, Attention, Downsample2D,
Upsample2D, plus conv / group-norm layers that take their weights from a VarBuilder.

Shapes: B batch, C channels, H x W spatial, N = H * W tokens, S context tokens.
"""
from __future__ import annotations

from engine import functional as F
from engine.nn import Module, ModuleList
from engine.nn.conv import Conv2d
from engine.nn.linear import Linear


def conv2d(vb, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> Conv2d:
    """torch.nn.Conv2d(cin, cout, k, stride, padding) with weight (cout, cin, k, k) and bias from vb."""
    c = Conv2d(cin, cout, k, stride, padding, bias=False)
    c.weight = vb.get("weight", (cout, cin, k, k))
    c.bias = vb.get("bias", (cout,))
    return c


class GroupNorm(Module):
    """torch.nn.GroupNorm (affine) with weight and bias from vb."""

    def __init__(self, groups: int, channels: int, eps: float, vb):
        super().__init__()
        if channels % groups:
            raise ValueError(f"GroupNorm: {channels} channels are not divisible by {groups} groups "
                             f"(norm_num_groups) at {vb.prefix}")
        self.groups, self.eps = groups, eps
        self.weight = vb.get("weight", (channels,))
        self.bias = vb.get("bias", (channels,))

    def forward(self, x):
        return F.group_norm(x, self.groups, self.weight, self.bias, self.eps)


class ResnetBlock2D(Module):
    """GroupNorm -> SiLU -> conv3x3 (+ the time embedding, projected, per channel) -> GroupNorm -> SiLU
    -> conv3x3, plus the input (through a 1x1 conv_shortcut when the channels change)."""

    def __init__(self, cin: int, cout: int, temb_channels: int | None, groups: int, eps: float, vb):
        super().__init__()
        self.norm1 = GroupNorm(groups, cin, eps, vb.pp("norm1"))
        self.conv1 = conv2d(vb.pp("conv1"), cin, cout, 3, padding=1)
        self.time_emb_proj = Linear(temb_channels, cout, vb=vb.pp("time_emb_proj")) if temb_channels else None
        self.norm2 = GroupNorm(groups, cout, eps, vb.pp("norm2"))
        self.conv2 = conv2d(vb.pp("conv2"), cout, cout, 3, padding=1)
        self.conv_shortcut = conv2d(vb.pp("conv_shortcut"), cin, cout, 1) if cin != cout else None

    def forward(self, x, temb=None):
        h = self.conv1(F.silu(self.norm1(x)))  # (B, Cout, H, W)
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]  # (B, Cout) -> (B, Cout, 1, 1)
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Attention(Module):
    """diffusers' Attention (AttnProcessor2_0): q from x, k/v from the context (x itself for
    self-attention), heads of dim_head, softmax(q k^T / sqrt(dim_head)) v, to_out.0. With group_norm
    (the VAE's mid block) it takes (B, C, H, W), normalises, attends over the H*W pixels and adds the
    input back (residual_connection)."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, vb, context_dim: int | None = None,
                 bias: bool = False, groups: int | None = None, eps: float = 1e-5):
        super().__init__()
        inner, ctx = heads * dim_head, context_dim or query_dim
        self.heads, self.dim_head = heads, dim_head
        self.group_norm = GroupNorm(groups, query_dim, eps, vb.pp("group_norm")) if groups else None
        self.to_q = Linear(query_dim, inner, bias, vb=vb.pp("to_q"))
        self.to_k = Linear(ctx, inner, bias, vb=vb.pp("to_k"))
        self.to_v = Linear(ctx, inner, bias, vb=vb.pp("to_v"))
        self.to_out = ModuleList([Linear(inner, query_dim, True, vb=vb.pp("to_out.0"))])

    def forward(self, x, context=None):
        spatial = x.ndim == 4
        if spatial:
            res = x
            b, c, hh, ww = x.shape
            x = x.view(b, c, hh * ww).transpose(1, 2)  # (B, N, C)
        if self.group_norm is not None:
            x = self.group_norm(x.transpose(1, 2)).transpose(1, 2)  # normalise over channels: (B, C, N)
        ctx = x if context is None else context
        b, n, _ = x.shape
        h, d = self.heads, self.dim_head
        q = self.to_q(x).view(b, n, h, d).transpose(1, 2)  # (B, heads, N, D)
        k = self.to_k(ctx).view(b, ctx.shape[1], h, d).transpose(1, 2)  # (B, heads, S, D)
        v = self.to_v(ctx).view(b, ctx.shape[1], h, d).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, D)
        o = self.to_out[0](o.transpose(1, 2).reshape(b, n, h * d))  # (B, N, query_dim)
        if spatial:
            o = o.transpose(1, 2).reshape(b, c, hh, ww) + res
        return o


class Downsample2D(Module):
    """A 3x3 stride-2 conv; padding 0 (the VAE) pads right and bottom by one first, as diffusers does."""

    def __init__(self, channels: int, padding: int, vb):
        super().__init__()
        self.padding = padding
        self.conv = conv2d(vb.pp("conv"), channels, channels, 3, stride=2, padding=padding)

    def forward(self, x):
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)  # (B, C, H/2, W/2)


class Upsample2D(Module):
    """Nearest 2x upsampling, then a 3x3 conv."""

    def __init__(self, channels: int, vb):
        super().__init__()
        self.conv = conv2d(vb.pp("conv"), channels, channels, 3, padding=1)

    def forward(self, x, size=None):
        x = F.interpolate(x, size=size, mode="nearest") if size is not None \
            else F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)
        return self.conv(x)
