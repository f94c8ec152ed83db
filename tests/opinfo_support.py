"""Run the engine against torch's OpInfo database (the oracle we did not write); used by test_opinfo.py.

An OpInfo maps to an engine op by name: `nn.functional.X` -> engine.functional.X, any other name ->
engine.X, else the Tensor method or property X (so a new engine op gets its OpInfo rows for free;
ALIASES lists the few whose torch names differ). Each sample is converted (torch tensors -> engine
tensors on the device under test, torch dtypes -> engine dtypes, torch devices -> that device),
run on both sides and compared with helpers.compare / compare_reduced (the ONE tolerance table of
migration/tolerances.py; 16-bit floats judged against an fp64 torch run).

A sample ends in one of these classes:
  pass         values, shapes and dtypes match
  mismatch     the engine returned something else (a silent wrong answer)
  error        the engine raised although torch did not (a crash on valid input)
  refused      the engine raised NotImplementedError naming an argument it does not support
  n/a          the sample needs something the engine does not have: a dtype outside engine.dtype.ALL
               (int8, int16, complex...), a torch.Generator, sparse layouts; or torch itself raised
"""
from __future__ import annotations

import random
import warnings
from collections import Counter

import ml_dtypes
import numpy as np
import torch

import engine
import engine.functional as EF
from helpers import DEVICE, TORCH, compare, compare_reduced, engine_to_torch

ENGINE_DTYPES = {v: k for k, v in TORCH.items()}  # torch dtype -> engine dtype name

# OpInfos whose torch callable is a lambda with another argument order than the engine op
ADAPTERS = {
    "einsum": lambda tensors, equation: engine.einsum(equation, tensors),
    "nn.functional.embedding": lambda weight, idx, **kw: EF.embedding(idx, weight, **kw),
}

# OpInfos whose values are random or uninitialised: only shape, dtype (and device) are compared
META_ONLY = {"empty", "empty_like", "new_empty", "rand_like", "randn_like", "randint", "randn", "randint_like",
             "empty_permuted", "empty_strided", "new_empty_strided", "bernoulli", "normal", "uniform"}


class NotApplicable(Exception):
    """The sample uses something outside the engine's scope (see the module docstring)."""


def engine_op(op):
    """The engine callable for an OpInfo, or None when the engine has no op of that name: the
    function of the same name when torch's callable is torch.X (or F.X), else the Tensor method
    when the OpInfo has a method variant, else whatever the engine calls X."""
    name = op.name
    if name in ADAPTERS:
        return ADAPTERS[name] if _has(name.split(".")[-1]) else None
    if name.startswith("nn.functional."):
        return getattr(EF, name.removeprefix("nn.functional."), None)
    if "." in name:
        return None
    f = getattr(engine, name, None)
    if not callable(f) or isinstance(f, (type, engine.DType)):
        f = None
    if f is not None and (op.op is getattr(torch, name, None) or op.method_variant is None):
        return f
    attr = getattr(engine.Tensor, name, None)
    if isinstance(attr, property):
        return lambda x: getattr(x, name)
    if callable(attr):
        return lambda x, *a, **k: getattr(x, name)(*a, **k)
    return f


def _has(name):
    return hasattr(engine, name) or hasattr(EF, name)


