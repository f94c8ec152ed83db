"""Parity rows against torch for the ops added with issue 13 (elementwise, scans, linear algebra, indexing,
set ops, creation), the argument forms the issue found refused or crashing, and the engine-input cases
of issue 11. One row per op, as in test_ops.py; torch's OpInfo samples (test_opinfo.py) cover the
same ops from an oracle the engine's authors did not write.
"""
import numpy as np
import pytest
import torch

import engine
import engine.functional as EF
from helpers import (ALL, DEVICE, FLOATS, INTS, NUMERIC, B, E, TORCH, U, bcases, cases, compare, helper_test_op,
                     needs_device)

pytestmark = needs_device
ACC = 8  # tolerance scale for rows that accumulate (as in test_ops_nn.py)


def _id(v):
    return repr(v).replace(" ", "")


# ---- elementwise: unary ------------------------------------------------------------------------------------
UNARY = [("exp2", -3, 3), ("log10", 0.1, 5), ("asin", -1, 1), ("acos", -1, 1), ("atan", -4, 4), ("sinh", -3, 3),
         ("cosh", -3, 3), ("asinh", -4, 4), ("acosh", 1, 5), ("atanh", -0.95, 0.95), ("erfc", -4, 6),
         ("erfinv", -0.999, 0.999), ("trunc", -4, 4)]


@pytest.mark.parametrize("op,lo,hi", UNARY, ids=[u[0] for u in UNARY])
@pytest.mark.parametrize(U, cases(NUMERIC, views=("T",)))
def test_unary(op, lo, hi, dt, shape, view): helper_test_op([shape], getattr(torch, op), getattr(engine, op), dt, low=lo, high=hi, noncontig=view)
@pytest.mark.parametrize(U, cases(FLOATS, views=()))
def test_frac(dt, shape, view): helper_test_op([shape], torch.frac, engine.frac, dt, low=-5, high=5)
@pytest.mark.parametrize(U, cases(ALL, views=()))
def test_signbit_positive(dt, shape, view): helper_test_op([shape], lambda x: (x.signbit(), x.positive()) if dt != "bool" else x.signbit(), dtypes=dt)
@pytest.mark.parametrize(U, cases(INTS + ("bool",), views=()))
def test_bitwise_not(dt, shape, view): helper_test_op([shape], torch.bitwise_not, engine.bitwise_not, dt, low=-5, high=9)
def test_erfinv_edges(): helper_test_op([(6,)], torch.erfinv, engine.erfinv, "float64", vals=[[-1.0, 1.0, 1.5, 0.0, 1 - 1e-12, -0.5]])
def test_erfc_tail(): helper_test_op([(4,)], torch.erfc, engine.erfc, "float64", vals=[[5.0, 10.0, 26.0, -6.0]])


