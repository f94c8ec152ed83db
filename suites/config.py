"""What every suites module reads: the TAPER_BENCH_QUICK switch (read at import), the parameter
lists, the benchmarked dtypes and the guarded torch import. suites.common re-exports all of it."""
from __future__ import annotations

import os

import impls
from impls.base import NP_DTYPES  # noqa: F401  (the one name -> numpy dtype table of the suites)

try:  # guarded: the suites run (engine rows only) without torch
    import torch
except ImportError:  # pragma: no cover - torch is installed wherever the tests run
    torch = None


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


QUICK = _flag("TAPER_BENCH_QUICK")

IMPLS = list(impls.MODEL_IMPLS)  # the candidate and the alternatives a user would pick
RAW_IMPLS = list(impls.RAW)  # the arrays under the engine, for its overhead
ALL_IMPLS = IMPLS + RAW_IMPLS
DEVICES = list(impls.DEVICES)
DTYPES = list(impls.DTYPES)
MIB = 1 << 20


def sizes(full, quick):
    """The full list, or the tiny one under TAPER_BENCH_QUICK=1."""
    return list(quick if QUICK else full)