# ---- torch -> engine ------------------------------------------------------------------------------------
def to_engine(v, key=None):
    if isinstance(v, torch.Tensor):
        if v.dtype not in ENGINE_DTYPES or v.layout != torch.strided or v.is_conj() or v.is_neg():
            raise NotApplicable(f"tensor of {v.dtype}")
        a = v.detach().cpu()
        arr = a.float().numpy().astype(ml_dtypes.bfloat16) if a.dtype == torch.bfloat16 else a.numpy()
        return engine.tensor(np.array(arr), device=DEVICE)
    if isinstance(v, torch.dtype):
        if v not in ENGINE_DTYPES:
            raise NotApplicable(f"dtype {v}")
        return engine.dtype.get(ENGINE_DTYPES[v])
    if isinstance(v, torch.device) or (key == "device" and isinstance(v, str)):
        return DEVICE
    if isinstance(v, torch.Size):
        return tuple(v)
    if isinstance(v, (torch.Generator, torch.layout)):
        raise NotApplicable(type(v).__name__)
    if isinstance(v, torch.memory_format):
        return str(v).removeprefix("torch.")
    if isinstance(v, (list, tuple)) and not hasattr(v, "_fields"):
        return type(v)(to_engine(x) for x in v)
    if isinstance(v, dict):
        return {k: to_engine(x, k) for k, x in v.items()}
    return v


def to_ref64(v):
    """16-bit float tensors (and dtype arguments) as float64, for the reference run."""
    if isinstance(v, torch.Tensor) and v.dtype in (torch.float16, torch.bfloat16):
        return v.double()
    if v in (torch.float16, torch.bfloat16):
        return torch.float64
    if isinstance(v, (list, tuple)) and not hasattr(v, "_fields"):
        return type(v)(to_ref64(x) for x in v)
    if isinstance(v, dict):
        return {k: to_ref64(x) for k, x in v.items()}
    return v


def _clone(v):
    if isinstance(v, torch.Tensor):
        return v.clone()
    if isinstance(v, (list, tuple)) and not hasattr(v, "_fields"):
        return type(v)(_clone(x) for x in v)
    if isinstance(v, dict):
        return {k: _clone(x) for k, x in v.items()}
    return v


def _check_indices(name, out_e, out_t, ref, args, kwargs, scale):
    """sort / argsort / topk: with ties, torch's unstable kernels may return other (equally right)
    indices, so the engine's indices must pick the same values from the input. Exact when stable."""
    x = args[0]
    if kwargs.get("stable") or x.ndim == 0:
        return compare(out_e, out_t)
    pos = 2 if name == "topk" else 1
    dim = args[pos] if len(args) > pos and not isinstance(args[pos], bool) else kwargs.get("dim", -1)
    idx_e, idx_t = (out_e[1], out_t[1]) if name != "argsort" else (out_e, out_t)
    _meta(idx_e, idx_t)
    picked = torch.take_along_dim(x, engine_to_torch(idx_e), dim)
    torch.testing.assert_close(picked, torch.take_along_dim(x, idx_t, dim), rtol=0, atol=0, equal_nan=True,
                               msg=lambda m: f"indices pick other values: {m}")
    if name != "argsort":
        if ref is None:
            compare(out_e[0], out_t[0], scale, what="values")
        else:
            compare_reduced(out_e[0], out_t[0], ref[0], scale)


def _out_dtypes(out):
    if isinstance(out, torch.Tensor):
        return [out.dtype]
    if isinstance(out, (list, tuple)):
        return [d for o in out for d in _out_dtypes(o)]
    return []


def _meta(out_e, out_t):
    if isinstance(out_t, (list, tuple)):
        assert len(out_e) == len(out_t)
        for a, b in zip(out_e, out_t):
            _meta(a, b)
        return
    assert tuple(out_e.shape) == tuple(out_t.shape), f"shape {tuple(out_e.shape)} != torch {tuple(out_t.shape)}"
    assert out_e.dtype.name == ENGINE_DTYPES[out_t.dtype], f"dtype {out_e.dtype.name} != torch {out_t.dtype}"


def _cpu(out):
    if isinstance(out, torch.Tensor):
        return out.cpu()
    if isinstance(out, (list, tuple)):
        items = [_cpu(o) for o in out]
        return type(out)(*items) if hasattr(out, "_fields") else type(out)(items)  # namedtuple / structseq
    return out


