"""What each implementation is to the reports: the candidate, the alternatives, the raw baselines.

Results name implementations by their ``impl`` parameter (engine, torch, torch-compile, onnxruntime,
numpy, cupy, or any other an impls/ adapter adds). The reports never import impls/; this table is
the only place that says which values are not alternatives a user would pick.
"""
from __future__ import annotations

CANDIDATE = "engine"  # the implementation under test: compared against the others, and gated
# Raw-array baselines: shown beside the others, never "the best other" implementation.
RAW_BASELINES = ("numpy", "cupy")


def alternatives(impls, candidate: str = CANDIDATE) -> list[str]:
    """The implementations that count as "the best other": not the candidate, not a raw baseline."""
    return [i for i in impls if i != candidate and i not in RAW_BASELINES]


def ordered(impls, candidate: str = CANDIDATE) -> list[str]:
    """The candidate first, then the alternatives, then the raw baselines (each in given order)."""
    impls = list(dict.fromkeys(impls))
    head = [candidate] if candidate in impls else []
    return head + alternatives(impls, candidate) + [i for i in impls if i in RAW_BASELINES
                                                    and i != candidate]
