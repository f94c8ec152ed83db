"""torch.nn.functional-named ops. Validation lives here; the math lives in the backend kernels.

Convolution, pooling and resampling live in engine/functional_conv.py, losses and distances in
engine/functional_loss.py; both are re-exported here, so `engine.functional` is the one namespace.
"""
from __future__ import annotations

import math

from engine import dtype as D
from engine.backends.fused import ACTIVATIONS, NORM_STYLES
from engine.functional_conv import (_arr, _run, adaptive_avg_pool1d, adaptive_avg_pool2d,  # noqa: F401
                                    adaptive_avg_pool3d, adaptive_max_pool1d, adaptive_max_pool2d,
                                    adaptive_max_pool3d, avg_pool1d, avg_pool2d, avg_pool3d, conv1d, conv2d, conv3d,
                                    conv_transpose1d, conv_transpose2d, conv_transpose3d, interpolate, max_pool1d,
                                    max_pool2d, max_pool3d, pad, pixel_shuffle, pixel_unshuffle, upsample,
                                    upsample_bilinear, upsample_nearest)
from engine.layout import ShapeError, norm_dim
from engine.quant import QuantWeight
from engine.tensor import DeviceMismatchError, DTypeError, Tensor
from engine.tensor_ops import where


def _float_input(x: Tensor, op: str):
    if not x.dtype.is_floating_point:
        raise DTypeError(f"{op}(): expected a floating input, got {x.dtype.name}")


# ---- activations ------------------------------------------------------------------------------------
def _act(x: Tensor, op: str, *params, inplace: bool = False, floating: bool = True, promote: bool = False) -> Tensor:
    """One pointwise kernel (computed in float32 for 16-bit inputs, rounded once); inplace as torch.
    floating: refuse non-float inputs; promote: integer inputs give float32 (as torch's do)."""
    if floating and not promote:
        _float_input(x, op)
    elif x.dtype is D.bool_:
        raise DTypeError(f"{op}(): bool input is not supported")
    y = _run(x, "pointwise", op, (x.array,), tuple(params), dtype=D.to_float(x.dtype) if promote else None)
    return x.copy_(y) if inplace else y


def _maybe_inplace(x: Tensor, y: Tensor, inplace: bool) -> Tensor:
    return x.copy_(y) if inplace else y


def relu(x, inplace: bool = False):
    return _maybe_inplace(x, x.relu(), inplace)


def relu6(x, inplace: bool = False):
    return _act(x, "hardtanh", 0.0, 6.0, inplace=inplace, floating=False)


def hardtanh(x, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False):
    if min_val > max_val:
        raise ValueError(f"hardtanh(): min_val {min_val} must not exceed max_val {max_val}")
    if x.dtype is D.uint8 and (min_val < 0 or max_val < 0):
        raise ValueError(f"hardtanh(): negative limits ({min_val}, {max_val}) for an unsigned (uint8) input")
    return _act(x, "hardtanh", min_val, max_val, inplace=inplace, floating=False)


def leaky_relu(x, negative_slope: float = 0.01, inplace: bool = False):
    return _act(x, "leaky_relu", negative_slope, inplace=inplace)


def elu(x, alpha: float = 1.0, inplace: bool = False):
    return _act(x, "elu", alpha, 1.0, 1.0, inplace=inplace)


def selu(x, inplace: bool = False):
    from engine.backends.numpy_pointwise import SELU_ALPHA, SELU_SCALE
    return _act(x, "elu", SELU_ALPHA, SELU_SCALE, 1.0, inplace=inplace)


def celu(x, alpha: float = 1.0, inplace: bool = False):
    if alpha == 0:
        raise ValueError("celu(): alpha must be nonzero")
    return _act(x, "elu", alpha, 1.0, 1.0 / alpha, inplace=inplace)


def gelu(x, approximate: str = "none"):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu(): approximate must be 'none' or 'tanh', got {approximate!r}")
    return x.gelu() if approximate == "none" else x.gelu_tanh()


def silu(x, inplace: bool = False):
    return _maybe_inplace(x, x.silu(), inplace)


def mish(x, inplace: bool = False):
    return _act(x, "mish", inplace=inplace)


def hardswish(x, inplace: bool = False):
    return _act(x, "hardswish", inplace=inplace)


def hardsigmoid(x, inplace: bool = False):
    return _act(x, "hardsigmoid", inplace=inplace)


def softplus(x, beta: float = 1.0, threshold: float = 20.0):
    return _act(x, "softplus", beta, threshold)


def softsign(x):
    return _act(x, "softsign", promote=True)


def logsigmoid(x):
    return _act(x, "logsigmoid")


