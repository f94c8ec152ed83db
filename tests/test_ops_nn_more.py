"""Parity rows against torch.nn.functional for the ops added with issue 13: activations, losses,
distances, normalisations, 1-d and 3-d convolution and pooling, adaptive max pooling, every
interpolate mode, and the argument forms the issue found refused (return_indices, padding_idx,
max_norm, recompute_scale_factor, 1-tuples, unbatched inputs). One row per op, as in test_ops_nn.py.
"""
import pytest
import torch
import torch.nn.functional as F

import engine
import engine.functional as EF
from helpers import FLOATS, INTS, VIEWS, helper_test_op, needs_device

pytestmark = needs_device
ACC = 8  # tolerance scale for rows that accumulate (dot products, windows, statistics), as in test_ops_nn.py


def _id(v):
    return repr(v).replace(" ", "")


def both(name, *args, **kw):
    """(torch fn, engine fn) calling F.<name>(x, *args, **kw) on each side."""
    return (lambda *t: getattr(F, name)(*t, *args, **kw)), (lambda *t: getattr(EF, name)(*t, *args, **kw))


# ---- activations ----------------------------------------------------------------------------------------
ACT = [("leaky_relu", ()), ("leaky_relu", (0.2,)), ("elu", ()), ("elu", (0.5,)), ("selu", ()), ("celu", ()), ("celu", (2.0,)),
       ("relu6", ()), ("hardtanh", ()), ("hardtanh", (-2.0, 0.5)), ("hardswish", ()), ("hardsigmoid", ()), ("mish", ()),
       ("softplus", ()), ("softplus", (2.0, 1.0)), ("softsign", ()), ("logsigmoid", ()), ("tanhshrink", ()),
       ("hardshrink", ()), ("softshrink", (0.3,)), ("threshold", (0.5, -1.0))]


@pytest.mark.parametrize("name,args", ACT, ids=_id)
@pytest.mark.parametrize("dt", FLOATS)
def test_activation(name, args, dt): helper_test_op([(4, 6)], *both(name, *args), dt, low=-6, high=6, ref64=True)
@pytest.mark.parametrize("name", ["relu6", "hardtanh", "softsign", "tanhshrink", "threshold"])
@pytest.mark.parametrize("dt", INTS)
def test_activation_ints(name, dt): helper_test_op([(4, 6)], *both(name, *((1, 0) if name == "threshold" else ((0.0, 3.0) if name == "hardtanh" else ()))), dt, low=-8, high=8)
@pytest.mark.parametrize("view", VIEWS)
def test_activation_views(view): helper_test_op([(4, 6)], lambda x: (F.mish(x), F.elu(x)), lambda x: (EF.mish(x), EF.elu(x)), noncontig=view, low=-4, high=4)
def test_activation_specials(): helper_test_op([(6,)], lambda x: (F.hardswish(x), F.mish(x), F.softplus(x), F.logsigmoid(x), F.selu(x)), lambda x: (EF.hardswish(x), EF.mish(x), EF.softplus(x), EF.logsigmoid(x), EF.selu(x)), vals=[[float("inf"), float("-inf"), float("nan"), 0.0, 50.0, -50.0]])
def test_activation_inplace(): helper_test_op([(3, 4)], lambda x: (F.leaky_relu(x.clone(), 0.1, inplace=True), F.relu6(x.clone(), inplace=True)), lambda x: (EF.leaky_relu(x.clone(), 0.1, inplace=True), EF.relu6(x.clone(), inplace=True)), low=-8, high=8)
@pytest.mark.parametrize("dim", [-1, 0, 1])
@pytest.mark.parametrize("dt", FLOATS)
def test_glu(dim, dt): helper_test_op([(4, 6)], *both("glu", dim), dt, low=-4, high=4)
@pytest.mark.parametrize("shape,w", [((2, 3, 4), (3,)), ((2, 3), (1,)), ((5,), (1,)), ((2, 3, 4, 4), (3,))], ids=_id)
@pytest.mark.parametrize("dt", FLOATS)
def test_prelu(shape, w, dt): helper_test_op([shape, w], F.prelu, EF.prelu, dt, low=-3, high=3)
@pytest.mark.parametrize("dim,dt", [(0, None), (-1, "float64"), (1, None)], ids=_id)
def test_softmin(dim, dt): helper_test_op([(3, 5)], lambda x: F.softmin(x, dim, dtype=dt and torch.float64), lambda x: EF.softmin(x, dim, dtype=dt and engine.float64), low=-4, high=4, scale=2)
def test_softmax_implicit_dim(): helper_test_op([(2, 3, 4)], lambda x: (torch.softmax(x, 1), x.softmax(-1), x.log_softmax(0)), lambda x: (engine.softmax(x, 1), x.softmax(-1), x.log_softmax(0)), scale=2)
@pytest.mark.parametrize("p,training", [(0.5, False), (0.0, True)], ids=_id)
@pytest.mark.parametrize("name", ["dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"])
def test_dropout_inference(name, p, training): helper_test_op([(2, 3, 4, 5)] if name != "dropout1d" else [(2, 3, 4)], *both(name, p, training))


