"""Linear and Embedding, with torch's parameter names and shapes (weight (out, in); embedding (num, dim)).

Both take their tensors from a VarBuilder when one is given (the usual way a model is built, candle
style) and otherwise start from zeros, to be filled by `load_state_dict`.
"""
from __future__ import annotations

from engine import functional as F
from engine import ops
from engine.layout import ShapeError
from engine.nn.module import Module
from engine.tensor import Tensor


def _param(vb, name, shape, dtype, device):
    return vb.get(name, shape) if vb is not None else ops.zeros(*shape, dtype=dtype, device=device)


class Linear(Module):
    """y = x @ W.T (+ b). W keeps torch's (out_features, in_features) layout; W.T is a strided view,
    so BLAS reads the stored rows directly and nothing is transposed in memory; the backend runs a
    GEMV kernel when there are only a few rows (decode)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, vb=None, dtype=None, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = _param(vb, "weight", (out_features, in_features), dtype, device)
        self.bias = _param(vb, "bias", (out_features,), dtype, device) if bias else None

    @classmethod
    def from_weight(cls, weight, bias=None) -> "Linear":
        """A Linear over existing tensors (tied embeddings share the embedding matrix this way)."""
        m = cls.__new__(cls)
        Module.__init__(m)
        m.out_features, m.in_features = weight.shape
        m.weight, m.bias = weight, bias
        return m

    def forward(self, x):
        if x.shape[-1] != self.in_features:
            raise ShapeError(f"Linear({self.in_features}, {self.out_features}): input of shape {x.shape} "
                             f"has last dim {x.shape[-1]}")
        return F.linear(x, self.weight, self.bias)  # one GEMM over all rows (a GEMV for a few)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def input_major(module: Module, gemv: bool = False) -> Module:
    """Hold every float32 Linear weight under `module` input-major where the backend reads that layout faster
    (its LINEAR_INPUT_MAJOR: the numpy backend): a C-contiguous (in, out) copy seen through its transpose, so
    the weight keeps its (out, in) shape, values and state-dict name, and F.linear's `x @ W.T` reads the
    copy's rows. A weight loaded later (load_state_dict) takes the layout it comes with. Returns module.
    gemv: for modules that run one row at a time (a decode step), only weights with out_features >=
    in_features: OpenBLAS's one-row product (one thread, weights from memory as in a decode step, 2-core
    AMD EPYC box) read an input-major 51865 x 384 weight in 3.6-4.8 ms against 7.0-8.1 ms stored (out, in),
    1536 x 384 in 118-162 us against 300-355 us, 384 x 384 in 38-48 against 64-72 us, but 384 x 1536 in
    255-345 us against 193-205 us."""
    for m in module.modules():
        w = m.weight if isinstance(m, Linear) else None
        if (w is not None and type(w) is Tensor and w.dtype.name == "float32" and w.ndim == 2
                and getattr(w.storage.backend, "LINEAR_INPUT_MAJOR", False) and w.is_contiguous()
                and (not gemv or w.shape[0] >= w.shape[1])):
            m.weight = w.t().contiguous().t()
    return module


class Embedding(Module):
    """Row lookup: ids (...) -> (..., embedding_dim)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, vb=None, dtype=None, device=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = _param(vb, "weight", (num_embeddings, embedding_dim), dtype, device)

    def forward(self, ids):
        flat = ids.reshape(-1)
        return self.weight.index_select(0, flat).reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"
