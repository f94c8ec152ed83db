"""Mixture of experts: each token through the experts its router picked, as one backend op
(backends/fused.py has the composition; the cupy backend routes on the device, so a decode step with
experts can be captured)."""
from __future__ import annotations

from engine import dtype as D
from engine.backends.fused import ACTIVATIONS
from engine.layout import ShapeError
from engine.tensor import DTypeError, Tensor


def moe(x: Tensor, weights: Tensor, experts: Tensor, w_gate: list, w_up: list, w_down: list,
        act: str = "silu") -> Tensor:
    """x (T, H); weights (T, k) float32 (each row sums to 1); experts (T, k) int64 expert ids;
    w_gate/w_up [E] of (I, H), w_down [E] of (H, I) -> (T, H): sum over the k slots of
    weight * down(act(gate x) * up x), accumulated in ascending expert order."""
    if x.ndim != 2 or weights.shape != experts.shape or weights.ndim != 2 or weights.shape[0] != x.shape[0]:
        raise ShapeError(f"moe(): x {x.shape} (T, H), weights {weights.shape} and experts {experts.shape} (T, k)")
    if not (len(w_gate) == len(w_up) == len(w_down)) or not w_gate:
        raise ShapeError(f"moe(): {len(w_gate)} gate, {len(w_up)} up and {len(w_down)} down weights")
    if weights.dtype is not D.float32 or experts.dtype is not D.int64:
        raise DTypeError(f"moe(): weights must be float32 and experts int64, got {weights.dtype.name}, "
                         f"{experts.dtype.name}")
    if act not in ACTIVATIONS:
        raise ValueError(f"moe(): act must be one of {ACTIVATIONS}, got {act!r}")
    arrs = [[w.array for w in ws] for ws in (w_gate, w_up, w_down)]
    out = x.backend.moe(x.array, weights.array, experts.array, *arrs, act, x.dtype)
    return Tensor._wrap(out, x.backend, x.dtype)
