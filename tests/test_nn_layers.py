"""engine.nn layers (conv, batchnorm, activation, pooling, rnn, mha) against their torch.nn twins.

Each row builds the torch layer with random weights, loads its state dict into the engine layer by
key (the engine must accept torch's names and shapes as they are) and compares outputs with the
per-dtype tolerances of migration.tolerances (scaled for accumulating layers)."""
from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest
import torch
from torch import nn

import engine
from engine.nn.activation import GELU, Dropout, Flatten, Identity, ReLU, Sigmoid, SiLU, Softmax, Tanh
from engine.nn.batchnorm import BatchNorm1d, BatchNorm2d, GroupNorm
from engine.nn.conv import Conv1d, Conv2d, ConvTranspose1d, ConvTranspose2d
from engine.nn.mha import MultiheadAttention
from engine.nn.pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d, Upsample
from engine.nn.rnn import LSTM
from migration import tolerances

ROOT = pathlib.Path(__file__).resolve().parents[1]
MINE = ["conv.py", "batchnorm.py", "activation.py", "pooling.py", "rnn.py", "mha.py"]


def randomize(tm: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(tm.named_parameters()) + list(tm.named_buffers()):
            if not p.is_floating_point():
                continue
            if name.endswith("running_var"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return tm.eval()


def load(em, tm):
    em.load_state_dict({k: engine.tensor(v.detach().numpy()) for k, v in tm.state_dict().items()})
    return em


def flat(o):
    if isinstance(o, (tuple, list)):
        return [x for a in o for x in flat(a)]
    return [o]


def check(em, tm, *inputs, scale=10.0, **kwargs):
    """Run both on the same numpy inputs; outputs (nested tuples too) must match."""
    tt = [torch.from_numpy(x) if isinstance(x, np.ndarray) else x for x in inputs]
    et = [engine.tensor(x) if isinstance(x, np.ndarray) else x for x in inputs]
    tk = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    ek = {k: engine.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    with torch.no_grad():
        out_t = flat(tm(*tt, **tk))
    out_e = flat(em(*et, **ek))
    assert len(out_t) == len(out_e)
    rtol, atol = tolerances.get("float32", scale)
    for a, b in zip(out_e, out_t):
        if b is None:
            assert a is None
            continue
        assert tuple(a.shape) == tuple(b.shape)
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=rtol, atol=atol)
    return out_e, out_t


def rnd(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_layer_files_never_import_torch():
    for f in MINE:
        tree = ast.parse((ROOT / "engine" / "nn" / f).read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "torch" or n.startswith("torch.") for n in names), f"{f} imports torch"


CONV2D = [
    dict(in_channels=4, out_channels=6, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 1), padding=(1, 0), dilation=2, bias=False),
    dict(in_channels=4, out_channels=6, kernel_size=3, groups=2, padding="same"),
    dict(in_channels=4, out_channels=4, kernel_size=3, groups=4, padding=1, padding_mode="reflect"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, padding_mode="circular"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="replicate"),
]


@pytest.mark.parametrize("kw", CONV2D, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items() if k != "in_channels"))
def test_conv2d(kw):
    tm = randomize(nn.Conv2d(**kw))
    check(load(Conv2d(**kw), tm), tm, rnd(2, 4, 9, 8))


def test_conv2d_unbatched():
    tm = randomize(nn.Conv2d(4, 6, 3))
    check(load(Conv2d(4, 6, 3), tm), tm, rnd(4, 7, 7))


@pytest.mark.parametrize("kw", [dict(kernel_size=3), dict(kernel_size=5, stride=2, padding=2, dilation=1),
                                dict(kernel_size=3, dilation=2, groups=2), dict(kernel_size=3, padding="same"),
                                dict(kernel_size=3, padding=1, padding_mode="reflect")], ids=str)
def test_conv1d(kw):
    tm = randomize(nn.Conv1d(4, 6, **kw))
    check(load(Conv1d(4, 6, **kw), tm), tm, rnd(2, 4, 13))


@pytest.mark.parametrize("kw", [dict(kernel_size=3), dict(kernel_size=3, stride=2, padding=1, output_padding=1),
                                dict(kernel_size=4, stride=2, groups=2, bias=False), dict(kernel_size=3, dilation=2)],
                         ids=str)
def test_conv_transpose2d(kw):
    tm = randomize(nn.ConvTranspose2d(4, 6, **kw))
    check(load(ConvTranspose2d(4, 6, **kw), tm), tm, rnd(2, 4, 5, 6))


def test_conv_transpose2d_output_size():
    tm = randomize(nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1))
    em = load(ConvTranspose2d(4, 6, 3, stride=2, padding=1), tm)
    check(em, tm, rnd(2, 4, 5, 6), output_size=(10, 12))
    with pytest.raises(ValueError):
        em(engine.tensor(rnd(2, 4, 5, 6)), output_size=(20, 12))


