"""LayerNorm and RmsNorm with torch / Hugging Face parameter names."""
from __future__ import annotations

from engine import dtype as D
from engine import functional as F
from engine import ops
from engine.nn.module import Module


class LayerNorm(Module):
    """torch.nn.LayerNorm over the last dim (weight and bias optional)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True, affine: bool = True, vb=None,
                 dtype=None, device=None):
        super().__init__()
        self.dim, self.eps = dim, eps
        get = (lambda n, fill: vb.get(n, (dim,))) if vb is not None else \
            (lambda n, fill: ops.full((dim,), fill, dtype=dtype or D.float32, device=device))
        self.weight = get("weight", 1.0) if affine else None
        self.bias = get("bias", 0.0) if affine and bias else None

    def forward(self, x):
        return F.layer_norm(x, (self.dim,), self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"({self.dim},), eps={self.eps}"


class RmsNorm(Module):
    """LLaMA's RMSNorm exactly as transformers computes it: the statistic and the scaling run in fp32,
    the result is rounded back to the input dtype, and only then multiplied by the weight (in the
    weight's dtype): F.rms_norm(style="llama"), one backend kernel. Gemma differs (it multiplies by
    (1 + w) before rounding: style="gemma", see models/gemma.py)."""

    style = "llama"

    def __init__(self, dim: int, eps: float = 1e-6, vb=None, dtype=None, device=None):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = vb.get("weight", (dim,)) if vb is not None else ops.ones(dim, dtype=dtype, device=device)

    def forward(self, x):
        return F.rms_norm(x, (self.dim,), self.weight, self.eps, style=self.style)

    def extra_repr(self):
        return f"({self.dim},), eps={self.eps}"
