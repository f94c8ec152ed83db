"""torch.nn.functional-named losses and distances (re-exported by engine.functional).

Each is a composition of engine ops written in the order torch's own implementation computes it
(quoted per function where it matters), so float32 results agree to rounding.
"""
from __future__ import annotations

from engine import dtype as D
from engine import tensor_index as I
from engine import tensor_ops as T
from engine.layout import ShapeError, broadcast_shapes, norm_dim
from engine.tensor import DTypeError, Tensor

REDUCTIONS = ("none", "mean", "sum")


def _reduction(reduction, size_average=None, reduce=None, allowed=REDUCTIONS) -> str:
    """torch's legacy size_average / reduce flags, or the reduction string."""
    if size_average is not None or reduce is not None:
        size_average = True if size_average is None else size_average
        reduce = True if reduce is None else reduce
        return "mean" if size_average and reduce else ("sum" if reduce else "none")
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, allowed))}, got {reduction!r}")
    return reduction


def _apply(loss: Tensor, reduction: str) -> Tensor:
    return loss if reduction == "none" else (loss.sum() if reduction == "sum" else loss.mean())


def _float_pair(a: Tensor, b: Tensor, op: str):
    if not a.dtype.is_floating_point:
        raise DTypeError(f"{op}(): expected a floating input, got {a.dtype.name}")
    broadcast_shapes(a.shape, b.shape)


def _pointwise_loss(op: str, input: Tensor, target: Tensor, param: float) -> Tensor:
    """An elementwise loss term in one kernel (16-bit floats computed in float32, rounded once)."""
    from engine.tensor_more import _pointwise
    return _pointwise(op, (input, target), (param,), D.result_type(input, target), f"{op}_loss()")


# ---- regression losses ------------------------------------------------------------------------------
def mse_loss(input: Tensor, target: Tensor, size_average=None, reduce=None, reduction: str = "mean", weight=None):
    _float_pair(input, target, "mse_loss")
    d = input - target
    loss = d * d if weight is None else weight * d * d
    return _apply(loss, _reduction(reduction, size_average, reduce))


def l1_loss(input: Tensor, target: Tensor, size_average=None, reduce=None, reduction: str = "mean", weight=None):
    _float_pair(input, target, "l1_loss")
    loss = (input - target).abs()
    return _apply(loss if weight is None else weight * loss, _reduction(reduction, size_average, reduce))


def smooth_l1_loss(input: Tensor, target: Tensor, size_average=None, reduce=None, reduction: str = "mean",
                   beta: float = 1.0):
    _float_pair(input, target, "smooth_l1_loss")
    if beta < 0:
        raise ValueError(f"smooth_l1_loss(): beta must be non-negative, got {beta}")
    loss = _pointwise_loss("smooth_l1", input, target, beta)
    return _apply(loss, _reduction(reduction, size_average, reduce))


def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0, weight=None):
    _float_pair(input, target, "huber_loss")
    if delta <= 0:
        raise ValueError(f"huber_loss(): delta must be positive, got {delta}")
    loss = _pointwise_loss("huber", input, target, delta)
    return _apply(loss if weight is None else weight * loss, _reduction(reduction))


def kl_div(input: Tensor, target: Tensor, size_average=None, reduce=None, reduction: str = "mean",
           log_target: bool = False):
    """input holds log-probabilities; target probabilities (or log-probabilities with log_target).
    'batchmean' divides the sum by the batch size (the KL divergence); 'mean' by every element."""
    _float_pair(input, target, "kl_div")
    red = _reduction(reduction, size_average, reduce, REDUCTIONS + ("batchmean",))
    loss = target.exp() * (target - input) if log_target else target.xlogy(target) - target * input
    if red == "batchmean":
        total = loss.sum()
        return total / input.shape[0] if input.ndim else total
    return _apply(loss, red)


# ---- classification losses ------------------------------------------------------------------------------
def _class_dim(input: Tensor, target: Tensor, op: str) -> int:
    cdim = 0 if input.ndim == 1 else 1
    if input.ndim == 0:
        raise ShapeError(f"{op}(): input must have a class dim, got a 0-d tensor")
    want = input.shape[:cdim] + input.shape[cdim + 1:]
    if target.shape != want:
        raise ShapeError(f"{op}(): target shape {target.shape} does not fit input {input.shape} (expected {want})")
    return cdim


def nll_loss(input: Tensor, target: Tensor, weight=None, size_average=None, ignore_index: int = -100,
             reduce=None, reduction: str = "mean"):
    """-weight[t] * input[t] per element, ignore_index contributing nothing; 'mean' divides by the
    summed weights of the kept targets (nan when every target is ignored, as torch)."""
    red = _reduction(reduction, size_average, reduce)
    if target.dtype.category != 1 or target.dtype is D.bool_:
        raise DTypeError(f"nll_loss(): target must hold class indices (int64), got {target.dtype.name}")
    cdim = _class_dim(input, target, "nll_loss")
    n_classes = input.shape[cdim]
    if weight is not None and weight.shape != (n_classes,):
        raise ShapeError(f"nll_loss(): weight {weight.shape} must have one entry per class ({n_classes})")
    keep = target != ignore_index
    t = T.where(keep, target, 0)
    picked = I.gather(input, cdim, t.unsqueeze(cdim)).squeeze(cdim)
    w = (I.index_select(weight, 0, t.reshape(-1)).reshape(t.shape) if weight is not None
         else T.where(keep, 1.0, 0.0).to(input.dtype))
    w = T.where(keep, w, 0.0).to(input.dtype)
    loss = -(picked * w)
    if red == "none":
        return loss
    return loss.sum() if red == "sum" else loss.sum() / w.sum()


