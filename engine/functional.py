"""torch.nn.functional-named ops. Validation lives here; the math lives in the backend kernels."""
from __future__ import annotations

import math

from engine import dtype as D
from engine.layout import ShapeError, norm_dim
from engine.tensor import DeviceMismatchError, DTypeError, Tensor


def _run(x: Tensor, kernel: str, *args, dtype=None, **kw) -> Tensor:
    dt = dtype or x.dtype
    return Tensor._wrap(getattr(x.backend, kernel)(*args, dt, **kw), x.backend, dt)


def _arr(t, x: Tensor, name: str):
    """The backend array of an optional parameter tensor, checked against the input's device."""
    if t is None:
        return None
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor or None, got {type(t).__name__}")
    if t.device != x.device:
        raise DeviceMismatchError(f"{name} is on {t.device}, input on {x.device}")
    return t.array


def _float_input(x: Tensor, op: str):
    if not x.dtype.is_floating_point:
        raise DTypeError(f"{op}(): expected a floating input, got {x.dtype.name}")


def _pair(v, n=2, name="argument"):
    t = tuple(v) if isinstance(v, (tuple, list)) else (v,) * n
    if len(t) != n:
        raise ValueError(f"{name} must be an int or a tuple of {n}, got {v!r}")
    return tuple(int(a) for a in t)


# ---- activations ------------------------------------------------------------------------------------
def relu(x):
    return x.relu()


def gelu(x, approximate: str = "none"):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu(): approximate must be 'none' or 'tanh', got {approximate!r}")
    return x.gelu() if approximate == "none" else x.gelu_tanh()


def silu(x):
    return x.silu()


def sigmoid(x):
    return x.sigmoid()


def tanh(x):
    return x.tanh()


def dropout(x, p: float = 0.5, training: bool = False, inplace: bool = False):
    """Inference engine: dropout is the identity (training=True is refused rather than ignored)."""
    if training:
        raise NotImplementedError("dropout(training=True): the engine runs inference only")
    return x


def softmax(x: Tensor, dim: int, dtype=None) -> Tensor:
    x = x.to(dtype) if dtype is not None else x
    _float_input(x, "softmax")
    return _run(x, "softmax", x.array, norm_dim(dim, x.ndim), False)


def log_softmax(x: Tensor, dim: int, dtype=None) -> Tensor:
    x = x.to(dtype) if dtype is not None else x
    _float_input(x, "log_softmax")
    return _run(x, "softmax", x.array, norm_dim(dim, x.ndim), True)


