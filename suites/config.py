"""What every suites module reads: the TAPER_BENCH_QUICK switch (read at import), the parameter
lists, the benchmarked dtypes and the guarded torch import. suites.common re-exports all of it."""
from __future__ import annotations

import os

import ml_dtypes
import numpy as np

try:  # guarded: the suites run (engine rows only) without torch
    import torch
except ImportError:  # pragma: no cover - torch is installed wherever the tests run
    torch = None


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


QUICK = _flag("TAPER_BENCH_QUICK")

IMPLS = ["engine", "torch"]  # the contenders; reports pair these two
RAW_IMPLS = ["numpy", "cupy"]  # the arrays under the engine, for its overhead
ALL_IMPLS = IMPLS + RAW_IMPLS
DEVICES = ["cpu", "cuda"]
DTYPES = ["float32", "float16", "bfloat16"]
NP_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
             "bfloat16": np.dtype(ml_dtypes.bfloat16)}
MIB = 1 << 20


def sizes(full, quick):
    """The full list, or the tiny one under TAPER_BENCH_QUICK=1."""
    return list(quick if QUICK else full)
