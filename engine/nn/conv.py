"""Convolutions with torch's constructor arguments and parameter names (`weight`, `bias`).

    Conv1d / Conv2d:                   weight (out, in/groups, *kernel)
    ConvTranspose1d / ConvTranspose2d: weight (in, out/groups, *kernel)   (torch's layout, not swapped)

Weights start as zeros of the right shape; load them with `load_state_dict` (or migration.port).
Unbatched inputs ((C, L) for 1d, (C, H, W) for 2d) are accepted as in torch.
"""
from __future__ import annotations

from engine import functional as F
from engine import ops
from engine.nn.module import Module

_PAD_MODES = {"zeros", "reflect", "replicate", "circular"}


def _tuple(v, n: int, name: str) -> tuple:
    t = tuple(v) if isinstance(v, (tuple, list)) else (v,) * n
    if len(t) != n or not all(isinstance(a, int) for a in t):
        raise ValueError(f"{name} must be an int or a tuple of {n} ints, got {v!r}")
    return t


class _ConvNd(Module):
    nd = 2
    transposed = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", output_padding=0,
                 device=None, dtype=None):
        super().__init__()
        nd = self.nd
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{type(self).__name__}: in_channels {in_channels} and out_channels {out_channels} "
                             f"must both be divisible by groups={groups}")
        if padding_mode not in _PAD_MODES:
            raise ValueError(f"{type(self).__name__}: padding_mode must be one of {sorted(_PAD_MODES)}, "
                             f"got {padding_mode!r}")
        if self.transposed and padding_mode != "zeros":
            raise ValueError(f"{type(self).__name__}: only padding_mode='zeros' is supported (as in torch)")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _tuple(kernel_size, nd, "kernel_size")
        self.stride = _tuple(stride, nd, "stride")
        self.dilation = _tuple(dilation, nd, "dilation")
        self.output_padding = _tuple(output_padding, nd, "output_padding")
        if isinstance(padding, str):
            if padding not in ("same", "valid") or self.transposed:
                raise ValueError(f"{type(self).__name__}: padding {padding!r} is not supported")
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError(f"{type(self).__name__}: padding='same' needs stride 1")
            self.padding = padding
        else:
            self.padding = _tuple(padding, nd, "padding")
        self.padding_mode = padding_mode
        shape = ((in_channels, out_channels // groups) if self.transposed
                 else (out_channels, in_channels // groups)) + self.kernel_size
        self.weight = ops.zeros(shape, dtype=dtype, device=device)
        self.bias = ops.zeros(out_channels, dtype=dtype, device=device) if bias else None

    def _explicit_pads(self):
        """((left, right) per spatial dim) for padding_mode != 'zeros'."""
        if self.padding == "valid":
            return [(0, 0)] * self.nd
        if self.padding == "same":
            tot = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            return [(t // 2, t - t // 2) for t in tot]
        return [(p, p) for p in self.padding]

    def _batched(self, x):
        if x.ndim == self.nd + 1:
            return self._forward(x.unsqueeze(0)).squeeze(0)
        return self._forward(x)

    def forward(self, x):
        return self._batched(x)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}")
        if any(d != 1 for d in self.dilation):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s


class _Conv(_ConvNd):
    def _forward(self, x):
        fn = F.conv2d if self.nd == 2 else F.conv1d
        if self.padding_mode == "zeros":
            return fn(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        pads = []
        for lo, hi in reversed(self._explicit_pads()):  # F.pad order: last dim first
            pads += [lo, hi]
        x = F.pad(x, pads, mode=self.padding_mode)
        return fn(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class Conv1d(_Conv):
    nd = 1

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)


class Conv2d(_Conv):
    nd = 2

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)


class _ConvTranspose(_ConvNd):
    transposed = True

    def _output_padding(self, x, output_size):
        """torch's rule: output_size (spatial, or with batch/channel dims) picks output_padding."""
        if output_size is None:
            return self.output_padding
        size = list(output_size)[-self.nd:]
        out = []
        for d in range(self.nd):
            n_in = x.shape[x.ndim - self.nd + d]
            lo = ((n_in - 1) * self.stride[d] - 2 * self.padding[d] + self.dilation[d] * (self.kernel_size[d] - 1) + 1)
            extra = size[d] - lo
            if not 0 <= extra < max(self.stride[d], self.dilation[d]):
                raise ValueError(f"{type(self).__name__}: requested output size {tuple(size)} is not reachable "
                                 f"from input {tuple(x.shape)} (dim {d} allows {lo}..{lo + self.stride[d] - 1})")
            out.append(extra)
        return tuple(out)

    def forward(self, x, output_size=None):
        if x.ndim == self.nd + 1:
            return self.forward(x.unsqueeze(0), output_size).squeeze(0)
        fn = F.conv_transpose2d if self.nd == 2 else F.conv_transpose1d
        op = self._output_padding(x, output_size)
        return fn(x, self.weight, self.bias, self.stride, self.padding, op, self.groups, self.dilation)


class ConvTranspose1d(_ConvTranspose):
    nd = 1

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, output_padding, device=device, dtype=dtype)


class ConvTranspose2d(_ConvTranspose):
    nd = 2

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, output_padding, device=device, dtype=dtype)