# ---- normalisation and distances ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,affine", [((2, 3, 5), True), ((2, 3, 4, 4), False), ((1, 2, 2, 3, 3), True)], ids=_id)
@pytest.mark.parametrize("dt", FLOATS)
def test_instance_norm(shape, affine, dt): helper_test_op([shape, (shape[1],), (shape[1],)], lambda x, w, b: F.instance_norm(x, weight=w if affine else None, bias=b if affine else None), lambda x, w, b: EF.instance_norm(x, weight=w if affine else None, bias=b if affine else None), dt, scale=ACC)
def test_instance_norm_running(): helper_test_op([(2, 3, 5), (3,), (3,)], lambda x, m, v: F.instance_norm(x, m, v, use_input_stats=False), lambda x, m, v: EF.instance_norm(x, m, v, use_input_stats=False), low=[-2, -1, 0.5], high=[2, 1, 2], scale=ACC)
@pytest.mark.parametrize("shape,size", [((2, 5, 7), 3), ((2, 6, 4, 4), 2), ((1, 4, 2, 3, 3), 5)], ids=_id)
def test_local_response_norm(shape, size): helper_test_op([shape], *both("local_response_norm", size, 1e-2, 0.75, 2.0), scale=ACC)
@pytest.mark.parametrize("p,dim", [(2.0, 1), (1.0, -1), (3.0, 0), (float("inf"), 1)], ids=_id)
def test_normalize(p, dim): helper_test_op([(3, 5)], *both("normalize", p, dim), scale=ACC)
@pytest.mark.parametrize("shapes,dim", [([(4, 5), (4, 5)], 1), ([(3, 4), (4,)], -1), ([(2, 3, 4), (2, 1, 4)], 0)], ids=_id)
def test_cosine_similarity(shapes, dim): helper_test_op(shapes, *both("cosine_similarity", dim), scale=ACC)
@pytest.mark.parametrize("p", [2.0, 1.0, 0.0, 3.0, float("inf")], ids=_id)
@pytest.mark.parametrize("shapes", [[(4, 3), (5, 3)], [(2, 30, 3), (2, 6, 3)], [(2, 1, 4, 3), (3, 5, 3)]], ids=_id)
def test_cdist(p, shapes): helper_test_op(shapes, lambda a, b: torch.cdist(a, b, p), lambda a, b: EF.cdist(a, b, p), scale=ACC)
@pytest.mark.parametrize("p,keepdim", [(2.0, False), (1.0, True), (5.0, False)], ids=_id)
def test_pairwise_distance(p, keepdim): helper_test_op([(4, 6), (4, 6)], *both("pairwise_distance", p, 1e-6, keepdim), scale=ACC)
@pytest.mark.parametrize("momentum", [0.1, 0.5])
def test_batch_norm_training(momentum):
    def run(mod, f, x, m, v):
        m, v = m.clone(), v.clone()
        return f.batch_norm(x, m, v, training=True, momentum=momentum), m, v  # running stats are updated in place
    helper_test_op([(4, 3, 5), (3,), (3,)], lambda x, m, v: run(torch, F, x, m, v), lambda x, m, v: run(engine, EF, x, m, v), low=[-2, -1, 0.5], high=[2, 1, 2], scale=ACC)


# ---- losses ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name,kw", [("mse_loss", {}), ("l1_loss", {}), ("smooth_l1_loss", dict(beta=0.5)), ("smooth_l1_loss", dict(beta=0.0)),
                                     ("huber_loss", dict(delta=0.7))], ids=_id)