# ---- elementwise: binary -------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["hypot", "logaddexp", "copysign", "fmax", "fmin"])
@pytest.mark.parametrize(B, bcases(FLOATS, mixed=False))
def test_binary_float(op, dts, shapes, view): helper_test_op(shapes, getattr(torch, op), getattr(engine, op), dts, low=-4, high=4, noncontig=view)
@pytest.mark.parametrize(B, bcases(FLOATS + ("int64",)))
def test_xlogy(dts, shapes, view): helper_test_op(shapes, torch.xlogy, engine.xlogy, dts, low=[-2, 0], high=[2, 4], noncontig=view)
@pytest.mark.parametrize(B, bcases(NUMERIC, mixed=False))
def test_fmod(dts, shapes, view): helper_test_op(shapes, torch.fmod, engine.fmod, dts, low=[-9, 1], high=[9, 5], noncontig=view)
@pytest.mark.parametrize("mode", ["trunc", "floor"])
@pytest.mark.parametrize(B, bcases(NUMERIC))
def test_div_rounding_mode(mode, dts, shapes, view): helper_test_op(shapes, lambda a, b: torch.div(a, b, rounding_mode=mode), lambda a, b: engine.div(a, b, rounding_mode=mode), dts, low=[-9, 1], high=[9, 4], noncontig=view)
@pytest.mark.parametrize("op", ["bitwise_left_shift", "bitwise_right_shift"])
@pytest.mark.parametrize(B, bcases(INTS, mixed=False))
def test_shift(op, dts, shapes, view): helper_test_op(shapes, getattr(torch, op), getattr(engine, op), dts, low=[-20, 0], high=[20, 9], noncontig=view)
def test_shift_out_of_range(): helper_test_op([(4,), (4,)], lambda a, b: (a << b, a >> b), dtypes="int64", vals=[[5, -5, 1, 3], [70, 70, -1, 64]])
@pytest.mark.parametrize(B, bcases(NUMERIC + ("bool",)))
def test_atan2(dts, shapes, view): helper_test_op(shapes, torch.atan2, engine.atan2, dts, low=-3, high=3, noncontig=view)
@pytest.mark.parametrize("dt", ["int64", "int32", "uint8"])
def test_int_pow_negative(dt): helper_test_op([(7,), (7,)], torch.pow, engine.pow, dt, vals=[[-3, -2, -1, 0, 1, 2, 3], [-1, -2, -1, 2, -3, -1, 2]] if dt != "uint8" else None)
# a Python number first, as torch takes it (torch.add(2, t)); torch's promotion (float number, int tensor: float32)
@pytest.mark.parametrize("dt", NUMERIC)
def test_add_number_first(dt): helper_test_op([(3, 4)], lambda t: torch.add(2, t), lambda t: engine.add(2, t), dt, low=-4, high=4)
@pytest.mark.parametrize("dt", NUMERIC)
def test_sub_number_first_alpha(dt): helper_test_op([(3, 4)], lambda t: torch.sub(2, t, alpha=2), lambda t: engine.sub(2, t, alpha=2), dt, low=-4, high=4)
@pytest.mark.parametrize("dt", NUMERIC)
def test_mul_number_first(dt): helper_test_op([(3, 4)], lambda t: torch.mul(3, t), lambda t: engine.mul(3, t), dt, low=-4, high=4)
@pytest.mark.parametrize("dt", INTS)
def test_div_number_first_int(dt): helper_test_op([(3, 4)], lambda t: torch.div(2, t), lambda t: engine.div(2, t), dt, low=1, high=9)
@pytest.mark.parametrize("dt", INTS)
def test_float_number_first_int(dt): helper_test_op([(3, 4)], lambda t: (torch.add(2.5, t), torch.div(2.5, t)), lambda t: (engine.add(2.5, t), engine.div(2.5, t)), dt, low=1, high=9)
def test_int_division_by_zero_check_is_skipped_inside_a_capture(monkeypatch):
    a, b = engine.tensor([7, 8], device=DEVICE), engine.tensor([0, 3], device=DEVICE)
    with pytest.raises(ZeroDivisionError):
        a // b
    monkeypatch.setattr(a.backend, "capturing", lambda: True)  # no host read while a CUDA graph is captured
    assert (a // b)[1].item() == 2


# ---- pointwise with parameters -------------------------------------------------------------------------------
@pytest.mark.parametrize(U, cases(FLOATS + ("int64",), views=()))
def test_nan_to_num(dt, shape, view): helper_test_op([shape], lambda x: (torch.nan_to_num(x / 0), torch.nan_to_num(x / 0, 1.5, 9.0, -9.0)), lambda x: (engine.nan_to_num(x / 0), engine.nan_to_num(x / 0, 1.5, 9.0, -9.0)), dt, low=-1, high=2)
@pytest.mark.parametrize("w", [0.3, 0.8, "tensor"])
@pytest.mark.parametrize("dt", FLOATS)
def test_lerp(w, dt): helper_test_op([(3, 5), (5,), (3, 1)], lambda a, b, t: torch.lerp(a, b, t if w == "tensor" else w), lambda a, b, t: engine.lerp(a, b, t if w == "tensor" else w), dt, low=[-4, -4, 0], high=[4, 4, 1])
@pytest.mark.parametrize("dt", NUMERIC)
def test_addcmul(dt): helper_test_op([(3, 5), (5,), (3, 1)], lambda x, a, b: torch.addcmul(x, a, b, value=2), lambda x, a, b: engine.addcmul(x, a, b, value=2), dt, low=-4, high=4)
@pytest.mark.parametrize("dt", FLOATS)
def test_addcdiv(dt): helper_test_op([(3, 5), (5,), (3, 1)], lambda x, a, b: torch.addcdiv(x, a, b, value=0.5), lambda x, a, b: engine.addcdiv(x, a, b, value=0.5), dt, low=[-4, -4, 1], high=[4, 4, 3])
@pytest.mark.parametrize("kw", [{}, dict(rtol=0.1, atol=0.5), dict(equal_nan=True)], ids=_id)
@pytest.mark.parametrize("dt", NUMERIC)
def test_isclose(kw, dt): helper_test_op([(4, 5), (4, 5)], lambda a, b: torch.isclose(a, b, **kw), lambda a, b: engine.isclose(a, b, **kw), dt, low=-2, high=2)
def test_isclose_specials(): helper_test_op([(6,), (6,)], lambda a, b: (torch.isclose(a, b), torch.isclose(a, b, equal_nan=True), torch.allclose(a, a)), lambda a, b: (engine.isclose(a, b), engine.isclose(a, b, equal_nan=True), engine.allclose(a, a)), "float32", vals=[[np.inf, -np.inf, np.nan, 1.0, np.inf, 0.0], [np.inf, np.inf, np.nan, 1.0000001, 1e38, -0.0]])
@pytest.mark.parametrize("decimals", [0, 1, 3, -1, -3])
@pytest.mark.parametrize("dt", FLOATS)
def test_round_decimals(decimals, dt): helper_test_op([(20,)], lambda x: torch.round(x, decimals=decimals), lambda x: engine.round(x, decimals=decimals), dt, low=-2000, high=2000)


# ---- reductions and scans --------------------------------------------------------------------------------------
VAR = [((), {}), ((True,), {}), ((False,), {}), ((1,), {}), ((1, False, True), {}), ((), dict(dim=0, correction=None)),
       ((), dict(dim=(0, 1), correction=2)), ((0,), dict(keepdim=True))]


@pytest.mark.parametrize("fn", ["var", "std", "var_mean", "std_mean"])
@pytest.mark.parametrize("args,kw", VAR, ids=_id)
def test_var_forms(fn, args, kw): helper_test_op([(3, 5)], lambda x: getattr(torch, fn)(x, *args, **kw), lambda x: getattr(engine, fn)(x, *args, **kw), scale=ACC)
@pytest.mark.parametrize("unbiased", [True, False])
def test_var_1d(unbiased): helper_test_op([(7,)], lambda v: (v.var(unbiased), v.std(unbiased)))
@pytest.mark.parametrize("p", [2, 1, 0, 3, 0.5, float("inf"), float("-inf"), "fro"], ids=_id)
@pytest.mark.parametrize("dim", [None, 1, (0, 1)], ids=_id)
def test_norm(p, dim): helper_test_op([(4, 5)], lambda x: torch.norm(x, p, dim), lambda x: engine.norm(x, p, dim), scale=ACC)
@pytest.mark.parametrize("dim", [None, (1, 2), (0, 2)], ids=_id)
def test_norm_nuc(dim): helper_test_op([(3, 4) if dim is None else (2, 3, 4)], lambda x: torch.norm(x, "nuc", dim), lambda x: engine.norm(x, "nuc", dim), scale=ACC)
@pytest.mark.parametrize("fn", ["cummax", "cummin"])
@pytest.mark.parametrize(U, cases(NUMERIC, shapes=[(), (7,), (2, 0)], views=("T",)))
def test_cummax_cummin(fn, dt, shape, view): helper_test_op([shape], lambda x: getattr(torch, fn)(x, -1), lambda x: getattr(engine, fn)(x, -1), dt, low=-3, high=3, noncontig=view)
@pytest.mark.parametrize(U, cases(FLOATS, shapes=[(), (7,), (2, 0)], views=("T",)))
def test_logcumsumexp(dt, shape, view): helper_test_op([shape], lambda x: torch.logcumsumexp(x, 0), lambda x: engine.logcumsumexp(x, 0), dt, low=-30, high=30, noncontig=view, scale=ACC)


# ---- linear algebra ------------------------------------------------------------------------------------------------
EINSUM = [("ij,jk->ik", [(3, 4), (4, 5)]), ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]), ("ii->i", [(4, 4)]), ("ij->", [(3, 4)]),
          ("i,j->ij", [(3,), (4,)]), ("...ij,...jk", [(2, 3, 4), (4, 2)]), ("...ik,...j->ij", [(1, 2, 3), (3,)]),
          ("ij", [(3, 4)]), ("ba", [(3, 4)]), ("i j , j k -> i k", [(2, 3), (3, 2)])]