@pytest.mark.parametrize("kw", [dict(kernel_size=3), dict(kernel_size=4, stride=2, padding=1, output_padding=1),
                                dict(kernel_size=3, stride=3, groups=2)], ids=str)
def test_conv_transpose1d(kw):
    tm = randomize(nn.ConvTranspose1d(4, 6, **kw))
    check(load(ConvTranspose1d(4, 6, **kw), tm), tm, rnd(2, 4, 7))


def test_conv_weight_layouts_match_torch():
    assert Conv2d(4, 6, 3, groups=2).weight.shape == nn.Conv2d(4, 6, 3, groups=2).weight.shape
    assert ConvTranspose2d(4, 6, 3, groups=2).weight.shape == nn.ConvTranspose2d(4, 6, 3, groups=2).weight.shape
    assert Conv1d(4, 6, 3, bias=False).bias is None
    with pytest.raises(ValueError):
        Conv2d(3, 6, 3, groups=2)
    with pytest.raises(ValueError):
        Conv2d(4, 6, 3, padding_mode="mirror")


def test_batchnorm2d_keys_and_values():
    tm = randomize(nn.BatchNorm2d(5))
    em = BatchNorm2d(5)
    assert list(em.state_dict()) == list(tm.state_dict())  # incl. num_batches_tracked
    check(load(em, tm), tm, rnd(2, 5, 4, 3))


@pytest.mark.parametrize("shape", [(3, 5), (3, 5, 7)])
def test_batchnorm1d(shape):
    tm = randomize(nn.BatchNorm1d(5, eps=1e-3))
    check(load(BatchNorm1d(5, eps=1e-3), tm), tm, rnd(*shape))


def test_batchnorm_without_running_stats_uses_batch_statistics():
    tm = randomize(nn.BatchNorm2d(3, track_running_stats=False, affine=False))
    em = load(BatchNorm2d(3, track_running_stats=False, affine=False), tm)
    assert list(em.state_dict()) == []
    check(em, tm, rnd(4, 3, 5, 5))


@pytest.mark.parametrize("groups,affine", [(1, True), (2, True), (6, False)])
def test_group_norm(groups, affine):
    tm = randomize(nn.GroupNorm(groups, 6, affine=affine))
    check(load(GroupNorm(groups, 6, affine=affine), tm), tm, rnd(2, 6, 4, 5))


@pytest.mark.parametrize("tm,em", [
    (nn.ReLU(), ReLU()), (nn.GELU(), GELU()), (nn.GELU("tanh"), GELU("tanh")), (nn.SiLU(), SiLU()),
    (nn.Tanh(), Tanh()), (nn.Sigmoid(), Sigmoid()), (nn.Softmax(dim=1), Softmax(dim=1)),
    (nn.Softmax(dim=-1), Softmax(dim=-1)), (nn.Identity(3, x=1), Identity(3, x=1)), (nn.Dropout(0.3), Dropout(0.3)),
    (nn.Flatten(), Flatten()), (nn.Flatten(0, 2), Flatten(0, 2)),
], ids=lambda m: repr(m))
def test_activations(tm, em):
    check(em, tm.eval(), rnd(2, 3, 4, 5), scale=1.0)


def test_activation_arguments():
    with pytest.raises(ValueError):
        Softmax()
    with pytest.raises(ValueError):
        GELU("erf")
    with pytest.raises(ValueError):
        Dropout(1.5)


@pytest.mark.parametrize("tm,em", [
    (nn.MaxPool2d(2), MaxPool2d(2)), (nn.MaxPool2d(3, 2, 1), MaxPool2d(3, 2, 1)),
    (nn.MaxPool2d(3, 2, ceil_mode=True), MaxPool2d(3, 2, ceil_mode=True)),
    (nn.AvgPool2d(2), AvgPool2d(2)), (nn.AvgPool2d(3, 2, 1, count_include_pad=False), AvgPool2d(3, 2, 1, count_include_pad=False)),
    (nn.AdaptiveAvgPool2d(1), AdaptiveAvgPool2d(1)), (nn.AdaptiveAvgPool2d((3, 2)), AdaptiveAvgPool2d((3, 2))),
    (nn.Upsample(scale_factor=2), Upsample(scale_factor=2)), (nn.Upsample(size=(5, 9)), Upsample(size=(5, 9))),
    (nn.Upsample(scale_factor=2, mode="bilinear"), Upsample(scale_factor=2, mode="bilinear")),
    (nn.Upsample(size=(5, 9), mode="bilinear", align_corners=True), Upsample(size=(5, 9), mode="bilinear", align_corners=True)),
], ids=lambda m: repr(m))
def test_pooling(tm, em):
    check(em, tm, rnd(2, 3, 7, 8), scale=1.0)


