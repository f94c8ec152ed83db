"""Parameter-free layers with torch's names and constructor arguments: ReLU, GELU, SiLU, Tanh,
Sigmoid, Softmax, Identity, Dropout, Flatten.

They hold no weights, so their state-dict contribution is empty; they exist so that a ported
nn.Sequential keeps its indices and so that `taps` see the same qualified names as torch hooks.
`inplace=` is accepted and ignored (the engine never writes into its input).
"""
from __future__ import annotations

from engine import functional as F
from engine.nn.module import Module


class ReLU(Module):
    def __init__(self, inplace: bool = False):
        super().__init__()

    def forward(self, x):
        return x.relu()


class GELU(Module):
    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class SiLU(Module):
    def __init__(self, inplace: bool = False):
        super().__init__()

    def forward(self, x):
        return x.silu()


class Tanh(Module):
    def forward(self, x):
        return x.tanh()


class Sigmoid(Module):
    def forward(self, x):
        return x.sigmoid()


class Softmax(Module):
    def __init__(self, dim: int | None = None):
        super().__init__()
        if dim is None:  # torch's implicit-dim choice is deprecated; make the caller say it
            raise ValueError("Softmax: give dim= explicitly (torch's implicit dim is deprecated)")
        self.dim = dim

    def forward(self, x):
        return F.softmax(x, dim=self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class Identity(Module):
    def __init__(self, *args, **kwargs):  # torch's Identity takes and ignores any arguments
        super().__init__()

    def forward(self, x):
        return x


class Dropout(Module):
    """The identity at inference (the engine has no training mode)."""

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x):
        return x

    def extra_repr(self):
        return f"p={self.p}"


class Flatten(Module):
    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return x.flatten(self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


# ---- Hugging Face config.json activation names (transformers' ACT2FN keys) ---------------------------------
def quick_gelu(x):
    """x * sigmoid(1.702 x): CLIP's GELU approximation, in transformers' order of operations."""
    return x * (x * 1.702).sigmoid()


HF_ACTIVATIONS = {
    "gelu": F.gelu,  # exact (erf) GELU: BERT's
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),  # the tanh approximation (GPT-2's name for it)
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": quick_gelu,  # CLIP (SD 1.x text encoders)
    "relu": lambda x: x.relu(),
    "silu": lambda x: x.silu(),
    "swish": lambda x: x.silu(),
}


def hf_activation(name: str):
    """The function behind a config.json `hidden_act` name; NotImplementedError names the known ones."""
    if name not in HF_ACTIVATIONS:
        raise NotImplementedError(f"hidden_act {name!r} is not supported (known: {', '.join(HF_ACTIVATIONS)})")
    return HF_ACTIVATIONS[name]
