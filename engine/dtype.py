"""Engine dtypes and torch's type-promotion rules, written as data.

numpy has no bfloat16; ml_dtypes provides one that numpy can store and cast. Reduced-precision
floats (float16, bfloat16) are computed in float32 and rounded once, which is also what torch does
on the CPU for most ops.
"""
from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np


@dataclass(frozen=True, eq=False)
class DType:
    """One engine dtype. Each exists once (the table below): compared and hashed by identity, and
    copies or unpickled values come back as the same object. The derived attributes (itemsize,
    is_floating_point, is_reduced, compute) are plain attributes, set once: ops read them per call."""

    name: str
    np_dtype: np.dtype
    category: int  # 0 bool, 1 integer, 2 floating: promotion only ever moves up

    def __post_init__(self):
        reduced = self.name in ("float16", "bfloat16")
        for k, v in (("itemsize", self.np_dtype.itemsize), ("is_floating_point", self.category == 2),
                     ("is_reduced", reduced),  # the 16-bit floats that compute in float32
                     ("compute", np.dtype(np.float32) if reduced else self.np_dtype)):  # see compute_dtype
            object.__setattr__(self, k, v)

    def __reduce__(self):
        return get, (self.name,)

    def __repr__(self) -> str:
        return f"engine.{self.name}"


bool_ = DType("bool", np.dtype(np.bool_), 0)
uint8 = DType("uint8", np.dtype(np.uint8), 1)
int32 = DType("int32", np.dtype(np.int32), 1)
int64 = DType("int64", np.dtype(np.int64), 1)
float16 = DType("float16", np.dtype(np.float16), 2)
bfloat16 = DType("bfloat16", np.dtype(ml_dtypes.bfloat16), 2)
float32 = DType("float32", np.dtype(np.float32), 2)
float64 = DType("float64", np.dtype(np.float64), 2)

ALL = (bool_, uint8, int32, int64, float16, bfloat16, float32, float64)
FLOATS = (float16, bfloat16, float32, float64)
_BY_NAME = {d.name: d for d in ALL}
_BY_NAME.update({"bool": bool_, "half": float16, "float": float32, "double": float64, "long": int64,
                 "int": int32, "bf16": bfloat16, "fp16": float16, "fp32": float32, "fp64": float64})
_BY_NP = {d.np_dtype: d for d in ALL}

# torch.promote_types for every pair, as data. Rows and columns follow the order of ALL.
_ORDER = ("bool", "uint8", "int32", "int64", "float16", "bfloat16", "float32", "float64")
_PROMOTE_ROWS = """
bool      bool     uint8    int32    int64    float16  bfloat16 float32  float64
uint8     uint8    uint8    int32    int64    float16  bfloat16 float32  float64
int32     int32    int32    int32    int64    float16  bfloat16 float32  float64
int64     int64    int64    int64    int64    float16  bfloat16 float32  float64
float16   float16  float16  float16  float16  float16  float32  float32  float64
bfloat16  bfloat16 bfloat16 bfloat16 bfloat16 float32  bfloat16 float32  float64
float32   float32  float32  float32  float32  float32  float32  float32  float64
float64   float64  float64  float64  float64  float64  float64  float64  float64
"""
PROMOTION = {}
for _row in _PROMOTE_ROWS.strip().splitlines():
    _a, *_cells = _row.split()
    for _b, _c in zip(_ORDER, _cells):
        PROMOTION[(_a, _b)] = _c

# The dtype a Python scalar takes when it is the highest category present.
DEFAULT_FOR_CATEGORY = {0: bool_, 1: int64, 2: float32}


def get(d) -> DType:
    """Accept a DType, a name ("float16", "bf16"), a numpy dtype, or an object with a torch-like
    `.dtype`-style name such as "torch.float16"."""
    if isinstance(d, DType):
        return d
    if isinstance(d, str):
        key = d.removeprefix("torch.").removeprefix("engine.")
        if key in _BY_NAME:
            return _BY_NAME[key]
        raise TypeError(f"unknown dtype {d!r}; supported: {', '.join(x.name for x in ALL)}")
    if d is bool:
        return bool_
    if d is int:
        return int64
    if d is float:
        return float32
    try:
        nd = np.dtype(d)
    except TypeError:
        nd = None
    if nd is not None and nd in _BY_NP:
        return _BY_NP[nd]
    raise TypeError(f"unsupported dtype {d!r}; supported: {', '.join(x.name for x in ALL)}")


# PROMOTION keyed by the DType objects themselves (identity hashing: one dict lookup per op)
_PROMOTE = {(_BY_NAME[a], _BY_NAME[b]): _BY_NAME[c] for (a, b), c in PROMOTION.items()}


def promote_types(a, b) -> DType:
    r = _PROMOTE.get((a, b))
    return r if r is not None else _PROMOTE[(get(a), get(b))]


def scalar_category(x) -> int:
    if isinstance(x, (bool, np.bool_)):
        return 0
    if isinstance(x, (int, np.integer)):
        return 1
    if isinstance(x, (float, np.floating)):
        return 2
    raise TypeError(f"expected a Tensor or a Python number, got {type(x).__name__}")


def result_type(*operands) -> DType:
    """torch.result_type over Tensors and Python scalars.

    torch ranks operands in three groups: tensors with dims, zero-dim tensors, Python scalars. A lower
    group only changes the result when its category (bool < int < float) is higher; zero-dim tensors
    then bring their own dtype, scalars the default dtype of their category.
    """
    if len(operands) == 2:  # the common cases of a binary op, without the general walk below
        a, b = operands
        da, db = getattr(a, "dtype", None), getattr(b, "dtype", None)
        if type(da) is DType and a.ndim:
            if db is da and b.ndim:
                return da
            if type(b) is float and da.category == 2:
                return da
    dims, zero, scalars = None, None, None
    for x in operands:
        dt = getattr(x, "dtype", None)
        if isinstance(dt, DType):
            if x.ndim > 0:
                dims = dt if dims is None else promote_types(dims, dt)
            else:
                zero = dt if zero is None else promote_types(zero, dt)
        else:
            c = scalar_category(x)
            scalars = c if scalars is None else max(scalars, c)
    out = dims
    if zero is not None and (out is None or zero.category > out.category):
        out = zero
    if scalars is not None and (out is None or scalars > out.category):
        out = DEFAULT_FOR_CATEGORY[scalars]
    if out is None:
        raise TypeError("result_type needs at least one operand")
    return out


def to_float(d: DType) -> DType:
    """The floating dtype an op like mean/sqrt returns for an input of dtype d."""
    return d if d.is_floating_point else float32


def compute_dtype(d: DType) -> np.dtype:
    """numpy dtype that arithmetic runs in: reduced floats compute in float32."""
    return d.compute


def min_value(d) -> float:
    """The most negative finite value of a float dtype: the additive mask value, as transformers uses
    (finite, so a fully masked row gives a uniform softmax rather than NaN)."""
    dt = get(d)
    return float((ml_dtypes.finfo if dt.is_reduced else np.finfo)(dt.np_dtype).min)