def cross_entropy(input: Tensor, target: Tensor, weight=None, size_average=None, ignore_index: int = -100,
                  reduce=None, reduction: str = "mean", label_smoothing: float = 0.0):
    """log_softmax over the class dim, then nll_loss (class-index targets) or a dot with target
    probabilities; label_smoothing mixes in the uniform distribution (torch's formulas)."""
    from engine.functional import log_softmax
    red = _reduction(reduction, size_average, reduce)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy(): label_smoothing must be in [0, 1], got {label_smoothing}")
    if not input.dtype.is_floating_point:
        raise DTypeError(f"cross_entropy(): expected a floating input, got {input.dtype.name}")
    cdim = 0 if input.ndim == 1 else 1
    n_classes = input.shape[cdim]
    logp = log_softmax(input, cdim)
    wshape = [1] * input.ndim
    wshape[cdim] = n_classes
    if target.dtype.is_floating_point:  # class probabilities
        if target.shape != input.shape:
            raise ShapeError(f"cross_entropy(): probability target {target.shape} must match input {input.shape}")
        if label_smoothing > 0:
            target = target * (1 - label_smoothing) + label_smoothing / n_classes
        prod = logp * target if weight is None else logp * target * weight.reshape(wshape)
        if red == "none":
            return -prod.sum(cdim)
        if red == "sum":
            return -prod.sum()
        return -prod.sum() / (input.numel() // n_classes) if input.numel() else -prod.sum() * float("nan")
    nll = nll_loss(logp, target, weight, ignore_index=ignore_index, reduction=red)
    if label_smoothing == 0:
        return nll
    keep = target != ignore_index
    smooth = -(logp if weight is None else logp * weight.reshape(wshape)).sum(cdim)
    smooth = smooth.masked_fill(~keep, 0.0)
    if red == "mean":
        if weight is not None:
            smooth = smooth.sum() / I.index_select(weight, 0, target[keep]).sum()
        else:
            smooth = smooth.sum() / keep.sum()
    elif red == "sum":
        smooth = smooth.sum()
    return nll * (1 - label_smoothing) + smooth * (label_smoothing / n_classes)


# ---- distances -----------------------------------------------------------------------------------------------
def normalize(input: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12, out=None) -> Tensor:
    """input / max(norm(input, p, dim), eps)."""
    if out is not None:
        raise TypeError("normalize(): out= is not supported; use the return value")
    denom = input.norm(p, dim, keepdim=True).clamp(min=eps)
    return input / denom.expand(input.shape)


def cosine_similarity(x1: Tensor, x2: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """torch's ATen order: each input divided by its clamped norm, then the product summed."""
    shape = broadcast_shapes(x1.shape, x2.shape)
    a, b = x1.expand(shape), x2.expand(shape)
    if not a.dtype.is_floating_point:
        a, b = a.float(), b.float()
    d = norm_dim(dim, len(shape))
    na = a.norm(2, d, keepdim=True).clamp(min=eps)
    nb = b.norm(2, d, keepdim=True).clamp(min=eps)
    return ((a / na) * (b / nb)).sum(d)


def pairwise_distance(x1: Tensor, x2: Tensor, p: float = 2.0, eps: float = 1e-6, keepdim: bool = False) -> Tensor:
    out_nd = max(x1.ndim, x2.ndim)
    return (x1 - x2 + eps).norm(p, -1 if out_nd else None, keepdim=keepdim)


def cdist(x1: Tensor, x2: Tensor, p: float = 2.0, compute_mode: str = "use_mm_for_euclid_dist_if_necessary"):
    """(..., P, M) and (..., R, M) -> (..., P, R) p-norm distances. For p=2 torch switches to a matmul
    form when P or R exceeds 25 (or always / never, by compute_mode); the engine follows it."""
    modes = ("use_mm_for_euclid_dist_if_necessary", "use_mm_for_euclid_dist", "donot_use_mm_for_euclid_dist")
    if compute_mode not in modes:
        raise ValueError(f"cdist(): compute_mode must be one of {modes}, got {compute_mode!r}")
    if p < 0:
        raise ValueError(f"cdist(): p must be non-negative, got {p}")
    if x1.ndim < 2 or x2.ndim < 2 or x1.shape[-1] != x2.shape[-1]:
        raise ShapeError(f"cdist(): inputs (..., P, M) and (..., R, M) needed, got {x1.shape} and {x2.shape}")
    if not x1.dtype.is_floating_point or x1.dtype is not x2.dtype:
        raise DTypeError(f"cdist(): both inputs must share a floating dtype, got {x1.dtype.name} and {x2.dtype.name}")
    batch = broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
    a, b = x1.expand(batch + x1.shape[-2:]), x2.expand(batch + x2.shape[-2:])
    P, R = a.shape[-2], b.shape[-2]
    use_mm = p == 2 and (compute_mode == "use_mm_for_euclid_dist" or
                         (compute_mode == modes[0] and (P > 25 or R > 25)))
    if use_mm:  # torch's _euclidean_dist
        from engine.ops import cat, ones_like
        an, bn = (a * a).sum(-1, keepdim=True), (b * b).sum(-1, keepdim=True)
        a_ = cat([a * -2, an, ones_like(an)], -1)
        b_ = cat([b, ones_like(bn), bn], -1)
        return T.matmul(a_, b_.mT).clamp(min=0).sqrt()
    diff = a.unsqueeze(-2) - b.unsqueeze(-3)  # (..., P, R, M)
    if diff.shape[-1] == 0:
        return diff.sum(-1)
    return diff.norm(p, -1)