@pytest.mark.parametrize("eq,shapes", EINSUM, ids=_id)
@pytest.mark.parametrize("dt", ["float32", "float64", "int32", "bfloat16"])
def test_einsum(eq, shapes, dt): helper_test_op(shapes, lambda *t: torch.einsum(eq, *t), lambda *t: engine.einsum(eq, *t), dt, scale=ACC, ref64=True)
@pytest.mark.parametrize("dims", [2, 1, 0, ([1, 0], [0, 1]), ([0, 1], [2, 0])], ids=_id)
def test_tensordot(dims): helper_test_op([(3, 4, 2), (4, 3, 5)] if dims != ([0, 1], [2, 0]) else [(1, 1, 1), (2, 1, 2)], lambda a, b: torch.tensordot(a, b, dims) if dims != 2 or True else None, lambda a, b: engine.tensordot(a, b, dims), scale=ACC) if dims in (([1, 0], [0, 1]), ([0, 1], [2, 0])) else helper_test_op([(3, 4, 2), (4, 2, 5)] if dims == 2 else ([(3, 4, 2), (2, 5)] if dims == 1 else [(3, 2), (4,)]), lambda a, b: torch.tensordot(a, b, dims), lambda a, b: engine.tensordot(a, b, dims), scale=ACC)
@pytest.mark.parametrize("dt", NUMERIC)
def test_outer(dt): helper_test_op([(3,), (4,)], torch.outer, engine.outer, dt)
ADDMM = [("addmm", [(3, 5), (3, 4), (4, 5)]), ("addmm", [(5,), (3, 4), (4, 5)]), ("addmv", [(3,), (3, 4), (4,)]),
         ("addr", [(3, 4), (3,), (4,)]), ("baddbmm", [(2, 3, 5), (2, 3, 4), (2, 4, 5)]), ("addbmm", [(3, 5), (2, 3, 4), (2, 4, 5)])]