# ---- one sample ----------------------------------------------------------------------------------------------
def run_sample(op, fn, sample, dtype, scale: float = 1.0) -> tuple[str, str]:
    """(class, detail) for one OpInfo sample; see the module docstring for the classes. `scale`
    multiplies the tolerance table's entries (for ops that accumulate)."""
    args = (sample.input,) + tuple(sample.args)
    try:
        e_args, e_kwargs = to_engine(args), to_engine(sample.kwargs)
    except NotApplicable as e:
        return "n/a", str(e)
    reduced = dtype in (torch.float16, torch.bfloat16)
    r_args, r_kwargs = (to_ref64(args), to_ref64(sample.kwargs)) if reduced else (None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out_t = op(*_clone(args), **sample.kwargs)
        except Exception as e:  # noqa: BLE001  an invalid sample for this dtype: torch refuses it too
            return "n/a", f"torch raised {type(e).__name__}"
        try:
            ref = op(*r_args, **r_kwargs) if reduced else None
        except Exception:  # noqa: BLE001  no float64 kernel: judge against torch's own 16-bit result
            ref, reduced = None, False
    out_t, ref = _cpu(out_t), _cpu(ref)  # a sample may ask torch for device='cuda' (like-functions, where torch has CUDA)
    if any(d not in ENGINE_DTYPES for d in _out_dtypes(out_t)):
        return "n/a", "torch's output dtype is outside the engine"
    try:
        out_e = fn(*e_args, **e_kwargs)
    except NotImplementedError as e:
        return "refused", str(e)
    except Exception as e:  # noqa: BLE001
        return "error", f"{type(e).__name__}: {e}"[:300]
    try:
        if op.name in META_ONLY:
            _meta(out_e, out_t)
        elif op.name in ("sort", "argsort", "topk"):
            _check_indices(op.name, out_e, out_t, ref, args, sample.kwargs, scale)
        elif reduced:
            compare_reduced(out_e, out_t, ref, scale)
        else:
            compare(out_e, out_t, scale)
    except AssertionError as e:
        return "mismatch", str(e)[:400]
    except Exception as e:  # noqa: BLE001  an output the comparison cannot read is a wrong answer too
        return "mismatch", f"{type(e).__name__}: {e}"[:300]
    return "pass", ""


def samples(op, dtype, limit: int | None, seed: int = 0):
    """The OpInfo's sample inputs for `dtype` on the CPU; at most `limit` of them, a seeded choice."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the generator itself, without op.sample_inputs' per-sample tracking and reseeding (which walks
        # the Python stack for every sample and costs more than running the sample)
        got = list(op.sample_inputs_func(op, "cpu", dtype, False))
    if limit is not None and len(got) > limit:
        got = random.Random(f"{op.name}.{op.variant_test_name}.{dtype}.{seed}").sample(got, limit)
    return got


def op_id(op) -> str:
    return op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")


def engine_dtypes(op):
    """The engine dtypes the OpInfo supports on the CPU, in helpers' order."""
    have = op.supported_dtypes("cpu")
    return [d for d in TORCH.values() if d in have]


def run_op(op, dtype, limit=None, scale: float = 1.0):
    """(Counter of classes, [(class, detail, sample description)] for every sample that did not pass)."""
    fn = engine_op(op)
    counts, details = Counter(), []
    for s in samples(op, dtype, limit):
        cls, detail = run_sample(op, fn, s, dtype, scale)
        counts[cls] += 1
        if cls != "pass":
            details.append((cls, detail, _describe(s)))
    return counts, details


def _describe(s) -> str:
    def d(v):
        if isinstance(v, torch.Tensor):
            return f"T{tuple(v.shape)}:{str(v.dtype).removeprefix('torch.')}"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(d(x) for x in v) + "]"
        return repr(v)
    kw = ", ".join(f"{k}={d(v)}" for k, v in s.kwargs.items())
    return f"({d(s.input)}, {', '.join(d(a) for a in s.args)}{', ' if kw else ''}{kw})"