@pytest.mark.parametrize("dt", FLOATS)
def test_regression_loss(name, kw, reduction, dt): helper_test_op([(4, 5), (4, 5)], *both(name, reduction=reduction, **kw), dt, scale=ACC, ref64=True)
@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")  # torch's own deprecation notice
@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "batchmean"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div(reduction, log_target): helper_test_op([(4, 5), (4, 5)], lambda a, b: F.kl_div(a.log_softmax(-1), b.softmax(-1).log() if log_target else b.softmax(-1), reduction=reduction, log_target=log_target), lambda a, b: EF.kl_div(EF.log_softmax(a, -1), EF.softmax(b, -1).log() if log_target else EF.softmax(b, -1), reduction=reduction, log_target=log_target), scale=ACC)
CE = [dict(), dict(reduction="sum"), dict(reduction="none"), dict(weight=True), dict(ignore_index=1), dict(label_smoothing=0.2),
      dict(label_smoothing=0.1, weight=True, ignore_index=0), dict(label_smoothing=0.3, reduction="none")]


@pytest.mark.parametrize("kw", CE, ids=_id)
@pytest.mark.parametrize("shape", [(6, 4), (2, 4, 3), (4,)], ids=_id)
def test_cross_entropy(kw, shape):
    kw = dict(kw)
    use_w = kw.pop("weight", False)
    tshape = shape[:1] + shape[2:] if len(shape) > 1 else ()
    def run(f, ones, x, w, t):  # noqa: E306
        return f.cross_entropy(x, t, w if use_w else None, **kw), f.nll_loss(f.log_softmax(x, 1 if len(shape) > 1 else 0), t, w if use_w else None, **{k: v for k, v in kw.items() if k != "label_smoothing"})
    helper_test_op([shape, (4,), tshape], lambda x, w, t: run(F, torch.ones, x, w, t), lambda x, w, t: run(EF, engine.ones, x, w, t), ["float32", "float32", "int64"], low=[-3, 0.5, 0], high=[3, 2, 4], scale=ACC)
@pytest.mark.parametrize("kw", [dict(), dict(label_smoothing=0.25), dict(reduction="none"), dict(weight=True)], ids=_id)
def test_cross_entropy_probabilities(kw):
    kw = dict(kw)
    use_w = kw.pop("weight", False)
    helper_test_op([(5, 4), (5, 4), (4,)], lambda x, p, w: F.cross_entropy(x, p.softmax(1), w if use_w else None, **kw), lambda x, p, w: EF.cross_entropy(x, EF.softmax(p, 1), w if use_w else None, **kw), low=[-3, -3, 0.5], high=[3, 3, 2], scale=ACC)
def test_nll_all_ignored(): helper_test_op([(3, 4), (3,)], lambda x, t: F.nll_loss(x, t * 0 - 100), lambda x, t: EF.nll_loss(x, t * 0 - 100), ["float32", "int64"])


# ---- convolution ------------------------------------------------------------------------------------------------
CONV3D = [dict(), dict(stride=2), dict(padding=1), dict(padding=(1, 0, 2)), dict(padding="same", dilation=2), dict(groups=2),
          dict(stride=(1, 2, 1), dilation=(2, 1, 1))]