# ---- linear and embedding ---------------------------------------------------------------------------
def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x @ weight.T + bias; weight (out_features, in_features) as in torch. One backend kernel
    (16-bit floats round once, after the bias, as torch's addmm does; the backend picks a GEMV for
    a few rows)."""
    if x.ndim == 0 or weight.ndim != 2 or x.shape[-1] != weight.shape[1]:
        raise ShapeError(f"linear(): input {x.shape} and weight {weight.shape} do not fit "
                         f"(input's last dim must equal weight's dim 1)")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ShapeError(f"linear(): bias {bias.shape} does not match weight {weight.shape}")
    if not (x.dtype is weight.dtype and (bias is None or bias.dtype is x.dtype)):
        raise DTypeError(f"linear(): input, weight and bias dtypes differ ({x.dtype.name}, {weight.dtype.name}"
                         + (f", {bias.dtype.name})" if bias is not None else ")"))
    if weight.device != x.device:
        raise DeviceMismatchError(f"linear(): weight is on {weight.device}, input on {x.device}")
    return _run(x, "linear", x.array, weight.array, _arr(bias, x, "bias"))


def embedding(ids: Tensor, weight: Tensor) -> Tensor:
    if ids.dtype.category != 1 or ids.dtype is D.bool_:
        raise DTypeError(f"embedding(): ids must be integers, got {ids.dtype.name}")
    flat = ids.reshape(-1)
    return weight.index_select(0, flat).reshape(ids.shape + (weight.shape[1],))


def one_hot(ids: Tensor, num_classes: int) -> Tensor:
    from engine.ops import arange
    return (ids.unsqueeze(-1) == arange(num_classes, device=ids.device)).long()


# ---- normalisation ------------------------------------------------------------------------------------
def _norm_shape(x: Tensor, normalized_shape, op: str) -> int:
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if tuple(x.shape[x.ndim - len(ns):]) != ns:
        raise ShapeError(f"{op}(): normalized_shape {ns} does not match the input's trailing dims {x.shape}")
    return len(ns)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    _float_input(x, "layer_norm")
    nd = _norm_shape(x, normalized_shape, "layer_norm")
    return _run(x, "layer_norm", x.array, nd, _arr(weight, x, "weight"), _arr(bias, x, "bias"), eps)


def rms_norm(x, normalized_shape, weight=None, eps: float | None = None, style: str = "torch") -> Tensor:
    """torch.nn.functional.rms_norm: eps defaults to the dtype's machine epsilon, as in torch.
    style (an engine extension): "torch" (all in float32, rounded once), "llama" (transformers'
    LlamaRMSNorm: rounded to the input dtype before the weight multiplies), "gemma" (times 1 + w)."""
    _float_input(x, "rms_norm")
    nd = _norm_shape(x, normalized_shape, "rms_norm")
    if style not in ("torch", "llama", "gemma"):
        raise ValueError(f"rms_norm(): style must be 'torch', 'llama' or 'gemma', got {style!r}")
    if eps is None:
        eps = {"float16": 0.0009765625, "bfloat16": 0.0078125, "float32": 1.1920928955078125e-07,
               "float64": 2.220446049250313e-16}[x.dtype.name]
    if weight is not None and weight.dtype is not x.dtype and style != "torch":
        raise DTypeError(f"rms_norm(style={style!r}): weight {weight.dtype.name} and input {x.dtype.name} differ")
    return _run(x, "rms_norm", x.array, nd, _arr(weight, x, "weight"), eps, style=style)


def group_norm(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    _float_input(x, "group_norm")
    if x.ndim < 2 or x.shape[1] % num_groups:
        raise ShapeError(f"group_norm(): {num_groups} groups do not divide the {x.shape[1] if x.ndim > 1 else '?'} "
                         f"channels of input {x.shape}")
    return _run(x, "group_norm", x.array, num_groups, _arr(weight, x, "weight"), _arr(bias, x, "bias"), eps)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    if training:
        raise NotImplementedError("batch_norm(training=True): the engine runs inference only")
    _float_input(x, "batch_norm")
    if x.ndim < 2 or running_mean.shape != (x.shape[1],):
        raise ShapeError(f"batch_norm(): running_mean {running_mean.shape} does not match channels of {x.shape}")
    return _run(x, "batch_norm", x.array, _arr(running_mean, x, "running_mean"), _arr(running_var, x, "running_var"),
                _arr(weight, x, "weight"), _arr(bias, x, "bias"), eps)


# ---- convolution --------------------------------------------------------------------------------------
def _conv_check(x, w, nd, groups, op, transposed=False):
    _float_input(x, op)
    if x.ndim != nd + 2 or w.ndim != nd + 2:
        raise ShapeError(f"{op}(): expected input and weight of {nd + 2} dims, got {x.shape} and {w.shape}")
    cin = w.shape[0] if transposed else w.shape[1] * groups
    if x.shape[1] != cin or (transposed and w.shape[0] % groups) or (not transposed and w.shape[0] % groups):
        raise ShapeError(f"{op}(): input {x.shape} with {x.shape[1]} channels does not fit weight {w.shape} "
                         f"with groups={groups}")
    if x.dtype is not w.dtype:
        raise DTypeError(f"{op}(): input {x.dtype.name} and weight {w.dtype.name} must have the same dtype")
    if w.device != x.device:
        raise DeviceMismatchError(f"{op}(): weight is on {w.device}, input on {x.device}")


def _conv_padding(padding, k, dilation, stride, nd):
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * nd
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError("padding='same' is not supported for strided convolutions")
            tot = [d * (kk - 1) for d, kk in zip(dilation, k)]
            return [(t // 2, t - t // 2) for t in tot]
        raise ValueError(f"padding must be 'valid', 'same', an int or a tuple, got {padding!r}")
    return [(p, p) for p in _pair(padding, nd, "padding")]


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    _conv_check(x, weight, 2, groups, "conv2d")
    stride, dilation = _pair(stride, 2, "stride"), _pair(dilation, 2, "dilation")
    pads = _conv_padding(padding, weight.shape[2:], dilation, stride, 2)
    return _run(x, "conv2d", x.array, weight.array, _arr(bias, x, "bias"), stride, pads, dilation, groups)


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    _conv_check(x, weight, 1, groups, "conv1d")
    stride, dilation = _pair(stride, 1, "stride"), _pair(dilation, 1, "dilation")
    pads = _conv_padding(padding, weight.shape[2:], dilation, stride, 1)
    y = _run(x, "conv2d", x.array[:, :, None, :], weight.array[:, :, None, :], _arr(bias, x, "bias"),
             (1,) + stride, [(0, 0)] + pads, (1,) + dilation, groups)
    return y.squeeze(2)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups: int = 1,
                     dilation=1) -> Tensor:
    _conv_check(x, weight, 2, groups, "conv_transpose2d", transposed=True)
    return _run(x, "conv_transpose2d", x.array, weight.array, _arr(bias, x, "bias"), _pair(stride), _pair(padding),
                _pair(output_padding), _pair(dilation), groups)


def conv_transpose1d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups: int = 1,
                     dilation=1) -> Tensor:
    _conv_check(x, weight, 1, groups, "conv_transpose1d", transposed=True)
    one = lambda v, n: (0,) + _pair(v, 1, n)  # noqa: E731
    y = _run(x, "conv_transpose2d", x.array[:, :, None, :], weight.array[:, :, None, :], _arr(bias, x, "bias"),
             (1,) + _pair(stride, 1), one(padding, "padding"), one(output_padding, "output_padding"),
             (1,) + _pair(dilation, 1), groups)
    return y.squeeze(2)


# ---- pooling and resampling -------------------------------------------------------------------------
def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False) -> Tensor:
    if x.ndim not in (3, 4):
        raise ShapeError(f"max_pool2d(): expected 3-d or 4-d input, got {x.shape}")
    k = _pair(kernel_size)
    s = _pair(stride) if stride is not None else k
    p = _pair(padding)
    if any(pp * 2 > kk for pp, kk in zip(p, k)):
        raise ValueError(f"max_pool2d(): padding {p} must be at most half of kernel_size {k}")
    if x.ndim == 3:
        return max_pool2d(x.unsqueeze(0), k, s, p, dilation, ceil_mode).squeeze(0)
    return _run(x, "max_pool2d", x.array, k, s, p, _pair(dilation), ceil_mode)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override=None) -> Tensor:
    if x.ndim not in (3, 4):
        raise ShapeError(f"avg_pool2d(): expected 3-d or 4-d input, got {x.shape}")
    _float_input(x, "avg_pool2d")
    k = _pair(kernel_size)
    s = _pair(stride) if stride is not None else k
    p = _pair(padding)
    if x.ndim == 3:
        return avg_pool2d(x.unsqueeze(0), k, s, p, ceil_mode, count_include_pad, divisor_override).squeeze(0)
    return _run(x, "avg_pool2d", x.array, k, s, p, ceil_mode, count_include_pad, divisor_override)


def adaptive_avg_pool2d(x, output_size) -> Tensor:
    _float_input(x, "adaptive_avg_pool2d")
    if x.ndim not in (3, 4):
        raise ShapeError(f"adaptive_avg_pool2d(): expected 3-d or 4-d input, got {x.shape}")
    o = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size,) * 2
    if len(o) != 2:
        raise ValueError(f"adaptive_avg_pool2d(): output_size must be an int or a pair, got {output_size!r}")
    o = tuple(x.shape[-2 + i] if v is None else int(v) for i, v in enumerate(o))  # None keeps that size
    return _run(x, "adaptive_avg_pool2d", x.array, o)


def interpolate(x, size=None, scale_factor=None, mode: str = "nearest", align_corners=None) -> Tensor:
    nsp = x.ndim - 2
    if nsp not in (1, 2):
        raise ShapeError(f"interpolate(): expected 3-d or 4-d input, got {x.shape}")
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate(): give exactly one of size and scale_factor")
    if mode == "nearest" and align_corners is not None:
        raise ValueError("interpolate(): align_corners only applies to linear modes")
    if size is not None:
        size, scales = _pair(size, nsp, "size"), (None,) * nsp
    else:
        sf = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * nsp
        size = tuple(int(math.floor(n * f)) for n, f in zip(x.shape[2:], sf))
        scales = tuple(float(f) for f in sf)
    return _run(x, "interpolate", x.array, size, scales, mode, bool(align_corners))


def pad(x: Tensor, pad, mode: str = "constant", value=0.0) -> Tensor:
    """torch's pad order: (last_left, last_right, second_last_left, ...)."""
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ShapeError(f"pad(): {len(pad)} pad values do not fit input of {x.ndim} dims")
    if mode not in ("constant", "reflect", "replicate", "circular"):
        raise ValueError(f"pad(): unknown mode {mode!r}")
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
    # negative widths crop (as in torch): a narrow view first, then pad the positive parts
    for d, (lo, hi) in enumerate(widths):
        if lo < 0 or hi < 0:
            keep = x.shape[d] + min(lo, 0) + min(hi, 0)
            if keep < 0:
                raise ShapeError(f"pad(): padding {(lo, hi)} crops more than dim {d} of size {x.shape[d]}")
            x = x.narrow(d, -min(lo, 0), keep)
            widths[d] = (max(lo, 0), max(hi, 0))
    if mode == "reflect":
        for d, (lo, hi) in enumerate(widths):
            if max(lo, hi) >= x.shape[d] and (lo or hi):
                raise ShapeError(f"pad(): reflect padding {(lo, hi)} must be smaller than dim {d} of size {x.shape[d]}")
    return Tensor._wrap(x.backend.pad(x.array, widths, mode, value), x.backend, x.dtype)


