"""torch.nn.functional-named convolution, pooling and resampling ops (re-exported by engine.functional).

1-, 2- and 3-d variants share one validation path and one N-d backend kernel each. Unbatched inputs
(C, *spatial) are accepted as torch accepts them. Arguments torch takes as an int, a 1-tuple or an
N-tuple are normalised by `_ntuple`, whose errors name the argument.
"""
from __future__ import annotations

import math

from engine import dtype as D
from engine.layout import ShapeError
from engine.tensor import DeviceMismatchError, DTypeError, Tensor


def _run(x: Tensor, kernel: str, *args, dtype=None, **kw) -> Tensor:
    dt = dtype or x.dtype
    return Tensor._wrap(getattr(x.backend, kernel)(*args, dt, **kw), x.backend, dt)


def _arr(t, x: Tensor, name: str):
    if t is None:
        return None
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor or None, got {type(t).__name__}")
    if t.storage.backend is not x.storage.backend and t.device != x.device:
        raise DeviceMismatchError(f"{name} is on {t.device}, input on {x.device}")
    return t.array


def _ntuple(v, n: int, name: str, op: str, low: int = 0) -> tuple:
    """An int, a 1-sequence or an n-sequence -> n ints, each >= low."""
    t = tuple(v) if isinstance(v, (tuple, list)) else (v,)
    if len(t) == 1:
        t = t * n
    if len(t) != n or not all(isinstance(a, int) or hasattr(a, "__index__") for a in t):
        raise ValueError(f"{op}(): {name} must be an int or a sequence of 1 or {n} ints, got {v!r}")
    t = tuple(int(a) for a in t)
    if any(a < low for a in t):
        raise ValueError(f"{op}(): {name} must be {'positive' if low else 'non-negative'}, got {v!r}")
    return t


def _batched(x: Tensor, nd: int, op: str):
    """(input with a batch dim, whether one was added): torch takes (N, C, *S) or unbatched (C, *S)."""
    if x.ndim == nd + 2:
        return x, False
    if x.ndim == nd + 1:
        return x.unsqueeze(0), True
    raise ShapeError(f"{op}(): expected {nd + 1}-d or {nd + 2}-d input, got {x.shape}")


def _numeric_input(x: Tensor, op: str):
    if x.dtype is D.bool_:
        raise DTypeError(f"{op}(): bool input is not supported")