@pytest.mark.parametrize("beta,alpha", [(1, 1), (0.5, 2), (0, 1)], ids=_id)
@pytest.mark.parametrize("fn,shapes", ADDMM, ids=_id)
@pytest.mark.parametrize("dt", ["float32", "float16", "int64"])
def test_addmm_family(fn, shapes, beta, alpha, dt): (fn == "addr" and dt == "int64" and beta == 0.5) or helper_test_op(shapes, lambda x, a, b: getattr(torch, fn)(x, a, b, beta=beta, alpha=alpha), lambda x, a, b: getattr(engine, fn)(x, a, b, beta=beta, alpha=alpha), dt, scale=ACC, ref64=True)
def test_addmm_beta0_ignores_nan(): helper_test_op([(2, 2), (2, 3), (3, 2)], lambda x, a, b: torch.addmm(x / 0, a, b, beta=0), lambda x, a, b: engine.addmm(x / 0, a, b, beta=0), scale=ACC)
def test_dot_mv(): helper_test_op([(4,), (4,), (3, 4)], lambda a, b, m: (torch.dot(a, b), torch.mv(m, a)), lambda a, b, m: (engine.dot(a, b), engine.mv(m, a)), scale=ACC)
@pytest.mark.parametrize("shape,k", [((4,), 0), ((3,), 2), ((3,), -1), ((3, 4), 0), ((3, 4), 1), ((3, 4), -2), ((2, 2), 5)], ids=_id)
@pytest.mark.parametrize("dt", ["float32", "int64", "bool"])
def test_diag(shape, k, dt): helper_test_op([shape], lambda x: torch.diag(x, k), lambda x: engine.diag(x, k), dt)
@pytest.mark.parametrize("args", [(), (1,), (-1,), (0, 1, 2), (1, -1, 0), (0, 2, 1), (9,)], ids=_id)
def test_diagonal(args): helper_test_op([(2, 3, 4)], lambda x: torch.diagonal(x, *args), lambda x: engine.diagonal(x, *args), noncontig="step")
def test_trace(): helper_test_op([(3, 4)], torch.trace, engine.trace, "float64")


# ---- shape --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reps", [(2,), (2, 1), (1, 2, 3), (0, 2)], ids=_id)
def test_tile(reps): helper_test_op([(2, 3)], lambda x: torch.tile(x, reps), lambda x: engine.tile(x, reps))
@pytest.mark.parametrize("k,dims", [(1, (0, 1)), (2, (0, 1)), (3, (1, 0)), (-1, (1, 2)), (4, (0, 2)), (5, (2, 0))], ids=_id)
def test_rot90(k, dims): helper_test_op([(2, 3, 4)], lambda x: torch.rot90(x, k, dims), lambda x: engine.rot90(x, k, dims))
@pytest.mark.parametrize("fn", ["hstack", "vstack", "dstack", "column_stack"])
@pytest.mark.parametrize("shapes", [[(3,), (3,)], [(2, 3), (2, 3)], [(2, 3, 1), (2, 3, 1)], [(), ()]], ids=_id)
def test_stacks(fn, shapes): helper_test_op(shapes, lambda *t: getattr(torch, fn)(t), lambda *t: getattr(engine, fn)(t))
@pytest.mark.parametrize("fn", ["atleast_1d", "atleast_2d", "atleast_3d"])
@pytest.mark.parametrize("shape", [(), (3,), (2, 3), (2, 3, 4)], ids=_id)
def test_atleast(fn, shape): helper_test_op([shape], getattr(torch, fn), getattr(engine, fn))
@pytest.mark.parametrize("indexing", ["ij", "xy"])
@pytest.mark.parametrize("shapes", [[(3,), (4,)], [(2,), (), (3,)], [(5,)]], ids=_id)
def test_meshgrid(indexing, shapes): helper_test_op(shapes, lambda *t: torch.meshgrid(*t, indexing=indexing), lambda *t: engine.meshgrid(*t, indexing=indexing))
@pytest.mark.parametrize("src,dst", [(0, 2), ([0, 1], [2, 0]), ((0, -1), (-1, 0)), ([], [])], ids=_id)
def test_movedim_lists(src, dst): helper_test_op([(2, 3, 4)], lambda x: x.movedim(src, dst))
FLIPS = [lambda x: x.flip(0, 1), lambda x: x.flip((0, 1)), lambda x: x.flip([1]), lambda x: x.flip(dims=[0, 2])]


@pytest.mark.parametrize("i", range(len(FLIPS)))
def test_flip_forms(i): helper_test_op([(2, 3, 4)], FLIPS[i])
def test_flatten_empty(): helper_test_op([(0, 3, 4)], lambda x: (x.flatten(1), x.flatten(), x.flatten(0, 1)))
@pytest.mark.parametrize("r", [1, 2, 3])
def test_pixel_shuffle(r): helper_test_op([(2, 2 * r * r, 3, 4)], lambda x: (torch.nn.functional.pixel_shuffle(x, r), torch.nn.functional.pixel_unshuffle(torch.nn.functional.pixel_shuffle(x, r), r)), lambda x: (engine.functional.pixel_shuffle(x, r), engine.functional.pixel_unshuffle(engine.functional.pixel_shuffle(x, r), r)))


