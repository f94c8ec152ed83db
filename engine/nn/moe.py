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
    if any(getattr(w, "is_quantized", False) for ws in (w_gate, w_up, w_down) for w in ws):
        return _quantized_moe(x, weights, experts, w_gate, w_up, w_down, act)
    arrs = [[w.array for w in ws] for ws in (w_gate, w_up, w_down)]
    out = x.backend.moe(x.array, weights.array, experts.array, *arrs, act, x.dtype)
    return Tensor._wrap(out, x.backend, x.dtype)


def _quantized_moe(x, weights, experts, w_gate, w_up, w_down, act):
    """moe() over quantized experts (a GGUF Mixtral): backends/fused.py's composition in tensor ops, each expert's
    products through F.linear (the quantized GEMVs / block dots), the same order and roundings: for every expert
    in ascending order, out[t] += round(down(act(gate x) * up x) * weight[t, slot]). The routing is read on the
    host, so a step with these experts is not captured (a captured decode of quantized experts is not built)."""
    import numpy as np

    import engine
    from engine import functional as F
    chosen, w_host = experts.numpy(), weights.numpy()
    out = engine.zeros(*x.shape, dtype=x.dtype, device=x.device)
    fn = (lambda t: F.gelu(t, approximate="tanh")) if act == "gelu_tanh" else getattr(F, act)
    for e in range(len(w_gate)):
        tok, slot = np.nonzero(chosen == e)  # tokens routed to e, and where e sits in their top-k
        if not len(tok):
            continue
        idx = engine.tensor(tok.astype(np.int64), device=x.device)
        xe = x.index_select(0, idx)
        y = F.linear(fn(F.linear(xe, w_gate[e])) * F.linear(xe, w_up[e]), w_down[e])
        wt = engine.tensor(w_host[tok, slot][:, None].astype(np.float32), device=x.device)
        out[idx] = out[idx] + (y.float() * wt).to(x.dtype)  # times fp32, rounded once
    return out