# ---- convolution --------------------------------------------------------------------------------------
def _conv_padding(padding, k, dilation, stride, nd, op):
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * nd
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"{op}(): padding='same' is not supported for strided convolutions")
            tot = [d * (kk - 1) for d, kk in zip(dilation, k)]
            return [(t // 2, t - t // 2) for t in tot]
        raise ValueError(f"{op}(): padding must be 'valid', 'same', an int or a tuple, got {padding!r}")
    return [(p, p) for p in _ntuple(padding, nd, "padding", op)]


def _conv(x, weight, bias, stride, padding, dilation, groups, nd, op, act=None):
    _numeric_input(x, op)
    if act is not None:
        from engine.backends.fused import ACTIVATIONS
        if act not in ACTIVATIONS:
            raise ValueError(f"{op}(): act must be None or one of {', '.join(ACTIVATIONS)}, got {act!r}")
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{op}(): groups must be a positive int, got {groups!r}")
    xb, unbatched = _batched(x, nd, op)
    if weight.ndim != nd + 2:
        raise ShapeError(f"{op}(): expected a {nd + 2}-d weight, got shape {weight.shape}")
    if xb.shape[1] != weight.shape[1] * groups or weight.shape[0] % groups:
        raise ShapeError(f"{op}(): input {x.shape} with {xb.shape[1]} channels does not fit weight {weight.shape} "
                         f"with groups={groups}")
    if x.dtype is not weight.dtype:
        raise DTypeError(f"{op}(): input {x.dtype.name} and weight {weight.dtype.name} must have the same dtype")
    if bias is not None and bias.dtype is not x.dtype:
        raise DTypeError(f"{op}(): bias {bias.dtype.name} and input {x.dtype.name} must have the same dtype")
    if weight.device != x.device:
        raise DeviceMismatchError(f"{op}(): weight is on {weight.device}, input on {x.device}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ShapeError(f"{op}(): bias {bias.shape} does not match {weight.shape[0]} output channels")
    stride, dilation = _ntuple(stride, nd, "stride", op, 1), _ntuple(dilation, nd, "dilation", op, 1)
    pads = _conv_padding(padding, weight.shape[2:], dilation, stride, nd, op)
    for i in range(nd):
        span = dilation[i] * (weight.shape[2 + i] - 1) + 1
        if xb.shape[2 + i] + sum(pads[i]) < span:
            raise ShapeError(f"{op}(): input {x.shape} (padded {pads}) is smaller than the dilated kernel "
                             f"{tuple(weight.shape[2:])} with dilation {dilation}")
    if act is not None:
        y = _run(xb, "conv_act", xb.array, weight.array, _arr(bias, x, "bias"), stride, pads, dilation, groups, act)
    else:
        y = _run(xb, "conv", xb.array, weight.array, _arr(bias, x, "bias"), stride, pads, dilation, groups)
    return y.squeeze(0) if unbatched else y


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    return _conv(x, weight, bias, stride, padding, dilation, groups, 1, "conv1d")


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1, act: str | None = None) -> Tensor:
    """torch's conv2d; act ("silu", "gelu_tanh", "gelu"; an engine extension) applies that activation to
    the result as one fused backend op (YOLO's Conv-BN-SiLU), rounded as the two ops would be."""
    return _conv(x, weight, bias, stride, padding, dilation, groups, 2, "conv2d", act)


def conv3d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    return _conv(x, weight, bias, stride, padding, dilation, groups, 3, "conv3d")


def _conv_transpose(x, weight, bias, stride, padding, output_padding, groups, dilation, nd, op):
    _numeric_input(x, op)
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{op}(): groups must be a positive int, got {groups!r}")
    xb, unbatched = _batched(x, nd, op)
    if weight.ndim != nd + 2 or xb.shape[1] != weight.shape[0] or weight.shape[0] % groups:
        raise ShapeError(f"{op}(): input {x.shape} with {xb.shape[1]} channels does not fit weight {weight.shape} "
                         f"with groups={groups}")
    if x.dtype is not weight.dtype:
        raise DTypeError(f"{op}(): input {x.dtype.name} and weight {weight.dtype.name} must have the same dtype")
    if weight.device != x.device:
        raise DeviceMismatchError(f"{op}(): weight is on {weight.device}, input on {x.device}")
    stride, dilation = _ntuple(stride, nd, "stride", op, 1), _ntuple(dilation, nd, "dilation", op, 1)
    padding, out_pad = _ntuple(padding, nd, "padding", op), _ntuple(output_padding, nd, "output_padding", op)
    for i in range(nd):
        if out_pad[i] >= max(stride[i], dilation[i]):
            raise ValueError(f"{op}(): output_padding {out_pad} must be smaller than stride or dilation "
                             f"({stride}, {dilation})")
        size = (xb.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (weight.shape[2 + i] - 1) + out_pad[i] + 1
        if size <= 0:
            raise ShapeError(f"{op}(): the output would have size {size} in spatial dim {i} (input {x.shape}, "
                             f"weight {weight.shape}, padding {padding})")
    y = _run(xb, "conv_transpose", xb.array, weight.array, _arr(bias, x, "bias"), stride, padding, out_pad, dilation,
             groups)
    return y.squeeze(0) if unbatched else y


def conv_transpose1d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups: int = 1, dilation=1):
    return _conv_transpose(x, weight, bias, stride, padding, output_padding, groups, dilation, 1, "conv_transpose1d")


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups: int = 1, dilation=1):
    return _conv_transpose(x, weight, bias, stride, padding, output_padding, groups, dilation, 2, "conv_transpose2d")


def conv_transpose3d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups: int = 1, dilation=1):
    return _conv_transpose(x, weight, bias, stride, padding, output_padding, groups, dilation, 3, "conv_transpose3d")