def tanhshrink(x):
    return _act(x, "tanhshrink", promote=True)


def hardshrink(x, lambd: float = 0.5):
    return _act(x, "hardshrink", lambd)


def softshrink(x, lambd: float = 0.5):
    if lambd < 0:
        raise ValueError(f"softshrink(): lambd must be non-negative, got {lambd}")
    return _act(x, "softshrink", lambd)


def threshold(x, threshold: float, value: float, inplace: bool = False):
    return _act(x, "threshold", threshold, value, inplace=inplace, floating=False)


def glu(x, dim: int = -1):
    """First half of `dim` times the sigmoid of the second half."""
    _float_input(x, "glu")
    if x.ndim == 0:
        raise ShapeError("glu(): does not take a 0-d tensor")
    d = norm_dim(dim, x.ndim)
    if x.shape[d] % 2:
        raise ShapeError(f"glu(): dim {d} of input {x.shape} must have an even size")
    a, b = x.split(x.shape[d] // 2, d)
    return _run(x, "pointwise", "glu", (a.array, b.array), (), dtype=x.dtype)


def prelu(x, weight: Tensor):
    """max(0, x) + weight * min(0, x); weight has 1 element or one per channel (dim 1)."""
    _float_input(x, "prelu")
    if weight.dtype is not x.dtype:
        raise DTypeError(f"prelu(): weight {weight.dtype.name} must match input {x.dtype.name}")
    if weight.ndim > 1 or (weight.numel() != 1 and (x.ndim < 2 or weight.numel() != x.shape[1])):
        raise ShapeError(f"prelu(): weight {weight.shape} must have 1 element or one per channel of input {x.shape}")
    w = weight.reshape(-1)
    w = w.reshape(()) if w.numel() == 1 else w.reshape((-1,) + (1,) * (x.ndim - 2))
    return _run(x, "pointwise", "prelu", (x.array, _arr(w, x, "weight")), ())


def sigmoid(x):
    return x.sigmoid()


def tanh(x):
    return x.tanh()


def _dropout(name, training_default=True):
    def fn(x, p: float = 0.5, training: bool = training_default, inplace: bool = False):
        """Identity at inference; training with p > 0 draws a random mask, which the engine refuses."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name}(): p must be between 0 and 1, got {p}")
        if training and p > 0:
            raise NotImplementedError(f"{name}(training=True, p={p}): the engine runs inference only; "
                                      "pass training=False")
        return x if inplace else x.clone()
    fn.__name__ = name
    return fn


dropout, dropout1d, dropout2d, dropout3d = _dropout("dropout"), _dropout("dropout1d"), _dropout("dropout2d"), \
    _dropout("dropout3d")
# torch's alpha variants default to training=False, the others to True
alpha_dropout, feature_alpha_dropout = _dropout("alpha_dropout", False), _dropout("feature_alpha_dropout", False)


def _softmax_dim(x: Tensor, dim, op: str) -> int:
    if dim is None:  # torch's legacy implicit dim
        dim = 0 if x.ndim in (0, 1, 3) else 1
    return norm_dim(dim, x.ndim)


def softmax(x: Tensor, dim=None, _stacklevel: int = 3, dtype=None) -> Tensor:
    x = x.to(dtype) if dtype is not None else x
    _float_input(x, "softmax")
    return _run(x, "softmax", x.array, _softmax_dim(x, dim, "softmax"), False)


def log_softmax(x: Tensor, dim=None, _stacklevel: int = 3, dtype=None) -> Tensor:
    x = x.to(dtype) if dtype is not None else x
    _float_input(x, "log_softmax")
    return _run(x, "softmax", x.array, _softmax_dim(x, dim, "log_softmax"), True)


def softmin(x: Tensor, dim=None, _stacklevel: int = 3, dtype=None) -> Tensor:
    return softmax(-x, dim, dtype=dtype)  # torch negates first, in the input's dtype


# ---- linear and embedding ---------------------------------------------------------------------------
def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x @ weight.T + bias; weight (out_features, in_features) as in torch. One backend kernel
    (16-bit floats round once, after the bias, as torch's addmm does; the backend picks a GEMV for
    a few rows). A QuantWeight (engine/quant.py) runs the backend's qlinear, which dequantises a
    bounded tile of rows at a time."""
    xs, ws = x.shape, weight.shape
    if not xs or len(ws) != 2 or xs[-1] != ws[1]:
        raise ShapeError(f"linear(): input {x.shape} and weight {weight.shape} do not fit "
                         f"(input's last dim must equal weight's dim 1)")
    if bias is not None and bias.shape != (ws[0],):
        raise ShapeError(f"linear(): bias {bias.shape} does not match weight {weight.shape}")
    if not (x.dtype is weight.dtype and (bias is None or bias.dtype is x.dtype)):
        raise DTypeError(f"linear(): input, weight and bias dtypes differ ({x.dtype.name}, {weight.dtype.name}"
                         + (f", {bias.dtype.name})" if bias is not None else ")"))
    if type(weight) is Tensor:  # the common case, without QuantWeight's check
        b = x.storage.backend
        if weight.storage.backend is not b and weight.device != x.device:
            raise DeviceMismatchError(f"linear(): weight is on {weight.device}, input on {x.device}")
        return Tensor._wrap(b.linear(x.array, weight.array, _arr(bias, x, "bias"), x.dtype), b, x.dtype)
    if weight.device != x.device:
        raise DeviceMismatchError(f"linear(): weight is on {weight.device}, input on {x.device}")
    if isinstance(weight, QuantWeight):
        return _run(x, "qlinear", x.array, weight.data.array, weight.qtype.name, weight.shape[1], _arr(bias, x, "bias"))
    return _run(x, "linear", x.array, weight.array, _arr(bias, x, "bias"))


def embedding(ids: Tensor, weight: Tensor, padding_idx=None, max_norm=None, norm_type: float = 2.0,
              scale_grad_by_freq: bool = False, sparse: bool = False) -> Tensor:
    """Rows of weight. padding_idx, scale_grad_by_freq and sparse only change gradients (validated,
    no effect here). max_norm: rows whose norm exceeds it come out scaled to max_norm / (norm + 1e-7),
    as torch computes them; torch also rewrites those rows of weight in place, the engine does not
    (weights may be read-only memory maps)."""
    if ids.dtype.category != 1 or ids.dtype is D.bool_:
        raise DTypeError(f"embedding(): ids must be integers, got {ids.dtype.name}")
    if weight.ndim != 2:
        raise ShapeError(f"embedding(): weight must be 2-d, got shape {weight.shape}")
    n = weight.shape[0]
    if padding_idx is not None and not -n <= padding_idx < n:
        raise ValueError(f"embedding(): padding_idx {padding_idx} out of range for {n} embeddings")
    rows = weight.index_select(0, ids.reshape(-1))
    if max_norm is not None:
        norms = rows.norm(norm_type, dim=1, keepdim=True)
        scale = where(norms > max_norm, max_norm / (norms + 1e-7), 1.0).to(rows.dtype)
        rows = rows * scale
    return rows.reshape(ids.shape + (weight.shape[1],))


def one_hot(ids: Tensor, num_classes: int = -1) -> Tensor:
    """int64 one-hot rows; num_classes=-1 infers max(ids) + 1 (as torch does)."""
    from engine.ops import arange
    if ids.dtype is not D.int64:
        raise DTypeError(f"one_hot(): expects an int64 tensor, got {ids.dtype.name}")
    if num_classes == -1:
        if ids.numel() == 0:
            raise ValueError("one_hot(): cannot infer the number of classes from an empty tensor")
        num_classes = int(ids.max().item()) + 1
    if ids.numel() and (int(ids.min().item()) < 0 or int(ids.max().item()) >= num_classes):
        raise ValueError(f"one_hot(): class values must be in [0, {num_classes}), got "
                         f"[{int(ids.min().item())}, {int(ids.max().item())}]")
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
    if style not in NORM_STYLES:
        raise ValueError(f"rms_norm(): style must be one of {NORM_STYLES}, got {style!r}")
    if eps is None:
        eps = {"float16": 0.0009765625, "bfloat16": 0.0078125, "float32": 1.1920928955078125e-07,
               "float64": 2.220446049250313e-16}[x.dtype.name]
    if weight is not None and weight.dtype is not x.dtype and style != "torch":
        raise DTypeError(f"rms_norm(style={style!r}): weight {weight.dtype.name} and input {x.dtype.name} differ")
    return _run(x, "rms_norm", x.array, nd, _arr(weight, x, "weight"), eps, style=style)


def group_norm(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5, act: str | None = None) -> Tensor:
    """torch's group_norm; act ("silu", "gelu_tanh", "gelu"; an engine extension) applies that
    activation to the result as one fused backend op (diffusers' GroupNorm -> SiLU), rounded as the two
    ops would be."""
    _float_input(x, "group_norm")
    if act is not None and act not in ACTIVATIONS:
        raise ValueError(f"group_norm(): act must be None or one of {', '.join(ACTIVATIONS)}, got {act!r}")
    if not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"group_norm(): num_groups must be a positive int, got {num_groups!r}")
    if x.ndim < 2 or x.shape[1] % num_groups:
        raise ShapeError(f"group_norm(): {num_groups} groups do not divide the {x.shape[1] if x.ndim > 1 else '?'} "
                         f"channels of input {x.shape}")
    if act is not None:
        return _run(x, "group_norm_act", x.array, num_groups, _arr(weight, x, "weight"), _arr(bias, x, "bias"), eps,
                    act)
    return _run(x, "group_norm", x.array, num_groups, _arr(weight, x, "weight"), _arr(bias, x, "bias"), eps)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Normalise each channel (dim 1) by the running statistics, or with training=True by the batch's
    own (biased variance), updating given running statistics in place as torch does:
    running = (1 - momentum) * running + momentum * batch (the unbiased variance)."""
    _float_input(x, "batch_norm")
    c = x.shape[1] if x.ndim > 1 else (x.shape[0] if x.ndim == 1 else 1)
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        if t is not None and t.shape != (c,):
            raise ShapeError(f"batch_norm(): {name} {t.shape} does not match channels of {x.shape}")
    if x.ndim < 2:  # torch treats a 1-d input as one sample of C channels
        return batch_norm(x.reshape(1, -1), running_mean, running_var, weight, bias, training, momentum,
                          eps).reshape(x.shape)
    if training:
        dims = (0,) + tuple(range(2, x.ndim))
        n = x.numel() // max(c, 1)
        if x.numel() == 0:
            return x.clone()
        if n == 1:
            raise ValueError(f"batch_norm(training=True): expected more than 1 value per channel, got input {x.shape}")
        xs = x.float() if x.dtype.is_reduced else x
        mean, var = xs.mean(dims), xs.var(dims, correction=0)
        if running_mean is not None:
            running_mean.copy_(running_mean * (1 - momentum) + mean * momentum)
        if running_var is not None:
            running_var.copy_(running_var * (1 - momentum) + var * (momentum * n / (n - 1)))
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm(training=False) needs running_mean and running_var")
        mean, var = running_mean, running_var
    return _run(x, "batch_norm", x.array, _arr(mean, x, "running_mean"), _arr(var, x, "running_var"),
                _arr(weight, x, "weight"), _arr(bias, x, "bias"), eps)


def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Each (sample, channel) normalised over its spatial dims. With use_input_stats=False the running
    statistics are used instead (batch_norm); torch also updates given running stats in place while
    using the input's statistics, the engine leaves them unchanged."""
    _float_input(x, "instance_norm")
    if x.ndim < 2:
        raise ShapeError(f"instance_norm(): expected an input of at least 2 dims, got {x.shape}")
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise ValueError("instance_norm(use_input_stats=False) needs running_mean and running_var")
        return batch_norm(x, running_mean, running_var, weight, bias, False, momentum, eps)
    return group_norm(x, x.shape[1], weight, bias, eps)


