"""numpy backend: large elementwise passes split over idle cores (engine/backends/numpy_threads.split) give the
same results as one pass; here with the thresholds lowered so tiny arrays split, and the machine seen as idle."""
import pytest
import torch.nn.functional as F

import engine.functional as EF
from helpers import helper_test_op


@pytest.fixture(autouse=True)
def split_small(monkeypatch):
    from engine.backends import numpy_threads
    from engine.backends.numpy_threads import ROW_THREADS
    from engine.backends.blas_threads import BLAS_THREADS
    monkeypatch.setattr(numpy_threads, "SPLIT_MIN", 16)
    monkeypatch.setattr(numpy_threads, "SPLIT_ALIGN", 1)
    monkeypatch.setattr(ROW_THREADS, "cores", 3)
    monkeypatch.setattr(BLAS_THREADS, "busy", lambda: False)
    monkeypatch.setattr(BLAS_THREADS, "spinning", lambda: False)


@pytest.mark.parametrize("op", ["elu", "silu", "sigmoid"])
def test_unary_split(op): helper_test_op([(5, 7, 9)], getattr(F, op), getattr(EF, op), low=-100, high=100)
def test_binary_split(): helper_test_op([(4, 3, 11), (4, 3, 11)], lambda a, b: (a + b, a * b, a - 2.5), lambda a, b: (a + b, a * b, a - 2.5))
def test_binary_split_overflow(): helper_test_op([(4, 40)], lambda a: (a * 1e38, a / 0.0), lambda a: (a * 1e38, a / 0.0), low=-10, high=10)  # inf without a warning in the pieces
@pytest.mark.parametrize("mode", ["constant", "reflect", "circular"])
def test_pad_split(mode): helper_test_op([(3, 4, 10)], lambda x: F.pad(x, (2, 3), mode=mode), lambda x: EF.pad(x, (2, 3), mode=mode))
def test_pad_split_2d(): helper_test_op([(2, 5, 6, 7)], lambda x: F.pad(x, (1, 2, 3, 1), mode="reflect"), lambda x: EF.pad(x, (1, 2, 3, 1), mode="reflect"))
@pytest.mark.parametrize("act", [None, "silu"])
@pytest.mark.parametrize("wshape,stride", [((6, 4, 3, 3), 1), ((6, 4, 1, 1), 1), ((5, 4, 3, 2), 2)], ids=str)
def test_conv2d_split(wshape, stride, act, monkeypatch):  # im2col rows, bias and SiLU over channel rows on the pieces
    from engine.backends.numpy_conv import ConvKernels
    monkeypatch.setattr(ConvKernels, "SHIFTED", False)  # stride 1 would take the per-tap GEMMs
    helper_test_op([(2, 4, 9, 8), wshape, wshape[:1]], lambda x, w, b: (F.silu if act else (lambda y: y))(F.conv2d(x, w, b, stride=stride, padding=1)),
                   lambda x, w, b: EF.conv2d(x, w, b, stride=stride, padding=1, act=act), scale=8)
def test_conv2d_bands_split(monkeypatch):  # im2col + GEMM in bands, each core a range of bands (its GEMMs on one OpenBLAS thread)
    from engine.backends.numpy_conv import ConvKernels
    monkeypatch.setattr(ConvKernels, "SHIFTED", False)  # stride 1 would take the per-tap GEMMs
    monkeypatch.setattr(ConvKernels, "CONV_BLOCK", 64)
    monkeypatch.setattr(ConvKernels, "CONV_WIDE", 200)
    helper_test_op([(2, 3, 9, 7), (5, 3, 3, 3), (5,)], lambda x, w, b: F.silu(F.conv2d(x, w, b, padding=1)), lambda x, w, b: EF.conv2d(x, w, b, padding=1, act="silu"), scale=8)
    helper_test_op([(1, 4, 8, 8), (6, 4, 3, 3)], lambda x, w: F.conv2d(x, w, stride=2), lambda x, w: EF.conv2d(x, w, stride=2), scale=8)
# 1-d convs on an idle machine: bands of positions (or of output channels, transposed) on every core, OpenBLAS on one
# thread in each; the same values as one piece (the products' sums run in the same order)
@pytest.mark.parametrize("wshape,kw", [((5, 12, 3), dict(padding=2, dilation=2)), ((7, 4, 1), dict()), ((6, 3, 7), dict(padding=3)),
                                       ((8, 4, 4), dict(stride=2)), ((9, 4, 10), dict(stride=5, padding=4)), ((12, 12, 1), dict())], ids=str)
def test_conv1d_split(wshape, kw, monkeypatch):  # stacked taps (O <= C), 1x1 (a view, no copy), narrow C, strided (at least 256 positions a band)
    from engine.backends.numpy_conv import ConvKernels
    monkeypatch.setattr(ConvKernels, "CONV_BAND_MIN", 4)
    monkeypatch.setattr(ConvKernels, "CONV_BLOCK", 64)
    helper_test_op([(2, wshape[1], 1100), wshape, wshape[:1]], lambda x, w, b: F.conv1d(x, w, b, **kw), lambda x, w, b: EF.conv1d(x, w, b, **kw), scale=8)
@pytest.mark.parametrize("kw", [dict(stride=4), dict(stride=3, padding=2, output_padding=1, dilation=2)], ids=str)
def test_conv_transpose1d_split(kw, monkeypatch):  # each core a block of output channels
    from engine.backends.numpy_conv import ConvKernels
    monkeypatch.setattr(ConvKernels, "CONV_BAND_MIN", 4)
    monkeypatch.setattr(ConvKernels, "CONV_BLOCK", 16)
    helper_test_op([(2, 6, 23), (6, 5, 8), (5,)], lambda x, w, b: F.conv_transpose1d(x, w, b, **kw), lambda x, w, b: EF.conv_transpose1d(x, w, b, **kw), scale=8)
