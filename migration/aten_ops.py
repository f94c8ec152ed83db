"""The ATen -> engine translation table used by migration.export.

Each entry translates one Core ATen op (the overload packet name, e.g. "addmm", or a full
"op.overload" where overloads differ) into engine calls emitted through the Emitter `e`:

    @aten("addmm")
    def _(e, bias, a, b, beta=1, alpha=1):
        return e.call("engine.add", _scaled(e, e.call("engine.matmul", a, b), alpha), _scaled(e, bias, beta))

Arguments arrive as in the ATen schema: graph values as Ref (with `.meta`, torch's fake value: shape
and dtype at export time), everything else as plain Python values. An entry returns a Ref, a tuple
(None for an output the engine does not compute, e.g. batch-norm's saved statistics), or raises
Unsupported with the reason. Where the engine has no op of its own yet, the entry composes engine
ops; `COMPOSED` lists those, so they can call a new engine op directly once one exists.
"""
from __future__ import annotations

import math
import operator

TABLE: dict = {}
SKIP = {"_assert_scalar", "_assert_tensor_metadata", "sym_constrain_range", "sym_constrain_range_for_size",
        "_assert_async"}
# entries written as compositions of existing engine ops (candidates for a direct engine op later)
COMPOSED = ("addmm (alpha/beta != 1)", "baddbmm", "rsub", "div with a number on the left",
            "_native_batch_norm_legit (batch statistics: training mode, instance_norm)",
            "elu (with selu's scales)", "_prelu_kernel", "var_mean",
            "pow (a number to a tensor)", "new_zeros/new_ones/new_empty/new_full",
            "index_put/slice_scatter/select_scatter (py helpers: a clone and an indexed write)")


class Unsupported(NotImplementedError):
    """This use of the op has no engine translation; the message says why."""


def aten(*names):
    def deco(fn):
        for n in names:
            TABLE[n] = fn
        return fn
    return deco


class Dt(str):
    """An engine dtype name as an argument (encoded as {"dtype": name} in the program)."""


def _dt(dtype):
    """torch dtype (or engine dtype name) -> Dt (Unsupported for dtypes the engine lacks)."""
    if dtype is None:
        return None
    from migration.export import dtype_name
    return Dt(dtype_name(dtype))


def _meta_dtype(x):
    return getattr(getattr(x, "meta", None), "dtype", None)


def _is_float(x) -> bool:
    dt = _meta_dtype(x)
    return dt is not None and dt.is_floating_point


def _scaled(e, x, k):
    return x if k == 1 else e.call("engine.mul", x, k)


def _method(name):
    return lambda e, x, *a, **k: e.call(f"Tensor.{name}", x, *a, **k)


# ---- elementwise ----------------------------------------------------------------------------------------
for _n in ("relu", "sigmoid", "tanh", "exp", "log", "log2", "log1p", "expm1", "sqrt", "rsqrt", "sin", "cos", "tan",
           "erf", "reciprocal", "neg", "abs", "floor", "ceil", "sign", "logical_not", "isnan", "isinf", "isfinite",
           "silu", "trunc", "bitwise_not"):
    aten(_n)(_method(_n))
for _n in ("eq", "ne", "lt", "le", "gt", "ge", "maximum", "minimum", "remainder", "atan2", "logical_and",
           "logical_or", "logical_xor", "bitwise_and", "bitwise_or", "bitwise_xor", "fmod"):
    aten(_n)((lambda n: lambda e, a, b: e.call(f"engine.{n}", a, b))(_n))
aten("mul")(lambda e, a, b: e.call("engine.mul", a, b))
aten("floor_divide")(lambda e, a, b: e.call("engine.floor_divide", a, b))
aten("round")(lambda e, x, decimals=0: e.call("Tensor.round", x, decimals=decimals) if decimals
              else e.call("Tensor.round", x))


def _is_ref(x) -> bool:
    return hasattr(x, "name")


def _as_tensor_like(e, scalar, other):
    """A Python number on the left of a binary op, as a tensor shaped like `other` (torch's promotion:
    a float number with an integer tensor gives float32)."""
    dt = None if isinstance(scalar, bool) or not isinstance(scalar, float) or _is_float(other) else Dt("float32")
    return e.call("engine.full_like", other, scalar, dtype=dt)


# add, sub and mul take a Python number on the left as torch does (engine.sub(2, t, alpha=2))
@aten("add")
def _add(e, a, b, alpha=1):
    return e.call("engine.add", a, _scaled(e, b, alpha))