# ---- attention ------------------------------------------------------------------------------------------
def scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False,
                                 scale=None, enable_gqa: bool = False) -> Tensor:
    """q (..., Hq, L, E), k (..., Hkv, S, E), v (..., Hkv, S, Ev). With enable_gqa, Hq may be a multiple
    of Hkv and each k/v head serves Hq/Hkv query heads (as torch does, by repeating)."""
    if dropout_p:
        raise NotImplementedError("scaled_dot_product_attention(dropout_p>0): the engine runs inference only")
    if q.ndim < 2 or k.shape[-1] != q.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ShapeError(f"scaled_dot_product_attention(): q {q.shape}, k {k.shape}, v {v.shape} do not fit")
    if q.ndim >= 3 and q.shape[-3] != k.shape[-3]:
        if not enable_gqa or q.shape[-3] % k.shape[-3]:
            raise ShapeError(f"scaled_dot_product_attention(): {q.shape[-3]} query heads and {k.shape[-3]} key heads "
                             "need enable_gqa=True and a whole ratio")
    if not (q.dtype is k.dtype is v.dtype):
        raise DTypeError(f"scaled_dot_product_attention(): q, k, v dtypes differ ({q.dtype.name}, {k.dtype.name}, "
                         f"{v.dtype.name})")
    if not (q.device == k.device == v.device):
        raise DeviceMismatchError(f"scaled_dot_product_attention(): q on {q.device}, k on {k.device}, v on {v.device}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return _run(q, "sdpa", q.array, k.array, v.array, _arr(attn_mask, q, "attn_mask"), is_causal, scale)
