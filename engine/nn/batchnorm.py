"""BatchNorm1d, BatchNorm2d (inference: normalise with the running statistics) and GroupNorm.

State-dict names follow torch: `weight`, `bias` (when affine), and the buffers `running_mean`,
`running_var`, `num_batches_tracked` (when track_running_stats). num_batches_tracked is kept only so
that a torch state dict loads strictly; inference never reads it.
"""
from __future__ import annotations

from engine import dtype as D
from engine import functional as F
from engine import ops
from engine.layout import ShapeError
from engine.nn.module import Module


class _BatchNorm(Module):
    dims: tuple = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = ops.ones(num_features, dtype=dtype, device=device) if affine else None
        self.bias = ops.zeros(num_features, dtype=dtype, device=device) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", ops.zeros(num_features, dtype=dtype, device=device))
            self.register_buffer("running_var", ops.ones(num_features, dtype=dtype, device=device))
            self.register_buffer("num_batches_tracked", ops.zeros((), dtype=D.int64, device=device))
        else:
            self.running_mean = self.running_var = None

    def forward(self, x):
        if x.ndim not in self.dims:
            raise ShapeError(f"{type(self).__name__}: expected {' or '.join(f'{d}-d' for d in self.dims)} input, "
                             f"got shape {x.shape}")
        if x.shape[1] != self.num_features:
            raise ShapeError(f"{type(self).__name__}({self.num_features}): input {x.shape} has {x.shape[1]} channels")
        if self.running_mean is None:
            # torch normalises with the batch's own statistics when no running stats are tracked
            dims = (0,) + tuple(range(2, x.ndim))
            mean = x.mean(dim=dims)
            var = x.var(dim=dims, correction=0)
            return F.batch_norm(x, mean, var, self.weight, self.bias, eps=self.eps)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, eps=self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Input (N, C) or (N, C, L)."""
    dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Input (N, C, H, W)."""
    dims = (4,)


class GroupNorm(Module):
    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels {num_channels} must be divisible by num_groups {num_groups}")
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        self.weight = ops.ones(num_channels, dtype=dtype, device=device) if affine else None
        self.bias = ops.zeros(num_channels, dtype=dtype, device=device) if affine else None

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