# ---- indexing -------------------------------------------------------------------------------------------------
IDX = [2, 0, 3, 0]  # with a repeat: index_add sums, the others write once per distinct index


@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("dt", ["float32", "bfloat16", "int64", "bool"])
def test_index_add(dim, dt): helper_test_op([(4, 4, 4), (4, 4, 4)], lambda x, s: x.index_add(dim, torch.tensor(IDX), s) if dt != "bool" else x.index_add(dim, torch.tensor(IDX[:1]), s.narrow(dim, 0, 1)), lambda x, s: x.index_add(dim, engine.tensor(IDX, device=DEVICE), s) if dt != "bool" else x.index_add(dim, engine.tensor(IDX[:1], device=DEVICE), s.narrow(dim, 0, 1)), dt)
@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("dt", ["float32", "int32", "bool"])
def test_index_copy_fill(dim, dt): helper_test_op([(4, 5), (4, 5)], lambda x, s: (x.index_copy(dim, torch.tensor([3, 1]), s.narrow(dim, 0, 2)), x.index_fill(dim, torch.tensor([0, 3]), 1)), lambda x, s: (x.index_copy(dim, engine.tensor([3, 1], device=DEVICE), s.narrow(dim, 0, 2)), x.index_fill(dim, engine.tensor([0, 3], device=DEVICE), 1)), dt)
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("dt", ["float32", "int64"])
def test_index_put(accumulate, dt): helper_test_op([(4, 5), (3,)], lambda x, v: x.index_put((torch.tensor([0, 2, 0]), torch.tensor([1, 4, 1]) if accumulate else torch.tensor([1, 4, 3])), v, accumulate), lambda x, v: x.index_put((engine.tensor([0, 2, 0], device=DEVICE), engine.tensor([1, 4, 1] if accumulate else [1, 4, 3], device=DEVICE)), v, accumulate), dt)
def test_index_put_mask(): helper_test_op([(3, 4), (3, 4)], lambda x, m: (x.index_put((m,), torch.tensor(7.0)), x.index_put((m,), torch.tensor(1.0), True)), lambda x, m: (x.index_put((m,), engine.tensor(7.0, device=DEVICE)), x.index_put((m,), engine.tensor(1.0, device=DEVICE), True)), ["float32", "bool"])
@pytest.mark.parametrize("shapes", [[(3, 4), (3, 4)], [(3, 4), (4,)], [(4,), (3, 4)], [(), ()], [(0, 2), (2,)]], ids=_id)
def test_masked_select(shapes): helper_test_op(shapes, torch.masked_select, engine.masked_select, ["float32", "bool"])
def test_take(): helper_test_op([(3, 4)], lambda x: (torch.take(x, torch.tensor([[0, 11], [-1, 5]])), torch.take(x[:0], torch.tensor([], dtype=torch.long))), lambda x: (engine.take(x, engine.tensor([[0, 11], [-1, 5]], device=DEVICE)), engine.take(x[:0], engine.tensor([], dtype=engine.int64, device=DEVICE))))
@pytest.mark.parametrize("dim", [None, 0, 1, -1])
def test_take_along_dim(dim): helper_test_op([(3, 4)], lambda x: torch.take_along_dim(x, x.argsort(0 if dim is None else dim)[:2] if dim in (0,) else x.argsort(-1 if dim is None else dim), dim), lambda x: engine.take_along_dim(x, x.argsort(0 if dim is None else dim)[:2] if dim in (0,) else x.argsort(-1 if dim is None else dim), dim))
@pytest.mark.parametrize("include_self", [True, False])
@pytest.mark.parametrize("reduce", ["sum", "prod", "mean", "amax", "amin"])
@pytest.mark.parametrize("dt", ["float32", "int64", "float16"])
def test_scatter_reduce(reduce, include_self, dt): helper_test_op([(3, 5), (3, 5)], lambda x, s: x.scatter_reduce(1, torch.tensor([[0, 1, 0, 4, 0]] * 3), s, reduce, include_self=include_self), lambda x, s: x.scatter_reduce(1, engine.tensor([[0, 1, 0, 4, 0]] * 3, device=DEVICE), s, reduce, include_self=include_self), dt, low=1, high=4, ref64=True)
def test_scatter_scalar_cast(): helper_test_op([(4,)], lambda x: (x.scatter(0, torch.tensor([1, 2]), 2.5), x.scatter(0, torch.tensor([3]), 7, reduce="add")), lambda x: (x.scatter(0, engine.tensor([1, 2], device=DEVICE), 2.5), x.scatter(0, engine.tensor([3], device=DEVICE), 7, reduce="add")), "int64")
@pytest.mark.parametrize("kw", [{}, dict(return_inverse=True), dict(return_counts=True), dict(return_inverse=True, return_counts=True, dim=0), dict(dim=1, return_counts=True)], ids=_id)
@pytest.mark.parametrize("dt", ["float32", "int64", "bool"])
def test_unique(kw, dt): helper_test_op([(4, 3)], lambda x: torch.unique(x, **kw), lambda x: engine.unique(x, **kw), dt, low=0, high=2)
@pytest.mark.parametrize("kw", [{}, dict(right=True), dict(side="right"), dict(out_int32=True)], ids=_id)
@pytest.mark.parametrize("seq,val", [((6,), (3, 4)), ((2, 6), (2, 3)), ((6,), ())], ids=_id)
def test_searchsorted(seq, val, kw): helper_test_op([seq, val], lambda s, v: torch.searchsorted(s.sort().values, v, **kw), lambda s, v: engine.searchsorted(s.sort().values, v, **kw), low=-3, high=3)
def test_searchsorted_sorter(): helper_test_op([(6,), (4,)], lambda s, v: torch.searchsorted(s, v, sorter=s.argsort()), lambda s, v: engine.searchsorted(s, v, sorter=s.argsort()))
@pytest.mark.parametrize("right", [False, True])
def test_bucketize(right): helper_test_op([(3, 4)], lambda x: torch.bucketize(x, torch.tensor([-1.0, 0.0, 0.5, 1.0]), right=right), lambda x: engine.bucketize(x, engine.tensor([-1.0, 0.0, 0.5, 1.0], device=DEVICE), right=right), vals=[[[-1.0, 0, 0.25, 3], [1, -5, 0.5, 0.75], [0, 0, 1, 1]]])
@pytest.mark.parametrize("weights,minlength", [(None, 0), (None, 9), ("float32", 0), ("float64", 3)], ids=_id)
def test_bincount(weights, minlength): helper_test_op([(7,), (7,)], lambda x, w: torch.bincount(x, w if weights else None, minlength), lambda x, w: engine.bincount(x, w if weights else None, minlength), ["int64", weights or "float32"], low=0, high=5)


