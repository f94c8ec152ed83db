"""Parity rows against torch: shape ops, views, indexing (getitem/setitem), gather/scatter, sorting."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import engine
from helpers import ALL, FLOATS, NUMERIC, VIEWS, helper_test_op, needs_device

pytestmark = needs_device
SHAPE_DT = ("float32", "bfloat16", "int64", "uint8", "bool")  # data movement only: one of each kind


def _id(v):
    return repr(v).replace(" ", "")


def perm(shape, seed=0):
    """Distinct values (a permutation), so sort/topk/argmax have no ties."""
    return np.random.default_rng(seed).permutation(int(np.prod(shape))).reshape(shape)


def setitem(x, key, value):
    y = x.clone()
    y[key] = value
    return y


# ---- views and reshapes ------------------------------------------------------------------------------
RESHAPE = [((3, 4), (2, 6)), ((3, 4), (-1,)), ((2, 3, 4), (6, -1)), ((2, 3, 4), (2, 1, 12)), ((), (1,)), ((1,), ()),
           ((0, 4), (4, 0, 3)), ((0, 4), (-1, 2)), ((4, 6), (24,))]


@pytest.mark.parametrize("src,dst", RESHAPE, ids=_id)
@pytest.mark.parametrize("view", [None] + list(VIEWS))
def test_reshape(src, dst, view): helper_test_op([src], lambda x: x.reshape(dst), noncontig=view if len(src) == 2 and 0 not in src else None)
@pytest.mark.parametrize("dt", SHAPE_DT)
@pytest.mark.parametrize("src,dst", RESHAPE, ids=_id)
def test_view(src, dst, dt): helper_test_op([src], lambda x: x.view(dst), dtypes=dt)
@pytest.mark.parametrize("src,dst,view", [((4, 6), (2, 2, 6), "step"), ((4, 6), (2, 2, 3, 2), "expand"), ((4, 6), (2, 2, 6), "T"),
                                          ((4, 6), (1, 4, 1, 6), "step"), ((4, 6), (4, 6, 1), "T")], ids=_id)
def test_view_noncontig(src, dst, view): helper_test_op([src], lambda x: x.view(dst), noncontig=view)
@pytest.mark.parametrize("dt", SHAPE_DT)
@pytest.mark.parametrize("args", [(0, 1), (-1, -2), (0, 2), (1, 1)], ids=_id)
def test_transpose(args, dt): helper_test_op([(2, 3, 4)], lambda x: x.transpose(*args), dtypes=dt)
@pytest.mark.parametrize("view", [None] + list(VIEWS))
@pytest.mark.parametrize("dims", [(1, 0, 2), (2, 0, 1), (-1, 0, 1), (0, 1, 2)], ids=_id)
def test_permute(dims, view): helper_test_op([(4, 6)], lambda x: x.unsqueeze(0).permute(dims), noncontig=view)
@pytest.mark.parametrize("view", [None] + list(VIEWS))
def test_t_T_mT(view): helper_test_op([(4, 6)], lambda x: (x.t(), x.T, x.mT, x.unsqueeze(0).mT, x[0].t()), noncontig=view)
@pytest.mark.parametrize("dim", [0, 1, -1, 2, -3])
def test_unsqueeze(dim): helper_test_op([(3, 4)], lambda x: x.unsqueeze(dim))
@pytest.mark.parametrize("dim", [None, 0, 2, -1, (0, 2), 1])
def test_squeeze(dim): helper_test_op([(1, 3, 1)], lambda x: x.squeeze() if dim is None else x.squeeze(dim))
@pytest.mark.parametrize("args", [(), (1,), (0, 1), (-2, -1), (2, 2)], ids=_id)
def test_flatten(args): helper_test_op([(2, 3, 4)], lambda x: x.flatten(*args), noncontig=None)
@pytest.mark.parametrize("view", VIEWS)
def test_flatten_views(view): helper_test_op([(4, 6)], lambda x: x.flatten(), noncontig=view)
@pytest.mark.parametrize("args", [(1, (2, 2)), (-1, (2, -1)), (0, (1, 2))], ids=_id)
def test_unflatten(args): helper_test_op([(2, 4)], lambda x: x.unflatten(*args))
@pytest.mark.parametrize("shape,target", [((3, 1), (3, 4)), ((1,), (2, 3, 1)), ((3, 1), (2, -1, 5)), ((), (2, 2)), ((1, 4), (0, 4))], ids=_id)
def test_expand(shape, target): helper_test_op([shape], lambda x: (x.expand(*target), x.expand(target).contiguous() + 1))
@pytest.mark.parametrize("args", [(0, 1, 2), (1, -3, 2), (-1, 0, 0), (1, 0, 5)], ids=_id)
def test_narrow(args): helper_test_op([(3, 5)], lambda x: x.narrow(*args))
@pytest.mark.parametrize("args", [(0, 2), (1, -1), (2, 0)], ids=_id)
def test_movedim(args): helper_test_op([(2, 3, 4)], lambda x: x.movedim(*args))
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_unbind_select(dim): helper_test_op([(2, 3, 4)], lambda x: (x.unbind(dim), x.select(dim, 1), x.select(dim, -1)))


# ---- combining and splitting ------------------------------------------------------------------------------
CAT = [([(2, 3), (4, 3)], 0), ([(2, 3), (2, 1), (2, 0)], 1), ([(2, 3, 4), (2, 3, 4)], -1), ([(0,), (3,)], 0),
       ([(2, 3), (0,)], 0), ([(3,)], 0), ([(2, 0), (2, 0)], 1), ([(1, 3), (1, 3), (1, 3)], -2)]


@pytest.mark.parametrize("shapes,dim", CAT, ids=_id)
def test_cat(shapes, dim): helper_test_op(shapes, lambda *xs: torch.cat(xs, dim), lambda *xs: engine.cat(xs, dim))
@pytest.mark.parametrize("dts", [("float32", "float16"), ("int64", "bool"), ("uint8", "int32"), ("bfloat16", "bfloat16"),
                                 ("bool", "bool"), ("int32", "float64")], ids="-".join)
def test_cat_dtypes(dts): helper_test_op([(2, 3), (1, 3)], lambda *xs: torch.cat(xs), lambda *xs: engine.cat(xs), list(dts))
@pytest.mark.parametrize("view", VIEWS)
def test_cat_views(view): helper_test_op([(4, 6), (4, 6)], lambda *xs: torch.cat(xs, 1), lambda *xs: engine.cat(xs, 1), noncontig=view)
@pytest.mark.parametrize("dt", SHAPE_DT)
@pytest.mark.parametrize("dim", [0, 1, 2, -1, -3])
def test_stack(dim, dt): helper_test_op([(2, 3), (2, 3), (2, 3)], lambda *xs: torch.stack(xs, dim), lambda *xs: engine.stack(xs, dim), dt)
@pytest.mark.parametrize("shape,size,dim", [((7, 3), 3, 0), ((7, 3), [2, 5], 0), ((3, 7), 2, -1), ((3, 7), [0, 7, 0], 1),
                                            ((4,), 4, 0), ((4,), 5, 0), ((0, 2), 2, 0), ((5, 0), 2, 1)], ids=_id)
def test_split(shape, size, dim): helper_test_op([shape], lambda x: x.split(size, dim))
@pytest.mark.parametrize("shape,chunks,dim", [((7, 3), 3, 0), ((6, 3), 4, 0), ((3, 5), 2, 1), ((2,), 5, 0), ((0,), 2, 0),
                                              ((2, 0), 3, 1)], ids=_id)
def test_chunk(shape, chunks, dim): helper_test_op([shape], lambda x: x.chunk(chunks, dim))
@pytest.mark.parametrize("dt", SHAPE_DT)
@pytest.mark.parametrize("reps", [(2, 1), (1, 3), (2, 1, 3), (1, 0), (2, 2, 1, 1)], ids=_id)
def test_repeat(reps, dt): helper_test_op([(2, 3)], lambda x: x.repeat(*reps), dtypes=dt)
@pytest.mark.parametrize("view", VIEWS)
def test_repeat_views(view): helper_test_op([(4, 6)], lambda x: x.repeat(2, 1), noncontig=view)
@pytest.mark.parametrize("reps,dim", [(2, 0), (3, 1), (2, None), (0, 1), (3, -1)], ids=_id)
def test_repeat_interleave(reps, dim): helper_test_op([(2, 3)], lambda x: x.repeat_interleave(reps, dim))
def test_repeat_interleave_tensor(): helper_test_op([(2, 3), (2,)], lambda x, r: x.repeat_interleave(r, dim=0), dtypes=["float32", "int64"], vals=[None, [1, 3]])
@pytest.mark.parametrize("dt", SHAPE_DT)
@pytest.mark.parametrize("dims", [(0,), (1,), (-1,), (0, 2), (0, 1, 2)], ids=_id)
def test_flip(dims, dt): helper_test_op([(2, 3, 4)], lambda x: x.flip(dims), dtypes=dt)
@pytest.mark.parametrize("view", VIEWS)
def test_flip_views(view): helper_test_op([(4, 6)], lambda x: x.flip(0), noncontig=view)
@pytest.mark.parametrize("shifts,dims", [(1, 0), (-2, 1), (5, None), ((1, 2), (0, 1)), (7, -1), (0, 0)], ids=_id)
def test_roll(shifts, dims): helper_test_op([(3, 4)], lambda x: x.roll(shifts, dims))
@pytest.mark.parametrize("dt", SHAPE_DT)
@pytest.mark.parametrize("diag", [0, 1, -1, 5, -5])
def test_triu(diag, dt): helper_test_op([(4, 5)], lambda x: x.triu(diag), dtypes=dt)
@pytest.mark.parametrize("dt", SHAPE_DT)
@pytest.mark.parametrize("diag", [0, 1, -1, 5, -5])
def test_tril(diag, dt): helper_test_op([(2, 3, 4)], lambda x: x.tril(diag), dtypes=dt)
@pytest.mark.parametrize("view", VIEWS)
def test_triu_views(view): helper_test_op([(4, 6)], lambda x: x.triu(1), noncontig=view)


PADS = [((2, 3), (1, 2), "constant"), ((2, 3), (1, 2, 0, 1), "constant"), ((1, 2, 3), (0, 0, 0, 0, 1, 1), "constant"),
        ((2, 5), (-1, 2), "constant"), ((2, 3, 5), (2, 1), "reflect"), ((1, 2, 4, 5), (1, 2, 3, 0), "reflect"),
        ((2, 4), (3, 3), "reflect"), ((1, 2, 3, 4), (1, 1, 2, 2), "replicate"), ((2, 3, 4), (2, 1), "circular"),
        ((1, 2, 5), (-1, 2), "reflect")]


@pytest.mark.parametrize("dt", ("float32", "float16", "bfloat16", "float64", "int64"))
@pytest.mark.parametrize("shape,pad,mode", PADS, ids=_id)
def test_pad(shape, pad, mode, dt): helper_test_op([shape], lambda x: F.pad(x, pad, mode), lambda x: engine.functional.pad(x, pad, mode), dt)
@pytest.mark.parametrize("value", [2.5, -1, 0])
def test_pad_value(value): helper_test_op([(2, 3)], lambda x: F.pad(x, (1, 1), value=value), lambda x: engine.functional.pad(x, (1, 1), value=value))
@pytest.mark.parametrize("view", VIEWS)
def test_pad_views(view): helper_test_op([(4, 6)], lambda x: F.pad(x, (1, 1, 2, 0)), lambda x: engine.functional.pad(x, (1, 1, 2, 0)), noncontig=view)


# ---- getitem / setitem --------------------------------------------------------------------------------------
S = slice
KEYS = [1, -1, (1, 2), (2, -1, 0), S(1, 3), S(None, None, 2), (Ellipsis, 1), (None, 1), (1, None, S(None), None),
        (Ellipsis, None), (S(-3, None), 0, S(None, None, 3)), S(10, 20), S(3, 1), (S(None), S(1, 4, 2)), Ellipsis, (),
        (None,), (0, Ellipsis, None, 2), (S(-100, 100),), [0, 2], ([0, 2], [1, 3]), (S(None), [0, 4]), (Ellipsis, [1, 0]),
        ([[0, 1], [2, 3]],), ([-1, 0],), ([0, 1], S(None), [2, 3]), (None, [0, 1]), (1, [0, 2], S(1, 3)), ([3, 3, 3],),
        ([],), True, False, (0, True), (Ellipsis, None, False)]


@pytest.mark.parametrize("key", KEYS, ids=_id)
def test_getitem(key): helper_test_op([(4, 5, 6)], lambda x: x[key])
@pytest.mark.parametrize("dt", ALL)
@pytest.mark.parametrize("key", [(1, S(None, None, 2)), ([1, 0],)], ids=_id)
def test_getitem_dtypes(key, dt): helper_test_op([(4, 5, 6)], lambda x: x[key], dtypes=dt)
@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("key", [(1,), (S(None), S(1, None, 2)), ([0, 2],), (Ellipsis, [1])], ids=_id)
def test_getitem_views(key, view): helper_test_op([(4, 6)], lambda x: x[key], noncontig=view)
@pytest.mark.parametrize("ishape,vals", [((2,), [0, 3]), ((2, 2), [[0, -1], [2, 1]]), ((), 2), ((0,), [])], ids=_id)
@pytest.mark.parametrize("idt", ["int64", "int32"])
def test_getitem_index_tensor(ishape, vals, idt): helper_test_op([(4, 5), ishape], lambda x, i: (x[i], x[:, i], x[i, 1:]), dtypes=["float32", idt], vals=[None, vals])
@pytest.mark.parametrize("mshape", [(4,), (4, 5), (5,)], ids=_id)
def test_getitem_bool_mask(mshape): helper_test_op([(4, 5), mshape], lambda x, m: x[m] if len(mshape) == 2 or mshape == (4,) else x[:, m], dtypes=["float32", "bool"])
def test_getitem_bool_mask_from_compare(): helper_test_op([(4, 5)], lambda x: x[x > 0])
@pytest.mark.parametrize("key", [1, (S(None), 2), S(1, 3), (Ellipsis, S(None, None, 2)), (None, 0), [0, 2], ([0, 1], [2, 3]), (S(None), [4, 0])], ids=_id)
@pytest.mark.parametrize("value", [7, -1.5, True])
def test_setitem_scalar(key, value): helper_test_op([(4, 5)], lambda x: setitem(x, key, value))
@pytest.mark.parametrize("key,vshape", [(1, (5,)), (1, (1,)), (S(1, 3), (2, 5)), (S(1, 3), (5,)), ((S(None), 2), (4,)),
                                        ([0, 2], (2, 5)), ((Ellipsis, S(None, None, 2)), (4, 1))], ids=_id)
@pytest.mark.parametrize("vdt", ["float32", "float16", "int64"])
def test_setitem_tensor(key, vshape, vdt): helper_test_op([(4, 5), vshape], lambda x, v: setitem(x, key, v if isinstance(key, int) or not isinstance(key, list) else v.to(x.dtype)), dtypes=["float32", vdt])  # torch's index_put wants equal dtypes
@pytest.mark.parametrize("dt", ALL)
def test_setitem_dtypes(dt): helper_test_op([(4, 5), (5,)], lambda x, v: setitem(x, (S(None, None, 2),), v), dtypes=[dt, "float32"], low=0, high=3)
def test_setitem_bool_mask(): helper_test_op([(4, 5), (4, 5)], lambda x, m: setitem(x, m, 0.5), dtypes=["float32", "bool"])
def test_setitem_index_tensor(): helper_test_op([(4, 5), (2,), (2, 5)], lambda x, i, v: setitem(x, i, v), dtypes=["float32", "int64", "float32"], vals=[None, [3, 0], None])
@pytest.mark.parametrize("view", VIEWS[:2])
def test_setitem_through_view(view): helper_test_op([(4, 6)], lambda x: setitem(x, (S(1, 3),), 9.0), noncontig=view)
def test_setitem_writes_base(): helper_test_op([(4, 6)], lambda x: (lambda y: (y.T.__setitem__((S(1, 3),), 5.0), y[:, ::2].__setitem__(0, -1.0), y)[-1])(x.clone()))


# ---- index ops ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dt", ALL)
@pytest.mark.parametrize("dim,idx", [(0, [2, 0, 2]), (1, [4]), (-1, []), (1, [4, 0])], ids=_id)  # negative: test_errors
def test_index_select(dim, idx, dt): helper_test_op([(3, 5), (len(idx),)], lambda x, i: torch.index_select(x, dim, i), lambda x, i: engine.index_select(x, dim, i), [dt, "int64"], vals=[None, idx])
@pytest.mark.parametrize("view", VIEWS)
def test_index_select_views(view): helper_test_op([(4, 6), (3,)], lambda x, i: x.index_select(1, i), dtypes=["float32", "int64"], noncontig=[view, None], vals=[None, [5, 0, 1]])
@pytest.mark.parametrize("view", VIEWS)
def test_index_select_rows_of_views(view): helper_test_op([(6, 5), (3,)], lambda x, i: x.index_select(0, i), dtypes=["float32", "int64"], noncontig=[view, None], vals=[None, [4, 0, 4]])
@pytest.mark.parametrize("dt", NUMERIC)
@pytest.mark.parametrize("dim,ishape", [(0, (2, 4)), (1, (3, 2)), (-1, (2, 6)), (0, (0, 4)), (1, (3, 0))], ids=_id)
def test_gather(dim, ishape, dt): helper_test_op([(3, 4), ishape], lambda x, i: x.gather(dim, i), dtypes=[dt, "int64"], vals=[None, np.random.default_rng(1).integers(0, (3, 4)[dim], ishape)])
@pytest.mark.parametrize("view", VIEWS)
def test_gather_views(view): helper_test_op([(4, 6), (4, 2)], lambda x, i: x.gather(1, i), dtypes=["float32", "int64"], noncontig=[view, None], vals=[None, [[0, 5], [1, 1], [2, 3], [4, 0]]])
@pytest.mark.parametrize("dt", NUMERIC)
@pytest.mark.parametrize("dim", [0, 1])
def test_scatter(dim, dt): helper_test_op([(3, 4), (3, 4), (3, 4)], lambda x, i, s: x.scatter(dim, i, s), dtypes=[dt, "int64", dt], vals=[None, np.argsort(perm((3, 4)), axis=dim), None])
def test_scatter_partial(): helper_test_op([(4, 5), (2, 3), (3, 4)], lambda x, i, s: x.scatter(0, i, s), dtypes=["float32", "int64", "float32"], vals=[None, [[0, 1, 2], [3, 0, 1]], None])
@pytest.mark.parametrize("value", [1.5, -2])
def test_scatter_value(value): helper_test_op([(3, 4), (3, 2)], lambda x, i: x.scatter(1, i, value), dtypes=["float32", "int64"], vals=[None, [[0, 3], [1, 2], [2, 2]]])
@pytest.mark.parametrize("dt", ["float32", "float64", "int64"])
def test_scatter_add(dt): helper_test_op([(3, 4), (5, 4), (5, 4)], lambda x, i, s: x.scatter_add(0, i, s), dtypes=[dt, "int64", dt], vals=[None, np.random.default_rng(2).integers(0, 3, (5, 4)), None])
@pytest.mark.parametrize("dt", FLOATS)
@pytest.mark.parametrize("ishape", [(5,), (2, 3), (), (0,)], ids=_id)
def test_embedding(ishape, dt): helper_test_op([ishape, (6, 4)], F.embedding, engine.functional.embedding, ["int64", dt], low=[0, -2], high=[6, 2])


# ---- sorting ----------------------------------------------------------------------------------------------
SORT_DT = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8")


@pytest.mark.parametrize("dt", SORT_DT)
@pytest.mark.parametrize("dim,desc", [(-1, False), (0, False), (1, True), (-1, True)], ids=_id)
def test_sort(dim, desc, dt): helper_test_op([(3, 4, 5)], lambda x: x.sort(dim=dim, descending=desc), dtypes=dt, vals=[perm((3, 4, 5))])
@pytest.mark.parametrize("dt", SORT_DT + ("bool",))
@pytest.mark.parametrize("desc", [False, True])
def test_sort_stable_ties(desc, dt): helper_test_op([(4, 7)], lambda x: x.sort(dim=-1, descending=desc, stable=True), dtypes=dt, low=0, high=3)
@pytest.mark.parametrize("dt", SORT_DT)
@pytest.mark.parametrize("dim,desc", [(-1, False), (0, True)], ids=_id)
def test_argsort(dim, desc, dt): helper_test_op([(3, 4, 5)], lambda x: x.argsort(dim=dim, descending=desc), dtypes=dt, vals=[perm((3, 4, 5))])
@pytest.mark.parametrize("view", VIEWS[:2])
def test_sort_views(view): helper_test_op([(4, 6)], lambda x: x.sort(0), noncontig=view)
@pytest.mark.parametrize("dt", SORT_DT)
@pytest.mark.parametrize("k,dim,largest", [(2, -1, True), (1, 0, True), (3, 1, False), (0, -1, True), (5, -1, False)], ids=_id)
def test_topk(k, dim, largest, dt): helper_test_op([(3, 4, 5)], lambda x: x.topk(k, dim=dim, largest=largest), dtypes=dt, vals=[perm((3, 4, 5))])
@pytest.mark.parametrize("dt", ALL)
def test_nonzero(dt): helper_test_op([(3, 4)], lambda x: x.nonzero(), dtypes=dt, low=-1, high=2)