def local_response_norm(x: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> Tensor:
    """torch's composition: x / (k + alpha * mean of x^2 over `size` neighbouring channels) ** beta."""
    if x.ndim < 3:
        raise ShapeError(f"local_response_norm(): expected 3 or more dims, got shape {x.shape}")
    if x.numel() == 0:
        return x.clone()
    div = x * x
    if x.ndim == 3:
        div = pad(div.unsqueeze(1), (0, 0, size // 2, (size - 1) // 2))
        div = avg_pool2d(div, (size, 1), stride=1).squeeze(1)
    else:
        n, c = x.shape[:2]
        div = div.reshape(n, 1, c, x.shape[2], -1)
        div = pad(div, (0, 0, 0, 0, size // 2, (size - 1) // 2))
        div = avg_pool3d(div, (size, 1, 1), stride=1).squeeze(1).reshape(x.shape)
    return x / ((div * alpha + k) ** beta)


# ---- attention ------------------------------------------------------------------------------------------
def scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False,
                                 scale=None, enable_gqa: bool = False) -> Tensor:
    """q (..., Hq, L, E), k (..., Hkv, S, E), v (..., Hkv, S, Ev). With enable_gqa, Hq may be a multiple
    of Hkv and each k/v head serves Hq/Hkv query heads (as torch does, by repeating)."""
    if dropout_p:  # a random mask: training only
        raise NotImplementedError(f"scaled_dot_product_attention(dropout_p={dropout_p}): the engine runs inference "
                                  "only; pass dropout_p=0")
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


from engine.functional_loss import (cdist, cosine_similarity, cross_entropy, huber_loss, kl_div,  # noqa: E402,F401
                                    l1_loss, mse_loss, nll_loss, normalize, pairwise_distance, smooth_l1_loss)