# ---- creation ---------------------------------------------------------------------------------------------------
def create(name, *args, **kw):
    dt = kw.pop("dtype", None)
    t = getattr(torch, name)(*args, **kw, **({"dtype": TORCH[dt]} if dt else {}))
    e = getattr(engine, name)(*args, **kw, **({"dtype": E[dt]} if dt else {}), device=DEVICE)
    compare(e, t)


@pytest.mark.parametrize("args,dt", [((0, 2, 5), None), ((0, 2, 5, 2.0), None), ((4.3, 1.2, 4), "int64"), ((4.3, 0, 4, 2.0), "uint8"),
                                     ((1, -1, 7), "float16"), ((4.3, 1.2, 1), "int64"), ((0, 1, 0), None), ((2, 1, 5, 3.0), "float64")], ids=_id)
def test_logspace(args, dt): create("logspace", *args, dtype=dt)
@pytest.mark.parametrize("args,dt", [((0.1, -7.9, -4.0), "int64"), ((-0.9, 2.1, 2.0), "int64"), ((-0.9, 2.1, 2.0), "int32"), ((0, 6, 1.5), "int64"),
                                     ((3.1,), "int64"), ((2.5, 9.7, 2), "uint8")], ids=_id)
def test_arange_int_fractional(args, dt): create("arange", *args, dtype=dt)
@pytest.mark.parametrize("args,dt", [((4.3, -3, 50), "int64"), ((-2.7, 3, 5), "int64"), ((4.3, 1, 7), "int32"), ((0.5, 9.5, 4), "uint8"),
                                     ((0, 1, 1), "int64"), ((-1, 1, 6), "float16")], ids=_id)
def test_linspace_int_fractional(args, dt): create("linspace", *args, dtype=dt)
@pytest.mark.parametrize("fn", ["tril_indices", "triu_indices"])
@pytest.mark.parametrize("args", [(3, 3), (4, 3), (3, 5, 1), (3, 4, -1), (0, 3), (3, 3, 9)], ids=_id)
def test_tri_indices(fn, args): create(fn, *args)
@pytest.mark.parametrize("dt", ALL)
def test_new_factories(dt): helper_test_op([(2, 3)], lambda x: (x.new_zeros(4, 2), x.new_ones((3,)), x.new_full((2, 2), 1), x.new_zeros(2, dtype=torch.float16)), lambda x: (x.new_zeros(4, 2), x.new_ones((3,)), x.new_full((2, 2), 1), x.new_zeros(2, dtype=engine.float16)), dt)
@pytest.mark.parametrize("fill,dt", [(-9, "uint8"), (300, "int64"), (2.5, "int32"), (True, "float16")], ids=_id)
def test_full_like_wraps(fill, dt): helper_test_op([(3,)], lambda x: torch.full_like(x, fill), lambda x: engine.full_like(x, fill), dt)
def test_full_negative_uint8(): create("full", (3,), -5, dtype="uint8")
def test_like_dtype_device(): helper_test_op([(2, 3)], lambda x: (torch.zeros_like(x, dtype=torch.int32), torch.full_like(x, 2, dtype=torch.float64)), lambda x: (engine.zeros_like(x, dtype=engine.int32, device=DEVICE), engine.full_like(x, 2, dtype=engine.float64, device=DEVICE)))