@pytest.mark.parametrize("kw", CONV3D, ids=_id)
def test_conv3d(kw): helper_test_op([(2, 4, 5, 6, 7), (6, 4 // kw.get("groups", 1), 3, 2, 3), (6,)], lambda x, w, b: F.conv3d(x, w, b, **kw), lambda x, w, b: EF.conv3d(x, w, b, **kw), scale=ACC)
@pytest.mark.parametrize("kw", [dict(), dict(stride=2), dict(stride=2, padding=1, output_padding=1), dict(groups=2, dilation=2)], ids=_id)
@pytest.mark.parametrize("dt", ["float32", "float16"])
def test_conv_transpose3d(kw, dt): helper_test_op([(1, 4, 3, 4, 3), (4, 6 // kw.get("groups", 1), 2, 3, 2), (6,)], lambda x, w, b: F.conv_transpose3d(x, w, b, **kw), lambda x, w, b: EF.conv_transpose3d(x, w, b, **kw), dt, scale=2 * ACC, ref64=True)
@pytest.mark.parametrize("fn,x,w", [("conv1d", (4, 9), (6, 4, 3)), ("conv2d", (4, 6, 7), (6, 4, 3, 3)), ("conv3d", (4, 4, 5, 6), (6, 4, 2, 2, 2)),
                                    ("conv_transpose1d", (4, 5), (4, 6, 3)), ("conv_transpose2d", (4, 5, 5), (4, 6, 3, 3))], ids=_id)
def test_conv_unbatched(fn, x, w): helper_test_op([x, w], getattr(F, fn), getattr(EF, fn), scale=ACC)
@pytest.mark.parametrize("dt", ["int64", "float64"])
def test_conv_integer_and_1tuples(dt): helper_test_op([(1, 2, 5, 5), (3, 2, 3, 3)], lambda x, w: F.conv2d(x, w, stride=[2], padding=[1], dilation=[1]), lambda x, w: EF.conv2d(x, w, stride=[2], padding=[1], dilation=[1]), dt, low=-4, high=4)


# ---- pooling ----------------------------------------------------------------------------------------------------
POOL = [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=3, stride=2, ceil_mode=True),
        dict(kernel_size=[2], stride=[1], padding=[1]), dict(kernel_size=2, dilation=2)]


@pytest.mark.parametrize("kw", POOL, ids=_id)
@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("dt", ["float32", "int64", "bfloat16"])
def test_max_pool_indices(nd, kw, dt): helper_test_op([(2, 3) + (7, 6, 5)[:nd]], lambda x: getattr(F, f"max_pool{nd}d")(x, **kw, return_indices=True), lambda x: getattr(EF, f"max_pool{nd}d")(x, **kw, return_indices=True), dt, seed=nd)
@pytest.mark.parametrize("kw", [k for k in POOL if "dilation" not in k] + [dict(kernel_size=3, padding=1, count_include_pad=False)], ids=_id)
@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("dt", ["float32", "int64"])
def test_avg_pool(nd, kw, dt): helper_test_op([(2, 3) + (7, 6, 5)[:nd]], lambda x: getattr(F, f"avg_pool{nd}d")(x, **kw), lambda x: getattr(EF, f"avg_pool{nd}d")(x, **kw), dt, low=-9, high=9, scale=ACC)
def test_avg_pool_divisor(): helper_test_op([(2, 3, 5, 5, 4)], lambda x: F.avg_pool3d(x, 2, divisor_override=3), lambda x: EF.avg_pool3d(x, 2, divisor_override=3), scale=ACC)
def test_pool_unbatched(): helper_test_op([(3, 7, 6)], lambda x: (F.max_pool2d(x, 2), F.avg_pool2d(x, 3, 1, 1), F.max_pool1d(x[0], 2), F.adaptive_max_pool2d(x, 2)), lambda x: (EF.max_pool2d(x, 2), EF.avg_pool2d(x, 3, 1, 1), EF.max_pool1d(x[0], 2), EF.adaptive_max_pool2d(x, 2)), scale=ACC)
def test_max_pool_all_minus_inf(): helper_test_op([(1, 1, 3, 3)], lambda x: F.max_pool2d(x / 0 * -1, 3, 1, 1, return_indices=True), lambda x: EF.max_pool2d(x / 0 * -1, 3, 1, 1, return_indices=True), low=1, high=2)
@pytest.mark.parametrize("out", [1, 3, 4, (2, None), 7], ids=_id)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_adaptive_pools(nd, out):
    size = out if nd > 1 or not isinstance(out, tuple) else 2
    size = size if nd != 3 or not isinstance(size, tuple) else (2, None, 3)
    helper_test_op([(2, 3) + (7, 6, 5)[:nd]], lambda x: (getattr(F, f"adaptive_avg_pool{nd}d")(x, size), getattr(F, f"adaptive_max_pool{nd}d")(x, size, True)), lambda x: (getattr(EF, f"adaptive_avg_pool{nd}d")(x, size), getattr(EF, f"adaptive_max_pool{nd}d")(x, size, True)), scale=ACC)


# ---- resampling -------------------------------------------------------------------------------------------------
INTERP = [("nearest", 3, (5,)), ("nearest-exact", 3, (5,)), ("linear", 3, (7,)), ("area", 3, (2,)), ("nearest", 4, (5, 3)),
          ("nearest-exact", 4, (7, 9)), ("bilinear", 4, (7, 3)), ("bicubic", 4, (7, 9)), ("area", 4, (2, 3)),
          ("nearest", 5, (3, 5, 2)), ("nearest-exact", 5, (2, 3, 6)), ("nearest-exact", 4, (8, 10)),
          ("nearest", 5, (8, 10, 6)), ("trilinear", 5, (3, 5, 4)), ("area", 5, (2, 2, 3))]


@pytest.mark.parametrize("mode,nd,size", INTERP, ids=_id)
@pytest.mark.parametrize("align", [None, True])
def test_interpolate_modes(mode, nd, size, align):
    if align and mode not in ("linear", "bilinear", "bicubic", "trilinear"):
        return
    helper_test_op([(2, 3, 4, 5, 3)[:nd]], lambda x: F.interpolate(x, size, mode=mode, align_corners=align), lambda x: EF.interpolate(x, size, mode=mode, align_corners=align), scale=ACC)
@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic", "nearest-exact"])
@pytest.mark.parametrize("sf,recompute", [(1.7, False), (1.7, True), (0.6, None), ((2.0, 0.5), True)], ids=_id)
def test_interpolate_scale_factor(mode, sf, recompute): helper_test_op([(2, 3, 5, 6)], lambda x: F.interpolate(x, scale_factor=sf, mode=mode, recompute_scale_factor=recompute), lambda x: EF.interpolate(x, scale_factor=sf, mode=mode, recompute_scale_factor=recompute), scale=ACC)
@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("size,align", [((9, 21), False), ((9, 21), True), ((30, 5), False), ((17, 13), True)], ids=_id)
def test_interpolate_uint8(mode, size, align): helper_test_op([(2, 3, 17, 13)], lambda x: F.interpolate(x, size, mode=mode, align_corners=align if mode != "nearest" else None), lambda x: EF.interpolate(x, size, mode=mode, align_corners=align if mode != "nearest" else None), "uint8", low=0, high=256)
@pytest.mark.parametrize("dt", ["float16", "bfloat16", "float64"])
def test_interpolate_dtypes(dt): helper_test_op([(2, 3, 5, 6)], lambda x: (F.interpolate(x, (7, 4), mode="bilinear"), F.interpolate(x, (3, 9), mode="bicubic")), lambda x: (EF.interpolate(x, (7, 4), mode="bilinear"), EF.interpolate(x, (3, 9), mode="bicubic")), dt, scale=ACC, ref64=True)
@pytest.mark.filterwarnings("ignore:`nn.functional.upsample")  # deprecated in torch, still torch-named
def test_upsample(): helper_test_op([(2, 3, 4, 5)], lambda x: (F.upsample(x, scale_factor=2), F.upsample_nearest(x, (6, 7)), F.upsample_bilinear(x, scale_factor=2)), lambda x: (EF.upsample(x, scale_factor=2), EF.upsample_nearest(x, (6, 7)), EF.upsample_bilinear(x, scale_factor=2)), scale=ACC)
@pytest.mark.parametrize("pads", [(-4, 5, 0, 0), (0, 0, 2, -4), (5, -4, -4, 3), (1, 1, 1, 1), (-1, -1, 0, 0)], ids=_id)
def test_pad_replicate_negative(pads): helper_test_op([(2, 3, 4, 4)], lambda x: F.pad(x, pads, "replicate"), lambda x: EF.pad(x, pads, "replicate"))


# ---- embedding and one_hot ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(padding_idx=2), dict(padding_idx=-1), dict(max_norm=1.0), dict(max_norm=0.5, norm_type=1.0), dict(scale_grad_by_freq=True, sparse=True)], ids=_id)
def test_embedding_arguments(kw): helper_test_op([(6, 4), (2, 3)], lambda w, i: F.embedding(i, w.clone(), **kw), lambda w, i: EF.embedding(i, w.clone(), **kw), ["float32", "int64"], low=[-2, 0], high=[2, 6])
@pytest.mark.parametrize("shape,n", [((5,), -1), ((), -1), ((2, 3), 7), ((2, 3), -1)], ids=_id)
def test_one_hot(shape, n): helper_test_op([shape], lambda x: F.one_hot(x, n), lambda x: EF.one_hot(x, n), "int64", low=0, high=5)