# ---- pooling --------------------------------------------------------------------------------------------
def _pool_args(x, nd, kernel_size, stride, padding, dilation, op):
    k = _ntuple(kernel_size, nd, "kernel_size", op, 1)
    s = k if stride is None or (isinstance(stride, (tuple, list)) and not stride) else _ntuple(stride, nd, "stride", op, 1)
    p = _ntuple(padding, nd, "padding", op)
    d = _ntuple(dilation, nd, "dilation", op, 1)
    if any(pp * 2 > kk for pp, kk in zip(p, k)):
        raise ValueError(f"{op}(): padding {p} must be at most half of kernel_size {k}")
    xb, unbatched = _batched(x, nd, op)
    for i in range(nd):
        if (xb.shape[2 + i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) < 0:
            raise ShapeError(f"{op}(): input {x.shape} is too small for kernel_size {k} with padding {p} and "
                             f"dilation {d}")
    return xb, unbatched, k, s, p, d


def _max_pool(x, nd, kernel_size, stride, padding, dilation, ceil_mode, return_indices, op):
    _numeric_input(x, op)
    xb, unbatched, k, s, p, d = _pool_args(x, nd, kernel_size, stride, padding, dilation, op)
    v, i = xb.backend.max_pool(xb.array, k, s, p, d, bool(ceil_mode), xb.dtype, indices=bool(return_indices))
    v = Tensor._wrap(v, xb.backend, xb.dtype)
    if not return_indices:
        return v.squeeze(0) if unbatched else v
    i = Tensor._wrap(i, xb.backend, D.int64)
    return (v.squeeze(0), i.squeeze(0)) if unbatched else (v, i)


def max_pool1d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    return _max_pool(x, 1, kernel_size, stride, padding, dilation, ceil_mode, return_indices, "max_pool1d")


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    return _max_pool(x, 2, kernel_size, stride, padding, dilation, ceil_mode, return_indices, "max_pool2d")


def max_pool3d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    return _max_pool(x, 3, kernel_size, stride, padding, dilation, ceil_mode, return_indices, "max_pool3d")


def _avg_pool(x, nd, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, op):
    _numeric_input(x, op)
    if divisor_override is not None and divisor_override == 0:
        raise ValueError(f"{op}(): divisor_override must be nonzero")
    xb, unbatched, k, s, p, _ = _pool_args(x, nd, kernel_size, stride, padding, 1, op)
    y = _run(xb, "avg_pool", xb.array, k, s, p, bool(ceil_mode), bool(count_include_pad), divisor_override)
    return y.squeeze(0) if unbatched else y


def avg_pool1d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    return _avg_pool(x, 1, kernel_size, stride, padding, ceil_mode, count_include_pad, None, "avg_pool1d")


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    return _avg_pool(x, 2, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, "avg_pool2d")


def avg_pool3d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    return _avg_pool(x, 3, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, "avg_pool3d")


def _adaptive(x, nd, output_size, op, kind, return_indices=False):
    _numeric_input(x, op)
    if kind == "avg" and not x.dtype.is_floating_point:
        raise DTypeError(f"{op}(): expected a floating input, got {x.dtype.name}")
    xb, unbatched = _batched(x, nd, op)
    o = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size,) * nd
    if len(o) == 1:
        o = o * nd
    if len(o) != nd:
        raise ValueError(f"{op}(): output_size must be an int or a sequence of {nd}, got {output_size!r}")
    o = tuple(xb.shape[2 + i] if v is None else int(v) for i, v in enumerate(o))  # None keeps that size
    if any(v < 0 for v in o) or any(n == 0 and v > 0 for n, v in zip(xb.shape[2:], o)):
        raise ShapeError(f"{op}(): output_size {o} does not fit input {x.shape}")
    v, i = xb.backend.adaptive_pool(xb.array, o, kind, xb.dtype)
    out = Tensor._wrap(v, xb.backend, xb.dtype)
    idx = Tensor._wrap(i, xb.backend, D.int64) if i is not None else None
    if unbatched:
        out, idx = out.squeeze(0), (idx.squeeze(0) if idx is not None else None)
    return (out, idx) if return_indices else out