@pytest.mark.nonparity
def test_randint_forms():
    a = engine.randint(5, (3, 4), generator=engine.Generator(1), device=DEVICE)
    b = engine.randint(2, 5, size=(30,), generator=engine.Generator(1), dtype=engine.int32, device=DEVICE)
    assert a.shape == (3, 4) and a.dtype is engine.int64 and 0 <= int(a.min()) and int(a.max()) < 5
    assert b.dtype is engine.int32 and 2 <= int(b.min()) and int(b.max()) < 5
    like = engine.rand_like(a.float(), dtype=engine.float64, device=DEVICE)
    assert like.dtype is engine.float64 and like.shape == (3, 4)
    with pytest.raises(NotImplementedError, match="requires_grad"):
        engine.zeros(2, requires_grad=True)


# ---- argument forms torch accepts (issue 13) ------------------------------------------------------------------------
def test_to_positional(): helper_test_op([(2, 3)], lambda x: (x.to(torch.float64, False, True), x.to("cpu", torch.int32, True, False), x.to(x.double()), x.to(memory_format=torch.contiguous_format)), lambda x: (x.to(engine.float64, False, True), x.to(DEVICE, engine.int32, True, False), x.to(x.double()), x.to(memory_format="contiguous_format")))
def test_nonzero_as_tuple(): helper_test_op([(3, 4)], lambda x: (torch.nonzero(x > 0, as_tuple=True), torch.nonzero(x[0, 0] > 0), torch.nonzero(x[0, 0] > 9, as_tuple=True)), lambda x: (engine.nonzero(x > 0, as_tuple=True), engine.nonzero(x[0, 0] > 0), engine.nonzero(x[0, 0] > 9, as_tuple=True)))
def test_repeat_interleave_forms(): helper_test_op([(3, 2)], lambda x: (x.repeat_interleave(torch.tensor([1, 0, 2]), 0, output_size=3), x.repeat_interleave(2), torch.repeat_interleave(torch.tensor([2, 1]))), lambda x: (x.repeat_interleave(engine.tensor([1, 0, 2], device=DEVICE), 0, output_size=3), x.repeat_interleave(2), engine.repeat_interleave(engine.tensor([2, 1], device=DEVICE))))
def test_masked_fill_broadcast_mask(): helper_test_op([(5,), (5, 5)], lambda x, m: x.masked_fill(m, 2.0), dtypes=["float32", "bool"])
ZERO_D = [lambda x: x.topk(1), lambda x: x.sort(), lambda x: x.argsort(), lambda x: x.squeeze(0), lambda x: x.transpose(0, 0),
          lambda x: torch.softmax(x, 0) if isinstance(x, torch.Tensor) else engine.softmax(x, 0), lambda x: x.flip(0)]


@pytest.mark.parametrize("i", range(len(ZERO_D)))
def test_zero_dim(i): helper_test_op([()], ZERO_D[i])
def test_zero_dim_indexing(): helper_test_op([(), (1,)], lambda x, s: (x.index_select(0, torch.tensor([0])), x.gather(0, torch.tensor([0])), x.gather(0, torch.tensor(0)), x.scatter(0, torch.tensor([0]), s), x.scatter_add(0, torch.tensor(0), s[0])), lambda x, s: (x.index_select(0, engine.tensor([0], device=DEVICE)), x.gather(0, engine.tensor([0], device=DEVICE)), x.gather(0, engine.tensor(0, device=DEVICE)), x.scatter(0, engine.tensor([0], device=DEVICE), s), x.scatter_add(0, engine.tensor(0, device=DEVICE), s[0])))
def test_empty_indexing(): helper_test_op([(5,), (0, 3)], lambda x, e: (x.gather(0, torch.zeros(2, 0, dtype=torch.long)), e.topk(0, 0), e.softmax(-1), e.sort(0), e.index_select(1, torch.tensor([2, 0]))), lambda x, e: (x.gather(0, engine.zeros(2, 0, dtype=engine.int64, device=DEVICE)), e.topk(0, 0), engine.softmax(e, -1), e.sort(0), e.index_select(1, engine.tensor([2, 0], device=DEVICE))))


# ---- engine inputs (issue 11): torch's answer, or a clear error where torch raises ------------------------------------
def test_softmax_empty_dim(): helper_test_op([(4, 0)], lambda x: (torch.softmax(x, -1), torch.log_softmax(x, 0)), lambda x: (engine.softmax(x, -1), engine.log_softmax(x, 0)))
def test_softmax_plus_inf_rows(): helper_test_op([(4, 3)], lambda x: (torch.softmax(x, -1), torch.log_softmax(x, -1)), lambda x: (engine.softmax(x, -1), engine.log_softmax(x, -1)), vals=[[[np.inf, 1, 2], [np.inf, np.inf, 0], [-np.inf, 0, 1], [-np.inf] * 3]])


