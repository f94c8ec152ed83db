"""Property tests for layout/view math (hypothesis).

Random shapes and chains of views (transpose, permute, narrow, stepped slices, select, unsqueeze,
squeeze, expand, view) must equal numpy's views elementwise, keep torch's strides, and never copy
(same Storage, shared memory); diagonal and movedim are views too. Layout.view returns None exactly when torch's .view raises, and
broadcast_shapes agrees with numpy and torch.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine
from engine.layout import Layout, ShapeError, broadcast_shapes, contiguous_strides
from helpers import DEVICE, cpu_only, needs_device

pytestmark = needs_device
# example counts come from the hypothesis profile (tests/conftest.py: "engine" by default, 150
# examples; `--hypothesis-profile=engine-deep` for 3000)
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
shapes = st.lists(st.integers(0, 4) | st.integers(1, 4), min_size=0, max_size=4).map(tuple)
OPS = ("transpose", "permute", "narrow", "slice", "select", "unsqueeze", "squeeze", "expand", "view", "flatten",
       "diagonal", "movedim")


def _factor(data, n, max_dims=4):
    """A random shape with numel n (n > 0), or a shape containing 0 for n == 0."""
    if n == 0:
        k = data.draw(st.integers(1, 3))
        dims = [data.draw(st.integers(1, 3)) for _ in range(k)]
        dims[data.draw(st.integers(0, k - 1))] = 0
        return tuple(dims)
    dims, rest = [], n
    while rest > 1 and len(dims) < max_dims - 1:
        divs = [d for d in range(1, rest + 1) if rest % d == 0]
        d = data.draw(st.sampled_from(divs))
        dims.append(d)
        rest //= d
    dims.append(rest)
    if data.draw(st.booleans()):
        dims.insert(data.draw(st.integers(0, len(dims))), 1)
    return tuple(dims)


def step(data, e, t, a):
    """Apply one random view op to the engine tensor e, the torch tensor t and the numpy array a."""
    op = data.draw(st.sampled_from(OPS))
    nd = e.ndim
    dim = lambda extra=0: data.draw(st.integers(-(nd + extra), nd + extra - 1))  # noqa: E731
    if op == "transpose" and nd:
        d0, d1 = dim(), dim()
        return e.transpose(d0, d1), t.transpose(d0, d1), np.swapaxes(a, d0, d1)
    if op == "permute" and nd:
        p = data.draw(st.permutations(range(nd)))
        return e.permute(p), t.permute(p), a.transpose(p)
    if op == "narrow" and nd:
        d = dim()
        n = e.shape[d]
        start = data.draw(st.integers(0, n))
        length = data.draw(st.integers(0, n - start))
        sl = [slice(None)] * nd
        sl[d] = slice(start, start + length)
        return e.narrow(d, start, length), t.narrow(d, start, length), a[tuple(sl)]
    if op == "slice" and nd:
        d = dim() % nd
        n = e.shape[d]
        s = slice(data.draw(st.none() | st.integers(-n - 2, n + 2)), data.draw(st.none() | st.integers(-n - 2, n + 2)),
                  data.draw(st.integers(1, 3)))
        key = (slice(None),) * d + (s,)
        return e[key], t[key], a[key]
    if op == "select" and nd:
        d = dim() % nd
        n = e.shape[d]
        if n == 0:
            return e, t, a
        i = data.draw(st.integers(-n, n - 1))
        return e.select(d, i), t.select(d, i), np.take(a, i, axis=d)
    if op == "unsqueeze" and nd < 5:
        d = dim(1)
        return e.unsqueeze(d), t.unsqueeze(d), np.expand_dims(a, d if d >= 0 else d + nd + 1)
    if op == "squeeze" and nd:
        d = dim()
        return e.squeeze(d), t.squeeze(d), (np.squeeze(a, d) if a.shape[d] == 1 else a)
    if op == "expand":
        lead = data.draw(st.integers(0, 1)) if nd < 4 else 0
        target = [data.draw(st.integers(0, 3)) for _ in range(lead)]
        target += [data.draw(st.integers(0, 3)) if n == 1 else data.draw(st.sampled_from([n, -1])) for n in e.shape]
        real = tuple(target[i] if target[i] != -1 else e.shape[i - lead] for i in range(len(target)))
        return e.expand(tuple(target)), t.expand(tuple(target)), np.broadcast_to(a, real)
    if op == "view":
        shape = _factor(data, e.numel())
        lay = e.layout.view(shape)
        try:
            tv = t.view(shape)
        except RuntimeError:
            assert lay is None, f"engine views {e.shape} strides {e.stride()} as {shape}; torch refuses"
            return e, t, a
        assert lay is not None, f"torch views {tuple(t.shape)} strides {t.stride()} as {shape}; engine refuses"
        return e.view(shape), tv, a.reshape(shape)
    if op == "diagonal" and nd >= 2:
        d0, d1 = data.draw(st.lists(st.integers(-nd, nd - 1), min_size=2, max_size=2, unique_by=lambda d: d % nd))
        off = data.draw(st.integers(-3, 3))
        return e.diagonal(off, d0, d1), t.diagonal(off, d0, d1), np.diagonal(a, off, d0, d1)
    if op == "movedim" and nd:
        k = data.draw(st.integers(1, nd))
        src = data.draw(st.permutations(range(nd)))[:k]
        dst = data.draw(st.permutations(range(nd)))[:k]
        return e.movedim(src, dst), t.movedim(src, dst), np.moveaxis(a, src, dst)
    if op == "flatten" and nd and e.is_contiguous():
        return e.flatten(), t.flatten(), a.reshape(-1)
    return e, t, a


def check(e, t, a, base):
    assert tuple(e.shape) == tuple(t.shape) == a.shape
    assert np.array_equal(e.numpy() if DEVICE.type == "cpu" else e.cpu().numpy(), a)
    assert e.storage is base.storage, "a view must reuse the storage"
    # strides equal torch's wherever they matter (size-1 and size-0 dims may differ harmlessly)
    if e.numel():
        for n, se, st_ in zip(e.shape, e.stride(), t.stride()):
            assert n == 1 or se == st_, f"strides {e.stride()} vs torch {t.stride()} for shape {e.shape}"
        assert e.is_contiguous() == t.is_contiguous() or e.numel() <= 1
        assert e.data_ptr() - base.data_ptr() == t.storage_offset() * e.element_size()


@SETTINGS
@given(data=st.data(), shape=shapes, n_ops=st.integers(1, 6))
def test_view_chains_match_numpy_and_torch(data, shape, n_ops):
    a = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
    base = engine.tensor(a, device=DEVICE)
    e, t = base, torch.from_numpy(a.copy())
    for _ in range(n_ops):
        e, t, a = step(data, e, t, a)
        check(e, t, a, base)


@cpu_only
@SETTINGS
@given(data=st.data(), shape=shapes, n_ops=st.integers(1, 5))
def test_views_share_memory(data, shape, n_ops):
    """Writing through a view writes the base: nothing was copied (CPU: numpy views)."""
    a = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
    base = engine.tensor(a)
    e, t = base, torch.from_numpy(a.copy())
    for _ in range(n_ops):
        e, t, a = step(data, e, t, a)
    if e.numel():
        assert np.shares_memory(e.numpy(), base.numpy())
        if 0 not in e.stride():  # expanded views alias themselves: torch refuses writes there too
            e.fill_(-1)
            t.fill_(-1)
            torch_base = t._base if t._base is not None else t
            assert np.array_equal(base.numpy(), torch_base.numpy().reshape(base.shape))


@SETTINGS
@given(data=st.data(), shape=shapes)
def test_layout_view_none_iff_torch_raises(data, shape):
    """From a random non-contiguous layout, Layout.view is None exactly when torch.Tensor.view raises."""
    a = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
    t = torch.from_numpy(a)
    lay = Layout.contiguous(shape)
    for _ in range(data.draw(st.integers(1, 3))):
        if lay.ndim and data.draw(st.booleans()):
            p = data.draw(st.permutations(range(lay.ndim)))
            lay, t = lay.permute(p), t.permute(p)
        elif lay.ndim:
            d = data.draw(st.integers(0, lay.ndim - 1))
            stp = data.draw(st.integers(1, 3))
            lay, t = lay.slice(d, None, None, stp), t[(slice(None),) * d + (slice(None, None, stp),)]
    assert lay.shape == tuple(t.shape) and (lay.numel == 0 or all(
        n == 1 or s == ts for n, s, ts in zip(lay.shape, lay.strides, t.stride())))
    target = _factor(data, lay.numel)
    got = lay.view(target)
    try:
        tv = t.view(target)
    except RuntimeError:
        assert got is None, f"{lay} -> {target}: torch refuses, engine gives {got}"
        return
    assert got is not None, f"{lay} -> {target}: torch gives strides {tv.stride()}, engine refuses"
    if tv.numel():
        assert all(n == 1 or s == ts for n, s, ts in zip(target, got.strides, tv.stride())), (got, tv.stride())


@SETTINGS
@given(st.lists(shapes, min_size=1, max_size=4))
def test_broadcast_shapes_matches_numpy_and_torch(shape_list):
    try:
        want = np.broadcast_shapes(*shape_list)
    except ValueError:
        with pytest.raises(ShapeError, match="do not broadcast"):
            broadcast_shapes(*shape_list)
        with pytest.raises(RuntimeError):
            torch.broadcast_shapes(*shape_list)
        return
    assert broadcast_shapes(*shape_list) == tuple(want) == tuple(torch.broadcast_shapes(*shape_list))


@SETTINGS
@given(st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple), st.data())
def test_broadcastable_pairs(shape, data):
    """Pairs built to broadcast (dims replaced by 1 or dropped) always do, in both orders."""
    other = tuple(1 if data.draw(st.booleans()) else n for n in shape)[data.draw(st.integers(0, len(shape))):]
    assert broadcast_shapes(shape, other) == broadcast_shapes(other, shape) == shape


@given(shapes)
@SETTINGS
def test_contiguous_layout(shape):
    lay = Layout.contiguous(shape)
    t = torch.empty(shape)
    assert lay.is_contiguous()
    assert all(n == 1 or s == ts for n, s, ts in zip(shape, lay.strides, t.stride()))
    assert lay.numel == t.numel() and lay.span() == (t.numel() if t.numel() else 0)
    assert contiguous_strides(shape) == lay.strides


def test_layout_errors_name_shapes():
    lay = Layout.contiguous((2, 3))
    with pytest.raises(ShapeError, match=r"expand: size 3 at dim 1 cannot become 4 \(tensor \(2, 3\), target \(2, 4\)\)"):
        lay.expand((2, 4))
    with pytest.raises(ShapeError, match=r"narrow\(dim=1, start=2, length=2\) out of range for size 3"):
        lay.narrow(1, 2, 2)
    with pytest.raises(ShapeError, match=r"dim 2 out of range for a tensor of 2 dims"):
        lay.transpose(0, 2)
    with pytest.raises(ShapeError, match=r"permute dims \(0, 0\) are not a permutation of 2 dims"):
        lay.permute((0, 0))
    with pytest.raises(ShapeError, match="step must be positive"):
        lay.slice(0, None, None, -1)
    with pytest.raises(ShapeError, match=r"shape \(4, 2\) is invalid for input of size 6"):
        lay.view((4, 2))
    with pytest.raises(ShapeError, match=r"only one dim can be -1"):
        lay.view((-1, -1))