def adaptive_avg_pool1d(x, output_size):
    return _adaptive(x, 1, output_size, "adaptive_avg_pool1d", "avg")


def adaptive_avg_pool2d(x, output_size):
    return _adaptive(x, 2, output_size, "adaptive_avg_pool2d", "avg")


def adaptive_avg_pool3d(x, output_size):
    return _adaptive(x, 3, output_size, "adaptive_avg_pool3d", "avg")


def adaptive_max_pool1d(x, output_size, return_indices=False):
    return _adaptive(x, 1, output_size, "adaptive_max_pool1d", "max", return_indices)


def adaptive_max_pool2d(x, output_size, return_indices=False):
    return _adaptive(x, 2, output_size, "adaptive_max_pool2d", "max", return_indices)


def adaptive_max_pool3d(x, output_size, return_indices=False):
    return _adaptive(x, 3, output_size, "adaptive_max_pool3d", "max", return_indices)


# ---- resampling ---------------------------------------------------------------------------------------------
MODES = {"nearest": (1, 2, 3), "nearest-exact": (1, 2, 3), "linear": (1,), "bilinear": (2,), "bicubic": (2,),
         "trilinear": (3,), "area": (1, 2, 3)}


def interpolate(x, size=None, scale_factor=None, mode: str = "nearest", align_corners=None,
                recompute_scale_factor=None, antialias: bool = False) -> Tensor:
    if mode not in MODES:
        raise ValueError(f"interpolate(): unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    nsp = x.ndim - 2
    if nsp not in MODES[mode]:
        dims = [f"{n + 2}-d" for n in MODES[mode]]
        dims = dims[0] if len(dims) == 1 else ", ".join(dims[:-1]) + " or " + dims[-1]
        raise ShapeError(f"interpolate(): expected {dims} input for mode {mode!r}, got {x.shape}")
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate(): give exactly one of size and scale_factor")
    linear = mode in ("linear", "bilinear", "bicubic", "trilinear")
    if align_corners is not None and not linear:
        raise ValueError(f"interpolate(): align_corners only applies to linear and cubic modes, not {mode!r}")
    if antialias:
        raise NotImplementedError("interpolate(antialias=True) is not implemented by the engine")
    if size is not None:
        if recompute_scale_factor:
            raise ValueError("interpolate(): recompute_scale_factor only applies with scale_factor")
        size, scales = _ntuple(size, nsp, "size", "interpolate"), (None,) * nsp
    else:
        sf = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * nsp
        if len(sf) != nsp or any(f is None or f <= 0 for f in sf):
            raise ValueError(f"interpolate(): scale_factor must be positive, one or {nsp} of them, got {scale_factor!r}")
        size = tuple(int(math.floor(float(n) * float(f))) for n, f in zip(x.shape[2:], sf))
        # recompute_scale_factor: the kernel then maps coordinates by the sizes, not the given factors
        scales = (None,) * nsp if recompute_scale_factor or mode == "area" else tuple(float(f) for f in sf)
    if any(s <= 0 for s in size) or any(n <= 0 for n in x.shape[2:]):
        raise ShapeError(f"interpolate(): input spatial sizes {x.shape[2:]} and output size {size} must be positive")
    if mode == "area":
        return _adaptive(x, nsp, size, "interpolate(mode='area')", "avg")
    _numeric_input(x, "interpolate")
    if linear and not (x.dtype.is_floating_point or x.dtype is D.uint8):
        raise DTypeError(f"interpolate(mode={mode!r}): expected a floating or uint8 input, got {x.dtype.name}")
    return _run(x, "interpolate", x.array, size, scales, mode, bool(align_corners))


def upsample(x, size=None, scale_factor=None, mode="nearest", align_corners=None):
    return interpolate(x, size, scale_factor, mode, align_corners)


def upsample_nearest(x, size=None, scale_factor=None):
    return interpolate(x, size, scale_factor, mode="nearest")


def upsample_bilinear(x, size=None, scale_factor=None):
    return interpolate(x, size, scale_factor, mode="bilinear", align_corners=True)


def pixel_shuffle(x: Tensor, upscale_factor: int) -> Tensor:
    """(*, C*r*r, H, W) -> (*, C, H*r, W*r)."""
    r = int(upscale_factor)
    if x.ndim < 3 or r < 1 or x.shape[-3] % (r * r):
        raise ShapeError(f"pixel_shuffle(): input {x.shape} needs >= 3 dims and channels divisible by "
                         f"upscale_factor^2 = {r * r}")
    *lead, c, h, w = x.shape
    y = x.reshape(*lead, c // (r * r), r, r, h, w)  # (*, C, r, r, H, W)
    n = len(lead)
    y = y.permute(*range(n), n, n + 3, n + 1, n + 4, n + 2)  # (*, C, H, r, W, r)
    return y.reshape(*lead, c // (r * r), h * r, w * r)


def pixel_unshuffle(x: Tensor, downscale_factor: int) -> Tensor:
    """(*, C, H*r, W*r) -> (*, C*r*r, H, W)."""
    r = int(downscale_factor)
    if x.ndim < 3 or r < 1 or x.shape[-2] % r or x.shape[-1] % r:
        raise ShapeError(f"pixel_unshuffle(): input {x.shape} needs >= 3 dims and H, W divisible by "
                         f"downscale_factor {r}")
    *lead, c, h, w = x.shape
    y = x.reshape(*lead, c, h // r, r, w // r, r)  # (*, C, H, r, W, r)
    n = len(lead)
    y = y.permute(*range(n), n, n + 2, n + 4, n + 1, n + 3)  # (*, C, r, r, H, W)
    return y.reshape(*lead, c * r * r, h // r, w // r)


def pad(x: Tensor, pad, mode: str = "constant", value=None) -> Tensor:
    """torch's pad order: (last_left, last_right, second_last_left, ...); negative widths crop."""
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ShapeError(f"pad(): {len(pad)} pad values do not fit input of {x.ndim} dims")
    if mode not in ("constant", "reflect", "replicate", "circular"):
        raise ValueError(f"pad(): unknown mode {mode!r}")
    if mode != "constant" and value:
        raise ValueError(f"pad(): value only applies to mode 'constant', not {mode!r}")
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
    if mode == "replicate":  # torch maps each output to the clamped input index, so crops may empty a dim first
        for d, (lo, hi) in enumerate(widths):
            if lo or hi:
                if x.shape[d] == 0 or x.shape[d] + lo + hi < 0:
                    raise ShapeError(f"pad(): replicate padding {(lo, hi)} does not fit dim {d} of size {x.shape[d]}")
                from engine.ops import arange
                idx = (arange(x.shape[d] + lo + hi, device=x.device) - lo).clamp(0, x.shape[d] - 1)
                x = x.index_select(d, idx)
        return x.clone() if not any(lo or hi for lo, hi in widths) else x
    for d, (lo, hi) in enumerate(widths):  # negative widths crop (as in torch): a narrow view first
        if lo < 0 or hi < 0:
            keep = x.shape[d] + min(lo, 0) + min(hi, 0)
            if keep < 0 or (keep == 0 and mode != "constant"):
                raise ShapeError(f"pad(): padding {(lo, hi)} leaves nothing of dim {d} of size {x.shape[d]}")
            x = x.narrow(d, -min(lo, 0), keep)
            widths[d] = (max(lo, 0), max(hi, 0))
    for d, (lo, hi) in enumerate(widths):
        if mode == "reflect" and max(lo, hi) >= x.shape[d] and (lo or hi):
            raise ShapeError(f"pad(): reflect padding {(lo, hi)} must be smaller than dim {d} of size {x.shape[d]}")
        if mode == "circular" and max(lo, hi) > x.shape[d]:
            raise ShapeError(f"pad(): circular padding {(lo, hi)} must be at most dim {d} of size {x.shape[d]}")
    return Tensor._wrap(x.backend.pad(x.array, widths, mode, 0 if value is None else value), x.backend, x.dtype)
