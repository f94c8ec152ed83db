"""Quantized weights: matrices kept in ggml's block formats (the GGUF ones), dequantised only a block
tile at a time inside the kernels that read them.

    w = QuantWeight(raw_bytes_tensor, "q4_1", (out_features, in_features))
    y = F.linear(x, w)          # the backend's qlinear: dequantises a bounded tile of rows at a time
    rows = w.index_select(0, ids)   # embedding rows, dequantised

A row of the matrix is `in_features / block_size` consecutive blocks of `type_size` bytes (blocks
never straddle rows), so the raw bytes are a (out_features, row_bytes) uint8 tensor and a row
permutation (llama.cpp's rotary layout of q/k) is a permutation of byte rows. The block layouts
and the dequantisation arithmetic are ggml's (ggml-quants.c, and gguf-py's numpy port, which the
tests compare against bit for bit); the kernels live in engine/backends/numpy_quant.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from engine import dtype as D
from engine.layout import ShapeError
from engine.tensor import DTypeError, Tensor


@dataclass(frozen=True)
class QType:
    name: str  # lower case, as `taper convert --quantize` spells it
    ggml_type: int  # GGMLQuantizationType's value (the number stored in a GGUF tensor header)
    block_size: int  # weights per block
    type_size: int  # bytes per block


# (ggml's GGML_QUANT_SIZES for the formats the engine computes with; ggml_type is its enum value)
QTYPES = {q.name: q for q in (
    QType("q4_0", 2, 32, 18),     # f16 d, 16 bytes of 4-bit q:                   w = d * (q - 8)
    QType("q4_1", 3, 32, 20),     # f16 d, f16 m, 16 bytes of 4-bit q:            w = d * q + m
    QType("q8_0", 8, 32, 34),     # f16 d, 32 int8 q:                             w = q * d
    QType("q4_k", 12, 256, 144),  # f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of 4-bit q
    QType("q6_k", 14, 256, 210),  # 128 bytes low 4 bits, 64 bytes high 2 bits, 16 int8 scales, f16 d
)}
BY_GGML_TYPE = {q.ggml_type: q for q in QTYPES.values()}


def qtype(name) -> QType:
    """A QType from its name (any case) or itself; ValueError naming the known formats."""
    if isinstance(name, QType):
        return name
    q = QTYPES.get(str(name).lower())
    if q is None:
        raise ValueError(f"unknown quantisation type {name!r}; known: {', '.join(QTYPES)}")
    return q


def row_bytes(q: QType, cols: int) -> int:
    """Bytes of one row of `cols` weights; ShapeError when cols is not a whole number of blocks."""
    if cols % q.block_size:
        raise ShapeError(f"{q.name}: a row of {cols} weights is not a whole number of {q.block_size}-weight blocks")
    return cols // q.block_size * q.type_size


class QuantWeight:
    """A (out_features, in_features) weight whose storage is ggml blocks: `data` is a uint8 Tensor of
    shape (out_features, row_bytes). `dtype` is the dtype it computes in and returns (float32 unless
    cast): F.linear checks it against the input as it checks a float weight's. A Module registers it
    as a parameter like a Tensor; its nbytes are the packed bytes."""

    is_quantized = True
    ndim = 2

    def __init__(self, data: Tensor, qtype_, shape, dtype=D.float32):
        q = qtype(qtype_)
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2:
            raise ShapeError(f"a {q.name} weight must be 2-d (out_features, in_features), got shape {shape}")
        if not isinstance(data, Tensor) or data.dtype is not D.uint8:
            got = data.dtype.name if isinstance(data, Tensor) else type(data).__name__
            raise DTypeError(f"{q.name} weight bytes must be a uint8 Tensor, got {got}")
        want = (shape[0], row_bytes(q, shape[1]))
        if tuple(data.shape) != want:
            raise ShapeError(f"{q.name} weight of shape {shape} needs bytes of shape {want}, got {tuple(data.shape)}")
        dt = D.get(dtype)
        if not dt.is_floating_point:
            raise DTypeError(f"a quantized weight computes in a floating dtype, not {dt.name}")
        self.data, self.qtype, self.shape, self.dtype = data.contiguous(), q, shape, dt

    # ---- what code reading a weight asks of it ----------------------------------------------------------
    @property
    def device(self):
        return self.data.device

    @property
    def backend(self):
        return self.data.backend

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def numel(self) -> int:
        return math.prod(self.shape)

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def is_floating_point(self) -> bool:
        return True

    def to(self, device=None, dtype=None) -> "QuantWeight":
        """Move the bytes (they stay packed); dtype changes the dtype it computes in."""
        data = self.data.to(device=device) if device is not None else self.data
        return QuantWeight(data, self.qtype, self.shape, dtype if dtype is not None else self.dtype)

    # ---- reading it -----------------------------------------------------------------------------------------
    def dequantize(self) -> Tensor:
        """The whole matrix as a float Tensor (explicit: tests, export); kernels never do this."""
        b = self.backend
        return Tensor._wrap(b.dequantize(self.data.array, self.qtype.name, self.shape[1], self.dtype), b, self.dtype)

    def index_select(self, dim: int, index: Tensor) -> Tensor:
        """Rows `index` dequantised, (len(index), in_features): an embedding lookup."""
        if dim not in (0, -2):
            raise ShapeError(f"index_select on a {self.qtype.name} weight selects rows (dim 0), not dim {dim}")
        if index.ndim != 1 or index.dtype.category != 1 or index.dtype is D.bool_:
            raise DTypeError(f"index_select(): index must be a 1-d integer tensor, got {index.dtype.name} "
                             f"of shape {index.shape}")
        b = self.backend
        lo, hi = b.index_bounds(index.array, self.shape[0])  # (0, 0) inside a capture: no host read
        if lo < 0 or hi >= self.shape[0]:
            raise IndexError(f"index_select(): index out of range for {self.shape[0]} rows of a {self.qtype.name} "
                             f"weight (got {lo}..{hi})")
        out = b.qtake(self.data.array, index.array, self.qtype.name, self.shape[1], self.dtype)
        return Tensor._wrap(out, b, self.dtype)

    def __repr__(self):
        return (f"QuantWeight({self.qtype.name}, shape={self.shape}, dtype={self.dtype.name}, "
                f"device={self.device}, {self.nbytes:,} bytes)")


def keep_decode_layouts(module) -> int:
    """Make the CPU block-dot path's decode layout (numpy_quant: block-major quants, float32 scales) of each
    quantized Linear weight of `module` that computes in float32 now, rather than inside the first decode step
    (or a prompt of up to DOT_ROWS tokens) that multiplies it, so timed steps are steady ones; a weight on
    another device, or with QSCALES off, keeps none. Returns the bytes kept for those weights."""
    from engine.nn.linear import Linear
    kept = {}
    for m in module.modules():
        w = getattr(m, "weight", None) if isinstance(m, Linear) else None
        if getattr(w, "is_quantized", False) and D.compute_dtype(w.dtype) == D.float32.np_dtype \
                and id(w.data.array) not in kept:
            kept[id(w.data.array)] = w.backend.keep_layout(w.data.array, w.qtype.name, w.shape[1])
    return sum(kept.values())


def quantize_module(module, qtype_: str, n_layers: int | None = None) -> dict:
    """Quantise a llama-style model in memory, as `taper convert --quantize` would write it and loading
    the file would give: every 2-d weight (HF names) becomes a QuantWeight of the format
    engine.io.gguf.mix_qtype picks for it (q4_k_m mixes Q4_K and Q6_K), quantised on the weight's own
    device by the converter's quantiser (engine.io.gguf.quantize_matrix: a GPU model quantises on the
    GPU), one weight at a time so the float copy of each is dropped as it goes. A tied weight is
    quantised once (its first name decides the format). Returns {name: format} of what changed."""
    import numpy as np
    from engine import ops
    from engine.io.gguf import mix_qtype, quantize_matrix
    cfg = getattr(module, "config", None)
    n_layers = n_layers if n_layers is not None else int(getattr(cfg, "num_hidden_layers", 0) or 0)
    done: dict = {}  # id(float weight) -> its QuantWeight
    out = {}
    for name, p in list(module.named_parameters()):
        if not isinstance(p, Tensor) or p.ndim != 2:
            continue
        q = done.get(id(p))
        if q is None:
            fmt = mix_qtype(name, tuple(p.shape), qtype_ if qtype_ == "q4_k_m" else qtype(qtype_).name, n_layers)
            if fmt is None:
                continue
            raw = quantize_matrix(p.contiguous().array, fmt)  # numpy, or cupy (its allocator is the engine's pool)
            data = ops.from_numpy(raw) if isinstance(raw, np.ndarray) else Tensor._wrap(raw, p.backend, D.uint8)
            q = done[id(p)] = QuantWeight(data, fmt, p.shape, p.dtype)
        *path, leaf = name.split(".")
        m = module
        for part in path:
            m = m._modules[part]
        setattr(m, leaf, q)
        out[name] = q.qtype.name
    return out
