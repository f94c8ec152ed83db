"""State-dict rules (engine.nn.rules, re-exported here: the rule classes and apply_rules) and how a
transformed state dict meets an engine model's keys (KeyReport, match_keys).

This module imports numpy only: rules run on checkpoints read straight from safetensors, without torch.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.nn.rules import (Drop, FoldWeightNorm, Fuse, Rename, RuleError, RuleResult, Split, Step,  # noqa: F401
                             Tie, Transpose, Unstack, apply_rules, rename_name)


@dataclass
class KeyReport:
    """How a transformed state dict meets the engine model's: what loads, what is left over, what is missing."""
    matched: list
    leftover: list      # in the (transformed) checkpoint, not in the engine model
    missing: list       # in the engine model, not in the checkpoint
    shape_mismatch: list  # (key, checkpoint shape, engine shape)

    @property
    def ok(self) -> bool:
        return not (self.leftover or self.missing or self.shape_mismatch)

    def format(self) -> str:
        lines = []
        lines += [f"  leftover   {k}" for k in self.leftover]
        lines += [f"  missing    {k}" for k in self.missing]
        lines += [f"  shape      {k}: checkpoint {a} vs engine {b}" for k, a, b in self.shape_mismatch]
        return "\n".join(lines)


def match_keys(state_shapes: dict, engine_shapes: dict) -> KeyReport:
    """Compare {key: shape} of a transformed checkpoint with the engine model's."""
    matched = sorted(k for k in state_shapes if k in engine_shapes
                     and tuple(state_shapes[k]) == tuple(engine_shapes[k]))
    mism = sorted((k, tuple(state_shapes[k]), tuple(engine_shapes[k])) for k in state_shapes
                  if k in engine_shapes and tuple(state_shapes[k]) != tuple(engine_shapes[k]))
    return KeyReport(matched, sorted(k for k in state_shapes if k not in engine_shapes),
                     sorted(k for k in engine_shapes if k not in state_shapes), mism)
