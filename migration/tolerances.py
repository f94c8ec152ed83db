"""One per-dtype tolerance table, starting from torch.testing.assert_close's defaults.

Used by the op parity tests, the model contract tests and `taper verify`. A comparison passes when
|actual - expected| <= atol + rtol * |expected| elementwise (the assert_close rule). For reduced
precision, verify also judges the engine's error against torch's own error versus an fp64 run
(`REDUCED_ERROR_RATIO`).
"""
from __future__ import annotations

# dtype name -> (rtol, atol): torch.testing.assert_close defaults
DEFAULTS = {
    "float64": (1e-7, 1e-7),
    "float32": (1.3e-6, 1e-5),
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "int64": (0.0, 0.0),
    "int32": (0.0, 0.0),
    "uint8": (0.0, 0.0),
    "bool": (0.0, 0.0),
}

# engine error may be at most this multiple of torch's own error against an fp64 reference
REDUCED_ERROR_RATIO = 3.0


def get(dtype, scale: float = 1.0) -> tuple[float, float]:
    """(rtol, atol) for a dtype name (or anything whose str ends with the name), times `scale`
    (ops that accumulate, like matmul or conv, take a documented scale in their parity rows)."""
    name = str(dtype).split(".")[-1]
    name = {"bool_": "bool", "half": "float16", "float": "float32", "double": "float64"}.get(name, name)
    if name not in DEFAULTS:
        raise KeyError(f"no tolerance for dtype {dtype!r}; known: {', '.join(DEFAULTS)}")
    rtol, atol = DEFAULTS[name]
    return rtol * scale, atol * scale