@pytest.mark.parametrize("kw", [
    dict(), dict(num_layers=2), dict(batch_first=True), dict(bidirectional=True),
    dict(num_layers=2, bidirectional=True, batch_first=True), dict(bias=False), dict(proj_size=3),
    dict(num_layers=2, bidirectional=True, proj_size=3),
], ids=str)
def test_lstm(kw):
    tm = randomize(nn.LSTM(5, 7, **kw))
    em = LSTM(5, 7, **kw)
    assert list(em.state_dict()) == list(tm.state_dict())  # weight_ih_l0, ..., _reverse, weight_hr
    x = rnd(4, 3, 5)  # (L, N, in), or (N, L, in) with batch_first
    check(load(em, tm), tm, x)


def test_lstm_initial_state_and_unbatched():
    tm = randomize(nn.LSTM(5, 7, num_layers=2, bidirectional=True))
    em = load(LSTM(5, 7, num_layers=2, bidirectional=True), tm)
    h0, c0 = rnd(4, 3, 7, seed=1), rnd(4, 3, 7, seed=2)
    out_t = tm(torch.from_numpy(rnd(6, 3, 5)), (torch.from_numpy(h0), torch.from_numpy(c0)))
    out_e = em(engine.tensor(rnd(6, 3, 5)), (engine.tensor(h0), engine.tensor(c0)))
    for a, b in zip(flat(out_e), flat(out_t)):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-5, atol=1e-5)
    check(em, tm, rnd(6, 5))  # unbatched (L, in)


def test_lstm_gate_order_is_i_f_g_o():
    """Rows 4H are i, f, g, o: with g's row all zero, g = tanh(0) = 0, so c (from c0 = 0) stays 0 and
    h = 0 whatever the other rows hold; any other order would feed a nonzero row into g."""
    em = LSTM(1, 1)
    em.bias_ih_l0 = engine.tensor(np.array([1.0, 50.0, 0.0, 1.0], np.float32))  # i, f, g, o
    em.weight_ih_l0 = engine.tensor(np.array([[1.0], [2.0], [0.0], [1.0]], np.float32))
    out, (h, c) = em(engine.tensor(np.ones((3, 1, 1), np.float32)))
    assert np.all(np.abs(out.numpy()) < 1e-7) and np.all(np.abs(c.numpy()) < 1e-7)
    em.bias_ih_l0 = engine.tensor(np.array([1.0, 50.0, 0.5, 1.0], np.float32))
    out, (h, c) = em(engine.tensor(np.ones((3, 1, 1), np.float32)))
    assert np.all(out.numpy() > 0.1)


MHA = [
    dict(), dict(batch_first=True), dict(bias=False), dict(add_bias_kv=True), dict(add_zero_attn=True),
    dict(kdim=6, vdim=3), dict(kdim=6, vdim=3, add_bias_kv=True, add_zero_attn=True, batch_first=True),
]


@pytest.mark.parametrize("kw", MHA, ids=str)
@pytest.mark.parametrize("need_weights,average", [(True, True), (True, False), (False, True)])
def test_mha(kw, need_weights, average):
    tm = randomize(nn.MultiheadAttention(8, 2, **kw))
    em = MultiheadAttention(8, 2, **kw)
    assert list(em.state_dict()) == list(tm.state_dict())
    load(em, tm)
    bf = kw.get("batch_first", False)
    shape = (lambda L: (2, L) if bf else (L, 2))
    q = rnd(*shape(4), 8, seed=1)
    k = rnd(*shape(5), kw.get("kdim", 8), seed=2)
    v = rnd(*shape(5), kw.get("vdim", 8), seed=3)
    check(em, tm, q, k, v, need_weights=need_weights, average_attn_weights=average)


@pytest.mark.parametrize("mask_kind", ["bool", "float", "kpm", "both", "3d"])
def test_mha_masks(mask_kind):
    tm = randomize(nn.MultiheadAttention(8, 2, batch_first=True))
    em = load(MultiheadAttention(8, 2, batch_first=True), tm)
    x = rnd(2, 5, 8)
    causal = np.triu(np.ones((5, 5), bool), 1)  # True = may not attend (torch's MHA convention)
    kpm = np.zeros((2, 5), bool)
    kpm[1, 3:] = True
    kw = {}
    if mask_kind == "bool":
        kw = dict(attn_mask=causal, is_causal=True)
    elif mask_kind == "float":
        kw = dict(attn_mask=np.where(causal, -1e4, 0.0).astype(np.float32))
    elif mask_kind == "kpm":
        kw = dict(key_padding_mask=kpm)
    elif mask_kind == "both":
        kw = dict(attn_mask=causal, key_padding_mask=kpm)
    else:
        kw = dict(attn_mask=rnd(4, 5, 5, seed=9))
    check(em, tm, x, x, x, **kw)


def test_mha_unbatched_and_errors():
    tm = randomize(nn.MultiheadAttention(8, 2))
    em = load(MultiheadAttention(8, 2), tm)
    check(em, tm, rnd(4, 8), rnd(5, 8), rnd(5, 8))
    with pytest.raises(ValueError):
        em(*[engine.tensor(rnd(4, 2, 8))] * 3, is_causal=True)  # torch also demands the mask
    with pytest.raises(ValueError):
        MultiheadAttention(8, 3)