@aten("sub")
def _sub(e, a, b, alpha=1):
    return e.call("engine.sub", a, _scaled(e, b, alpha))


@aten("rsub")
def _rsub(e, a, b, alpha=1):  # b - alpha * a
    return e.call("engine.add", e.call("engine.mul", a, -alpha), b)


@aten("div")
def _div(e, a, b, rounding_mode=None):
    # torch.div(0.1, t) rounds the number to t's dtype first (bf16, f16); engine.div(0.1, t) would not
    a = a if _is_ref(a) else _as_tensor_like(e, a, b)
    if rounding_mode is None:
        return e.call("engine.div", a, b)
    return e.call("engine.div", a, b, rounding_mode=rounding_mode)  # integers stay exact (not via float32)


@aten("pow")
def _pow(e, a, b):
    if not hasattr(a, "name"):  # a Python number raised to a tensor: exp(b * log(a))
        return e.call("Tensor.exp", e.call("engine.mul", b, math.log(a)))
    return e.call("engine.pow", a, b)


@aten("where")
def _where(e, cond, a, b):
    return e.call("engine.where", cond, a, b)


@aten("clamp")
def _clamp(e, x, min=None, max=None):
    return e.call("engine.clamp", x, min, max)


aten("clamp_min")(lambda e, x, v: e.call("engine.clamp", x, v, None))
aten("clamp_max")(lambda e, x, v: e.call("engine.clamp", x, None, v))
aten("masked_fill")(lambda e, x, mask, v: e.call("engine.masked_fill", x, mask, v))
aten("gelu")(lambda e, x, approximate="none": e.call("F.gelu", x, approximate=approximate))
aten("_softmax")(lambda e, x, dim, half_to_float=False: e.call("F.softmax", x, dim))
aten("_log_softmax")(lambda e, x, dim, half_to_float=False: e.call("F.log_softmax", x, dim))


# activations: these ATen signatures are torch.nn.functional's, so the arguments pass through unchanged
for _n in ("leaky_relu", "hardtanh", "hardsigmoid", "hardswish", "softplus", "mish"):
    aten(_n)((lambda n: lambda e, x, *a, **k: e.call(f"F.{n}", x, *a, **k))(_n))


@aten("elu")
def _elu(e, x, alpha=1.0, scale=1.0, input_scale=1.0):  # aten's elu also carries selu's scales
    if scale == 1 and input_scale == 1:
        return e.call("F.elu", x, alpha)
    neg = e.call("engine.mul", e.call("Tensor.expm1", e.call("engine.mul", x, input_scale)), alpha)
    return _scaled(e, e.call("engine.where", e.call("engine.gt", x, 0), x, neg), scale)


@aten("_prelu_kernel")
def _prelu(e, x, w):
    nd = len(x.meta.shape)
    if nd >= 2 and len(w.meta.shape) == 1 and w.meta.shape[0] != 1:  # one slope per channel (dim 1)
        w = e.call("Tensor.reshape", w, [-1] + [1] * (nd - 2))
    return e.call("engine.where", e.call("engine.gt", x, 0), x, e.call("engine.mul", x, w))


# ---- creation ----------------------------------------------------------------------------------------
DEV = object()  # the program's device (encoded as {"device": null})


@aten("full")
def _full(e, size, value, dtype=None, layout=None, device=None, pin_memory=None):
    return e.call("engine.full", size, value, dtype=_dt(dtype) or _default_dtype(value), device=DEV)


def _default_dtype(value):
    if isinstance(value, bool):
        return Dt("bool")
    return Dt("int64" if isinstance(value, int) else "float32")