@pytest.mark.nonparity
def test_layer_norm_huge_values():
    """torch's float32 kernel overflows to nan on rows of ~1e38; the engine scales such rows by a power
    of two and matches torch's float64 answer (DESIGN: judge against an fp64 run)."""
    rows = [[1e38, -1e38, 1e38, 0.5], [3e38, 3e38, 3e38, 3e38], [1e38, 1e38, 1e38, -1e38], [1.0, 2.0, 3.0, 4.0]]
    want = torch.nn.functional.layer_norm(torch.tensor(rows, dtype=torch.float64), (4,)).float()
    got = engine.functional.layer_norm(engine.tensor(rows, device=DEVICE), (4,))
    compare(got, want)


BAD_ARGS = [("stride", lambda f, x, w: f.conv2d(x, w, stride=0)), ("dilation", lambda f, x, w: f.conv2d(x, w, dilation=(1, 0))),
            ("stride", lambda f, x, w: f.conv1d(x[0, :, 0], w[..., 0], stride=-1)), ("padding", lambda f, x, w: f.conv2d(x, w, padding=-1)),
            ("stride", lambda f, x, w: f.max_pool2d(x, 2, stride=0)), ("kernel_size", lambda f, x, w: f.avg_pool2d(x, 0)),
            ("groups", lambda f, x, w: f.conv2d(x, w, groups=0))]


@pytest.mark.nonparity
@pytest.mark.parametrize("name,call", BAD_ARGS, ids=[f"{i}-{a[0]}" for i, a in enumerate(BAD_ARGS)])
def test_conv_pool_bad_arguments(name, call):
    """conv2d(stride=0) raised ZeroDivisionError (issue 11): every bad size argument is a ValueError
    naming it; torch refuses each of them too."""
    with pytest.raises(ValueError, match=name):
        call(EF, engine.ones(1, 2, 5, 5, device=DEVICE), engine.ones(3, 2, 3, 3, device=DEVICE))
    with pytest.raises(RuntimeError):
        call(torch.nn.functional, torch.ones(1, 2, 5, 5), torch.ones(3, 2, 3, 3))


@pytest.mark.nonparity
@pytest.mark.parametrize("size", [(1.5,), (2, 2.0), ("3",), ([2, None],)], ids=_id)
def test_factory_sizes_must_be_ints(size):
    with pytest.raises(TypeError, match="size must be a sequence of integers"):
        engine.zeros(*size)
    with pytest.raises(TypeError):
        torch.zeros(*size)


@pytest.mark.nonparity
@pytest.mark.parametrize("dt", INTS)
@pytest.mark.parametrize("op", ["floor_divide", "remainder", "fmod", "div_trunc", "div_floor"])
def test_int_division_by_zero(op, dt):
    """torch raises RuntimeError("ZeroDivisionError") on the CPU for integer division by zero; the
    engine raises an error that is both a ZeroDivisionError and a RuntimeError, on every device (a tensor
    divisor costs one host check; torch on CUDA returns garbage instead)."""
    def call(mod, a, b):
        return mod.div(a, b, rounding_mode=op[4:]) if op.startswith("div_") else getattr(mod, op)(a, b)
    for b_t, b_e in ((torch.tensor([1, 0], dtype=TORCH[dt]), engine.tensor([1, 0], dtype=E[dt], device=DEVICE)), (0, 0)):
        with pytest.raises(RuntimeError, match="ZeroDivisionError"):
            call(torch, torch.tensor([4, 5], dtype=TORCH[dt]), b_t)
        with pytest.raises(ZeroDivisionError, match="division by zero") as err:
            call(engine, engine.tensor([4, 5], dtype=E[dt], device=DEVICE), b_e)
        assert isinstance(err.value, RuntimeError)


def test_addr_refuses_float_scalars_for_ints():
    for mod, i in ((torch, torch.ones), (engine, engine.ones)):
        with pytest.raises((RuntimeError, TypeError), match="beta"):
            mod.addr(i(2, 2, dtype=mod.int64), i(2, dtype=mod.int64), i(2, dtype=mod.int64), beta=0.5)


# ---- repeated-index updates without ufunc.at (cupy lacks multiply.at, and add.at for uint8, bool, 16-bit) -------
@pytest.mark.parametrize("op", ["add", "multiply", "maximum", "minimum"])
@pytest.mark.parametrize("dt", ["float32", "float16", "int64", "uint8", "bool"])
def test_at_rounds_equal_ufunc_at(op, dt):
    rng = np.random.default_rng(0)
    out, src = rng.integers(0, 4, (6, 4)).astype(dt), rng.integers(0, 4, (10, 4)).astype(dt)
    key = (rng.integers(0, 6, (10, 4)), np.arange(4)[None, :])
    want = out.astype(np.float32) if dt == "bool" else out.copy()  # numpy has no add.at for bool: or / and
    getattr(np, op).at(want, key, src.astype(want.dtype))
    b = engine.tensor([0], device=DEVICE).backend  # the device's array library (numpy or cupy)
    got = b.xp.asarray(out)
    b._at_rounds(op, got, tuple(b.xp.asarray(k) for k in key), b.xp.asarray(src))
    np.testing.assert_array_equal(got.get() if hasattr(got, "get") else got, want != 0 if dt == "bool" else want)