@aten("full_like")
def _full_like(e, x, value, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    return e.call("engine.full_like", x, value, dtype=_dt(dtype))


for _n, _v in (("zeros_like", 0), ("ones_like", 1), ("empty_like", 0)):
    aten(_n)((lambda v: lambda e, x, dtype=None, **k: e.call("engine.full_like", x, v, dtype=_dt(dtype)))(_v))
for _n, _v in (("zeros", 0), ("ones", 1), ("empty", 0)):
    aten(_n)((lambda v: lambda e, size, dtype=None, **k: e.call("engine.full", size, v, dtype=_dt(dtype) or Dt("float32"),
                                                                  device=DEV))(_v))


def _new(fill):
    def fn(e, x, size, *value, dtype=None, layout=None, device=None, pin_memory=None):
        v = value[0] if fill is None else fill
        return e.call("engine.full", size, v, dtype=_dt(dtype or _meta_dtype(x)), device=DEV)
    return fn


TABLE.update({"new_zeros": _new(0), "new_ones": _new(1), "new_empty": _new(0), "new_full": _new(None)})


@aten("scalar_tensor")
def _scalar_tensor(e, value, dtype=None, layout=None, device=None, pin_memory=None):
    return e.call("engine.tensor", value, dtype=_dt(dtype) or Dt("float32"), device=DEV)


@aten("arange")
def _arange(e, start, end=None, step=1, dtype=None, layout=None, device=None, pin_memory=None):
    return e.call("engine.arange", start, end, step, dtype=_dt(dtype), device=DEV)


# ---- shape and indexing ----------------------------------------------------------------------------------
for _n in ("permute", "expand", "unsqueeze", "select", "transpose", "t", "flip", "roll", "repeat_interleave"):
    aten(_n)(_method(_n))
aten("view", "_unsafe_view", "reshape")(lambda e, x, shape: e.call("Tensor.reshape", x, shape))
aten("squeeze")(lambda e, x, dim=None: e.call("Tensor.squeeze", x, dim))
aten("clone", "alias", "lift_fresh_copy", "detach", "contiguous")(lambda e, x, **k: x)
aten("slice")(lambda e, x, dim=0, start=None, end=None, step=1: e.call("py.slice", x, dim, start, end, step))
aten("cat")(lambda e, tensors, dim=0: e.call("engine.cat", tensors, dim))
aten("stack")(lambda e, tensors, dim=0: e.call("engine.stack", tensors, dim))
aten("split_with_sizes")(lambda e, x, sizes, dim=0: e.call("Tensor.split", x, sizes, dim))
aten("split")(lambda e, x, size, dim=0: e.call("Tensor.split", x, size, dim))
aten("unbind")(lambda e, x, dim=0: e.call("Tensor.unbind", x, dim))
aten("gather")(lambda e, x, dim, index, sparse_grad=False: e.call("engine.gather", x, dim, index))
aten("index_select")(lambda e, x, dim, index: e.call("engine.index_select", x, dim, index))
aten("index")(lambda e, x, indices: e.call("py.index", x, indices))
aten("repeat")(lambda e, x, repeats: e.call("Tensor.repeat", x, *repeats))
aten("triu")(lambda e, x, diagonal=0: e.call("engine.triu", x, diagonal))
aten("tril")(lambda e, x, diagonal=0: e.call("engine.tril", x, diagonal))
aten("embedding")(lambda e, w, ids, padding_idx=-1, scale_grad_by_freq=False, sparse=False:
                  e.call("F.embedding", ids, w))
aten("scatter")(lambda e, x, dim, index, src, reduce=None: e.call("engine.scatter", x, dim, index, src, reduce))
aten("scatter_add")(lambda e, x, dim, index, src: e.call("engine.scatter_add", x, dim, index, src))
aten("slice_scatter")(lambda e, x, src, dim=0, start=None, end=None, step=1:
                      e.call("py.slice_scatter", x, src, dim, start, end, step))
aten("select_scatter")(lambda e, x, src, dim, index: e.call("py.select_scatter", x, src, dim, index))
aten("nonzero")(lambda e, x: e.call("engine.nonzero", x))
for _n, _mode in (("reflection_pad1d", "reflect"), ("reflection_pad2d", "reflect"), ("replication_pad1d", "replicate"),
                  ("replication_pad2d", "replicate")):
    aten(_n)((lambda m: lambda e, x, pad: e.call("F.pad", x, pad, m))(_mode))


@aten("index_put")
def _index_put(e, x, indices, values, accumulate=False):
    if accumulate:
        raise Unsupported("index_put with accumulate=True (repeated indices add up)")
    return e.call("py.index_put", x, indices, values)


aten("glu")(lambda e, x, dim=-1: e.call("F.glu", x, dim))


@aten("var_mean")
def _var_mean(e, x, dim=None, *, correction=None, keepdim=False):
    return (_var_fn("var")(e, x, dim, correction=correction, keepdim=keepdim),
            _reduction("mean")(e, x, dim, keepdim))


aten("constant_pad_nd")(lambda e, x, pad, value=0: e.call("F.pad", x, pad, "constant", value))


@aten("_to_copy")
def _to_copy(e, x, dtype=None, layout=None, device=None, pin_memory=None, non_blocking=False, memory_format=None):
    return x if dtype is None else e.call("Tensor.to", x, dtype=_dt(dtype))


# ---- reductions -----------------------------------------------------------------------------------------
def _reduction(name, has_dtype=False):
    def fn(e, x, dim=None, keepdim=False, dtype=None):
        kw = {"dtype": _dt(dtype)} if has_dtype and dtype is not None else {}
        return e.call(f"Tensor.{name}", x, dim=dim if dim not in ([], ()) or name in ("any", "all") else None,
                      keepdim=keepdim, **kw)
    return fn


for _n in ("sum", "mean", "prod"):
    aten(_n)(_reduction(_n, has_dtype=True))
for _n in ("amax", "amin", "any", "all", "argmax", "argmin"):
    aten(_n)(_reduction(_n))
aten("logsumexp")(lambda e, x, dim, keepdim=False: e.call("Tensor.logsumexp", x, dim, keepdim))
aten("cumsum")(lambda e, x, dim, dtype=None: e.call("Tensor.cumsum", x, dim, dtype=_dt(dtype)))
aten("cumprod")(lambda e, x, dim, dtype=None: e.call("Tensor.cumprod", x, dim, dtype=_dt(dtype)))


def _mm_fn(name):
    def fn(e, x, dim=None, keepdim=False):
        if dim is None:
            return e.call(f"Tensor.{name}", x)
        r = e.call(f"Tensor.{name}", x, dim, keepdim)
        return (e.call("py.getitem", r, 0), e.call("py.getitem", r, 1))
    return fn


TABLE["max"], TABLE["min"] = _mm_fn("max"), _mm_fn("min")


def _var_fn(name):
    def fn(e, x, dim=None, *, correction=None, keepdim=False):
        c = 1 if correction is None else correction
        return e.call(f"Tensor.{name}", x, dim=dim if dim not in ([], ()) else None, keepdim=keepdim, correction=c)
    return fn


TABLE["var"], TABLE["std"] = _var_fn("var"), _var_fn("std")


@aten("topk")
def _topk(e, x, k, dim=-1, largest=True, sorted=True):
    r = e.call("Tensor.topk", x, k, dim, largest, sorted)
    return (e.call("py.getitem", r, 0), e.call("py.getitem", r, 1))


@aten("sort")
def _sort(e, x, dim=-1, descending=False, stable=None):
    r = e.call("Tensor.sort", x, dim, descending, bool(stable))
    return (e.call("py.getitem", r, 0), e.call("py.getitem", r, 1))


# ---- linear algebra and nn --------------------------------------------------------------------------------
@aten("addmm")
def _addmm(e, bias, a, b, beta=1, alpha=1):
    if beta == 1 and alpha == 1 and bias.meta is not None and bias.meta.ndim == 1:
        # x @ W.T + b as one engine linear: 16-bit floats round once, after the bias, as torch's addmm
        return e.call("F.linear", a, e.call("Tensor.t", b), bias)
    return _baddbmm(e, bias, a, b, beta, alpha)


@aten("baddbmm")
def _baddbmm(e, bias, a, b, beta=1, alpha=1):
    return e.call("engine.add", _scaled(e, e.call("engine.matmul", a, b), alpha), _scaled(e, bias, beta))


aten("mm", "bmm", "matmul")(lambda e, a, b: e.call("engine.matmul", a, b))


@aten("scaled_dot_product_attention")
def _sdpa(e, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None, enable_gqa=False):
    return e.call("F.scaled_dot_product_attention", q, k, v, attn_mask, 0.0, is_causal, scale=scale,
                  enable_gqa=enable_gqa)


@aten("native_layer_norm")
def _layer_norm(e, x, shape, w, b, eps):
    return (e.call("F.layer_norm", x, shape, w, b, eps), None, None)


@aten("_native_batch_norm_legit_no_training")
def _batch_norm(e, x, w, b, mean, var, momentum, eps):
    return (e.call("F.batch_norm", x, mean, var, w, b, False, momentum, eps), None, None)


@aten("_native_batch_norm_legit")
def _batch_norm_stats(e, x, w, b, *rest):
    """Batch statistics (training-mode batch norm, and instance_norm, which torch runs as one): the
    overload with running stats (x, w, b, mean, var, training, momentum, eps) or without (x, w, b,
    training, momentum, eps). The running-stat updates are not computed."""
    if len(rest) == 5:
        mean, var, training, momentum, eps = rest
        if not training:
            return _batch_norm(e, x, w, b, mean, var, momentum, eps)
    else:
        training, momentum, eps = rest
    nd = len(x.meta.shape)
    dims = [0] + list(range(2, nd))
    mu = e.call("Tensor.mean", x, dim=dims, keepdim=True)
    xc = e.call("engine.sub", x, mu)
    var = e.call("Tensor.mean", e.call("engine.mul", xc, xc), dim=dims, keepdim=True)
    y = e.call("engine.mul", xc, e.call("Tensor.rsqrt", e.call("engine.add", var, eps)))
    shape = [-1] + [1] * (nd - 2)
    if w is not None:
        y = e.call("engine.mul", y, e.call("Tensor.reshape", w, shape))
    if b is not None:
        y = e.call("engine.add", y, e.call("Tensor.reshape", b, shape))
    return (y, None, None)


@aten("linalg_vector_norm")
def _vector_norm(e, x, ord=2, dim=None, keepdim=False, *, dtype=None):
    if ord not in (1, 2, float("inf")) and not isinstance(ord, (int, float)):
        raise Unsupported(f"vector norm of order {ord!r}")
    return e.call("Tensor.norm", x, ord, dim, keepdim)


@aten("native_group_norm")
def _group_norm(e, x, w, b, n, c, hw, groups, eps):
    return (e.call("F.group_norm", x, groups, w, b, eps), None, None)


def _engine_has(name: str) -> bool:
    import engine.functional as F
    return callable(getattr(F, name, None))


@aten("convolution")
def _conv(e, x, w, b, stride, padding, dilation, transposed, output_padding, groups):
    nd = len(w.meta.shape) - 2
    name = f"conv_transpose{nd}d" if transposed else f"conv{nd}d"
    if not _engine_has(name):
        raise Unsupported(f"{nd}-d {'transposed ' if transposed else ''}convolution (the engine has no {name})")
    if transposed:
        return e.call(f"F.{name}", x, w, b, stride, padding, output_padding, groups, dilation)
    return e.call(f"F.{name}", x, w, b, stride, padding, dilation, groups)


@aten("max_pool2d_with_indices")
def _max_pool(e, x, kernel, stride=(), padding=0, dilation=1, ceil_mode=False):
    return (e.call("F.max_pool2d", x, kernel, list(stride) or None, padding, dilation, ceil_mode), None)


@aten("avg_pool2d")
def _avg_pool(e, x, kernel, stride=(), padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    return e.call("F.avg_pool2d", x, kernel, list(stride) or None, padding, ceil_mode, count_include_pad,
                  divisor_override)


aten("_adaptive_avg_pool2d")(lambda e, x, size: e.call("F.adaptive_avg_pool2d", x, size))


def _up(mode, has_align):
    def fn(e, x, output_size, *rest):
        align = rest[0] if has_align and rest else None
        scales = rest[1 if has_align else 0:]
        if output_size is not None:
            return e.call("F.interpolate", x, size=list(output_size), mode=mode, align_corners=align)
        sf = scales[0] if len(scales) == 1 else list(scales)
        return e.call("F.interpolate", x, scale_factor=sf, mode=mode, align_corners=align)
    return fn


TABLE.update({"upsample_nearest2d": _up("nearest", False), "upsample_nearest1d": _up("nearest", False),
              "upsample_bilinear2d": _up("bilinear", True), "upsample_linear1d": _up("linear", True)})


# ---- Python-level values (sizes under dynamic shapes) ----------------------------------------------------------
aten("sym_size")(lambda e, x, dim: e.call("py.size", x, dim))
aten("sym_numel")(lambda e, x: e.call("py.numel", x))
aten("_local_scalar_dense")(lambda e, x: e.call("py.item", x))
aten("getitem")(lambda e, x, i: e.call("py.getitem", x, i))
PY_OPS = {operator.add: "add", operator.sub: "sub", operator.mul: "mul", operator.floordiv: "floordiv",
          operator.truediv: "truediv", operator.mod: "mod", operator.neg: "neg", operator.pow: "pow",
          operator.eq: "eq", operator.ne: "ne", operator.lt: "lt", operator.le: "le", operator.gt: "gt",
          operator.ge: "ge", math.ceil: "ceil", math.floor: "floor", math.sqrt: "sqrt"}
