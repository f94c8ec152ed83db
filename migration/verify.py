"""Layer-by-layer verification of an engine model against its PyTorch reference.

    from migration.verify import verify, verify_module, verify_hf, verify_golden
    rep = verify_module(torch_net, inputs=[x])          # ports the net, then verify(...)
    rep = verify_hf("path/to/hf_model_dir")             # or a transformers model instance
    rep = verify(torch_model, engine_model, [x], dtype="bfloat16", tol={"*.mlp": (1e-2, 1e-3)})
    print(rep.table()); rep.write_json("parity.json")

How it works:
  1. Both models run on the same seeded inputs (floating inputs rounded once to the dtype under test).
     Torch forward hooks (outputs) and forward pre-hooks (the primary input), and engine taps (outputs)
     plus a per-instance forward wrapper (the primary input), capture every module that exists on
     both sides under the same qualified name (migration.capture); each capture is streamed into a
     safetensors file (migration.report never sees more than one layer at a time).
  2. Each output is compared in torch's execution order: max abs, max rel, mean abs, cosine, NaN/Inf
     counts and the smallest atol that would pass (with the dtype's rtol). It passes when
     |engine - ref| <= atol + rtol * |ref| elementwise; tolerances come from migration.tolerances,
     overridable by glob on the output key or module name. For float16/bfloat16 the reference is a
     float64 torch run, and an output also passes when the engine's max error is at most
     REDUCED_ERROR_RATIO x torch's own (torch in that dtype against the same float64 run).
  3. The first divergence is the first output, in execution order, that fails while its primary
     input passes. With confirm=True that layer is re-run on the reference's input: if it still fails,
     the layer itself is the culprit ("confirmed").
  4. For language models: teacher-forced top-1 agreement, top-5 overlap and KL(ref || engine) of the
     logits at every position.

Output keys: "<module>" for a module's first output of its first call, "<module>@<call>" for later
calls, "<module>:<i>" for the i-th tensor of a tuple/dict output; "<output>" is the whole model's.

Golden outputs: `save_golden=DIR` stores the reference captures, the inputs and the metadata;
`verify_golden(engine_model, DIR)` compares against them later without importing torch.
"""
from __future__ import annotations

import copy
import fnmatch
import math
from pathlib import Path

import numpy as np

from migration import tolerances
from migration.port import is_float, to_torch
from migration.capture import (Capture, CaptureFile, VerifyError, scratch, _EngineHooks, _flatten, _primary,  # noqa: F401
                               _torch_np, capture_engine, capture_torch, in_key, out_key, split_key)
from migration.report import LayerResult, VerifyReport

from migration.verify_inputs import INPUTS, lm_inputs, seeded_signal  # noqa: F401,E402  (verify_hf, and other modules' imports)

ROOT = "<output>"
REDUCED = ("float16", "bfloat16")


# ---- metrics -------------------------------------------------------------------------------------------
def compare_arrays(a, r, rtol: float, atol: float, chunk: int = 1 << 20) -> dict:
    """Metrics of `a` (engine) against `r` (reference), streamed in chunks over flat views.
    Matching NaNs and same-signed infinities count as equal; any other non-finite mismatch is an
    infinite error."""
    a, r = np.asarray(a).reshape(-1), np.asarray(r).reshape(-1)
    n = a.size
    max_abs = max_rel = need = 0.0
    sum_abs = dot = na = nr = 0.0
    nan = inf = 0
    for s in range(0, max(n, 1), chunk):
        x = a[s:s + chunk].astype(np.float64)
        y = r[s:s + chunk].astype(np.float64)
        if not x.size:
            break
        nan += int(np.isnan(x).sum())
        inf += int(np.isinf(x).sum())
        fin = np.isfinite(x) & np.isfinite(y)
        same = (np.isnan(x) & np.isnan(y)) | (np.isinf(x) & (x == y))
        with np.errstate(invalid="ignore", over="ignore"):
            d = np.where(fin, np.abs(x - y), np.where(same, 0.0, np.inf))
            ay = np.where(fin, np.abs(y), 0.0)
            rel = np.where(d == 0, 0.0, np.divide(d, ay, out=np.full_like(d, np.inf), where=ay > 0))
        max_abs = max(max_abs, float(d.max()))
        sum_abs += float(d.sum())
        max_rel = max(max_rel, float(rel.max()))
        need = max(need, float((d - rtol * ay).max()))
        xf, yf = np.where(fin, x, 0.0), np.where(fin, y, 0.0)
        dot += float(xf @ yf)
        na += float(xf @ xf)
        nr += float(yf @ yf)
    if na == 0 and nr == 0:
        cos = 1.0
    elif na == 0 or nr == 0:
        cos = 0.0
    else:
        cos = dot / math.sqrt(na * nr)
    need = max(0.0, need)
    return {"max_abs": max_abs, "max_rel": max_rel, "mean_abs": sum_abs / n if n else 0.0, "cosine": cos,
            "nan": nan, "inf": inf, "min_passing_atol": need, "passed": bool(need <= atol)}


def parse_overrides(overrides) -> list:
    """{glob: (rtol, atol)}, [(glob, rtol, atol)] or [(glob, (rtol, atol))] -> [(glob, rtol, atol)]."""
    items = list(overrides.items()) if isinstance(overrides, dict) else list(overrides or [])
    out = []
    for item in items:
        if len(item) == 2:
            pat, (r, a) = item
        else:
            pat, r, a = item
        out.append((str(pat), float(r), float(a)))
    return out


class Tolerance:
    """(rtol, atol) per output key: the dtype's row of migration.tolerances (times `scale`), then the
    overrides in order, the last matching glob winning. A glob is matched against the output key
    ("model.layers.3.mlp", "lstm:1", "<output>") and against its module name. Integer and bool
    outputs are compared exactly."""

    def __init__(self, dtype: str, overrides=None, scale: float = 1.0):
        self.dtype, self.scale = dtype, scale
        self.base = tolerances.get(dtype, scale)
        self.overrides = parse_overrides(overrides)

    def __call__(self, key: str, array_dtype=None) -> tuple[float, float]:
        if array_dtype is not None and np.dtype(array_dtype).kind in "iub":
            return 0.0, 0.0
        rtol, atol = self.base
        base = split_key(key)[0]
        for pat, r, a in self.overrides:
            if fnmatch.fnmatchcase(key, pat) or fnmatch.fnmatchcase(base, pat):
                rtol, atol = r, a
        return rtol, atol

    def describe(self) -> dict:
        return {"dtype": self.dtype, "scale": self.scale, "overrides": [list(o) for o in self.overrides]}


def judge(eng, ref, noise, rtol: float, atol: float) -> tuple[dict, float | None]:
    """Metrics of eng vs ref. `noise` is torch's other run (the reduced-dtype run when ref is the fp64
    run; the fp64 run when ref is the fp32 run): torch's own error is max|noise - ref|, and the output
    also passes when the engine's max error is at most REDUCED_ERROR_RATIO x that (+ atol)."""
    m = compare_arrays(eng, ref, rtol, atol)
    t_err = None
    if noise is not None and np.shape(noise) == np.shape(ref):
        t_err = compare_arrays(noise, ref, rtol, atol)["max_abs"]
        if not m["passed"] and m["max_abs"] <= tolerances.REDUCED_ERROR_RATIO * t_err + atol:
            m["passed"] = True
    return m, t_err


# ---- language-model metrics -----------------------------------------------------------------------------
def lm_metrics(eng_logits, ref_logits, chunk_rows: int = 256) -> dict:
    """Teacher-forced agreement of two (..., vocab) logit arrays over every position."""
    e = np.asarray(eng_logits).reshape(-1, np.shape(eng_logits)[-1])
    r = np.asarray(ref_logits).reshape(-1, np.shape(ref_logits)[-1])
    top1 = top5 = kl = 0.0
    k = min(5, r.shape[1])
    for s in range(0, r.shape[0], chunk_rows):
        x, y = e[s:s + chunk_rows].astype(np.float64), r[s:s + chunk_rows].astype(np.float64)
        top1 += float((x.argmax(-1) == y.argmax(-1)).sum())
        tx, ty = np.argsort(-x, -1)[:, :k], np.argsort(-y, -1)[:, :k]
        top5 += float(sum(len(set(a) & set(b)) for a, b in zip(tx, ty))) / k
        lx = x - x.max(-1, keepdims=True)
        lx = lx - np.log(np.exp(lx).sum(-1, keepdims=True))
        ly = y - y.max(-1, keepdims=True)
        ly = ly - np.log(np.exp(ly).sum(-1, keepdims=True))
        with np.errstate(invalid="ignore"):
            kl += float(np.nansum(np.exp(ly) * (ly - lx)))
    n = max(1, r.shape[0])
    return {"top1_agreement": top1 / n, "top5_overlap": top5 / n, "kl": max(0.0, kl / n)}


def add_lm_metrics(rep, cand_path, ref_path) -> None:
    """Teacher-forced logit agreement of the model outputs ("<output>") of two capture files."""
    with _open(cand_path) as e, _open(ref_path) as r:
        if ROOT in e and ROOT in r and e.get_numpy(ROOT).shape == r.get_numpy(ROOT).shape:
            m = lm_metrics(e.get_numpy(ROOT), r.get_numpy(ROOT))
            rep.top1_agreement, rep.top5_overlap, rep.kl = m["top1_agreement"], m["top5_overlap"], m["kl"]


# ---- the comparison ---------------------------------------------------------------------------------------
def _open(path):
    from engine.io.safetensors import safe_open
    return safe_open(path)


def compare_captures(eng_path, ref_path, order, tol: Tolerance, noise_path=None) -> list:
    """LayerResults for every key of `order` (the reference's execution order) present in both files."""
    eng, ref = _open(eng_path), _open(ref_path)
    noise = _open(noise_path) if noise_path else None
    results = []
    try:
        for key in order:
            if key not in eng:
                continue
            base, call, _ = split_key(key)
            a, r = eng.get_numpy(key), ref.get_numpy(key)
            rtol, atol = tol(key, r.dtype)
            if a.shape != r.shape:
                results.append(LayerResult(key, base, tuple(r.shape), math.inf, math.inf, math.inf, math.nan, 0, 0,
                                           math.inf, False, rtol, atol, None, None,
                                           f"shape: engine {tuple(a.shape)} vs reference {tuple(r.shape)}"))
                continue
            m, t_err = judge(a, r, noise.get_numpy(key) if noise is not None and key in noise else None, rtol, atol)
            ik = in_key(base, call)
            inp = None
            if ik in eng and ik in ref:
                ea, ra = eng.get_numpy(ik), ref.get_numpy(ik)
                if ea.shape == ra.shape:
                    irtol, iatol = tol(key, ra.dtype)
                    inp = judge(ea, ra, noise.get_numpy(ik) if noise is not None and ik in noise else None, irtol, iatol)[0]["passed"]
            results.append(LayerResult(key, base, tuple(r.shape), m["max_abs"], m["max_rel"], m["mean_abs"], m["cosine"],
                                       m["nan"], m["inf"], m["min_passing_atol"], m["passed"], rtol, atol, inp, t_err))
    finally:
        eng.close()
        ref.close()
        if noise is not None:
            noise.close()
    return results


def _skipped_call(rep, order, missing, produced) -> str | None:
    """The reference output, nearest before the first failure, of a module call the engine never made
    (no output of that call at all), when the divergence found otherwise is weak (its input already
    fails, or none was found)."""
    failed = [r.name for r in rep.layers if not r.passed]
    if not failed or not missing:
        return None
    first = rep.layer(rep.first_divergence) if rep.first_divergence else None
    if first is not None and first.input_passed is not False and not rep.note and first.name != ROOT:
        return None
    limit = order.index(failed[0])
    calls = [k for k in missing if order.index(k) < limit and out_key(*split_key(k)[:2]) not in produced]
    return calls[-1] if calls else None


def with_missing(results, order, missing, ref_path, tol) -> list:
    """The results with a failing row, in execution order, for every reference output the engine did
    not produce (a module it never called), so the first divergence points at it."""
    if not missing:
        return results
    gone = set(missing)
    by = {r.name: r for r in results}
    out = []
    with _open(ref_path) as ref:
        for key in order:
            if key in by:
                out.append(by[key])
            elif key in gone:
                r = ref.get_numpy(key)
                rtol, atol = tol(key, r.dtype)
                out.append(LayerResult(key, split_key(key)[0], tuple(r.shape), math.inf, math.inf, math.inf, math.nan,
                                       0, 0, math.inf, False, rtol, atol, None, None,
                                       "not produced: the engine model never called this module"))
    return out


def first_divergence(results) -> tuple[str | None, str]:
    """(key, note): the first failing output whose primary input passes (or was not captured)."""
    for r in results:
        if not r.passed and r.input_passed is not False:
            return r.name, ""
    for r in results:
        if not r.passed:
            return r.name, (f"every failing layer already gets a failing input; {r.name} is the first, so the "
                            "divergence is in code outside the compared modules that feeds it")
    return None, ""


def explain_inherited(rep, confirm, max_roots: int = 16) -> None:
    """Set rep.inherited when every failing output is explained by rounding carried in from upstream:
    each failing output whose input passes (a root) matches when re-run on the reference inputs
    (`confirm(name)` is False), and the model outputs ("<output>", "<output>:i") all pass. A failing
    output whose input already fails follows from a root. More than `max_roots` roots, a root that
    cannot be re-run (None) or one that still fails leave the report as it is (FAIL)."""
    failing = [r for r in rep.layers if not r.passed]
    if not failing or any(split_key(r.name)[0] == ROOT for r in failing):
        return
    roots = [r.name for r in failing if r.input_passed is not False]
    if not roots or len(roots) > max_roots:
        return
    for name in roots:
        c = rep.confirmed if name == rep.first_divergence and rep.confirmed is not None else confirm(name)
        if name == rep.first_divergence:
            rep.confirmed = c
        if c is not False:
            return
    rep.inherited = [r.name for r in failing]


def _to_engine(arr, dtype, device):
    import engine
    a = np.asarray(arr)
    if is_float(a):
        return engine.tensor(np.ascontiguousarray(a), device=device).to(dtype)
    return engine.tensor(np.ascontiguousarray(a), device=device)


def confirm_layer(engine_model, args, kwargs, key: str, names: dict, ref_path, tol: Tolerance, dtype, device,
                  noise_path=None) -> bool | None:
    """Re-run the engine module behind `key` on the reference's primary input (its other arguments as
    the engine produced them). True: it still fails, so the layer itself is the culprit. None: the
    layer's input was not captured or the module cannot be re-run."""
    from engine.tensor import Tensor
    base, call, index = split_key(key)
    inv = {v: k for k, v in names.items()}
    qn = inv.get(base)
    if qn is None:
        return None
    ref = _open(ref_path)
    try:
        ik = in_key(base, call)
        if ik not in ref or key not in ref:
            return None
        ref_in, ref_out = np.array(ref.get_numpy(ik)), np.array(ref.get_numpy(key))
    finally:
        ref.close()
    noise_out = None
    if noise_path:
        nf = _open(noise_path)
        try:
            noise_out = np.array(nf.get_numpy(key)) if key in nf else None
        finally:
            nf.close()
    module = dict(engine_model.named_modules())[qn]
    seen = {"n": 0}
    got = {}
    had = "forward" in module.__dict__
    old = module.__dict__.get("forward")
    fwd = module.forward

    def grab(*a, **kw):
        if seen["n"] == call:
            got["a"], got["kw"] = a, kw
        seen["n"] += 1
        return fwd(*a, **kw)
    object.__setattr__(module, "forward", grab)
    try:
        engine_model(*args, **kwargs)
    finally:
        if had:
            object.__setattr__(module, "forward", old)
        else:
            del module.__dict__["forward"]
    if "a" not in got:
        return None
    a, kw = list(got["a"]), dict(got["kw"])
    x_dtype = None
    for i, v in enumerate(a):
        if isinstance(v, Tensor):
            x_dtype = v.dtype
            a[i] = _to_engine(ref_in, v.dtype, device)
            break
    else:
        for k, v in kw.items():
            if isinstance(v, Tensor):
                x_dtype = v.dtype
                kw[k] = _to_engine(ref_in, v.dtype, device)
                break
    if x_dtype is None:
        return None
    out = _flatten(module(*a, **kw), lambda x: isinstance(x, Tensor))
    if index >= len(out):
        return None
    rtol, atol = tol(key, ref_out.dtype)
    m, _ = judge(out[index].numpy(), ref_out, noise_out, rtol, atol)
    return not m["passed"]


# ---- inputs and models ----------------------------------------------------------------------------------
def _model_dtype(tm) -> str:
    for p in tm.parameters():
        if p.is_floating_point():
            return str(p.dtype).removeprefix("torch.")
    return "float32"


def _np_dtype(name: str):
    import ml_dtypes
    return {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32,
            "float64": np.float64}[name]


def round_inputs(inputs, dtype: str) -> list:
    """Floating inputs rounded once to `dtype` (every run then sees exactly these values)."""
    out = []
    for x in inputs:
        a = np.asarray(x)
        out.append(a.astype(_np_dtype(dtype)) if is_float(a) else a)
    return out


def _as_torch(a: np.ndarray, dtype: str | None):
    """numpy -> torch; floating arrays go to `dtype` (exactly: they were rounded to it before)."""
    import torch
    t = to_torch(np.asarray(a))
    return t.to(getattr(torch, dtype or "float32")) if t.is_floating_point() else t


def _engine_dtype(em):
    for p in em.parameters():
        if p.is_floating_point():
            return p.dtype.name
    return None


def _common_names(torch_model, engine_model, rename=None, skip=()) -> tuple[dict, dict, dict]:
    """({torch qn: base}, {engine qn: base}, unmatched) for modules present on both sides."""
    e_names = {qn for qn, _ in engine_model.named_modules()}
    t_names = [qn for qn, _ in torch_model.named_modules()]
    tmap, emap = {}, {}
    for qn in t_names:
        eqn = rename(qn) if rename and qn else qn
        if eqn in e_names:
            base = ROOT if qn == "" else eqn
            if qn and any(fnmatch.fnmatchcase(base, p) for p in skip):
                continue
            tmap[qn] = base
            emap[eqn] = base
    matched_e = set(emap)
    unmatched = {"torch_only": [qn for qn in t_names if qn not in tmap and not _skipped(qn, skip)],
                 "engine_only": sorted(qn for qn in e_names if qn not in matched_e and not _skipped(qn, skip))}
    return tmap, emap, unmatched


def _skipped(qn, skip):
    return any(fnmatch.fnmatchcase(qn, p) for p in skip)


# ---- the entry points ---------------------------------------------------------------------------------------
def verify(torch_model, engine_model, inputs, *, name: str | None = None, dtype: str | None = None,
           device=None, tol=None, tol_scale: float = 1.0, lm: bool = False, rename=None, skip=(),
           torch_kwargs: dict | None = None, engine_kwargs: dict | None = None, confirm: bool = True,
           noise_floor: bool = True, workdir=None, save_golden=None, torch_names=None) -> VerifyReport:
    """Compare `engine_model` with `torch_model` layer by layer on `inputs` (numpy arrays, positional).

    dtype: float32 / float64 / float16 / bfloat16 (default: the torch model's). The torch model is
    deep-copied for any dtype it is not already in; the engine model is converted in place with
    Module.to(dtype=...) if needed. tol: {glob: (rtol, atol)} overrides. rename: torch module name ->
    engine module name. skip: globs of module names not compared. workdir: keep the capture files
    there (default: a temp dir, removed). save_golden: also store the reference for verify_golden.
    noise_floor (float32): also run torch in float64, so an output within REDUCED_ERROR_RATIO x torch's
    own float32 rounding error passes even where the table's elementwise tolerance is too tight for
    errors accumulated over many layers (float16/bfloat16 always judge this way). torch_names: the
    torch forward's keyword for each input, where its positional order differs from the engine's
    (transformers' Whisper takes attention_mask second)."""
    import torch
    import engine
    dtype = dtype or _model_dtype(torch_model)
    if dtype not in ("float32", "float64") + REDUCED:
        raise VerifyError(f"dtype must be float32, float64, float16 or bfloat16, got {dtype!r}")
    device = str(engine.device.parse(device)) if device is not None else str(engine.default_device())
    if not isinstance(inputs, (list, tuple)):
        inputs = [inputs]
    inputs = round_inputs([x.numpy() if isinstance(x, torch.Tensor) else x for x in inputs], dtype)
    tk, ek = dict(torch_kwargs or {}), dict(engine_kwargs or {})
    tmap, emap, unmatched = _common_names(torch_model, engine_model, rename, skip)
    tol = tol if isinstance(tol, Tolerance) else Tolerance(dtype, tol, tol_scale)
    if _engine_dtype(engine_model) not in (None, dtype):
        engine_model.to(dtype=engine.dtype.get(dtype))
    with scratch(workdir) as wd:
        def torch_run(dt, path):
            tm = torch_model if _model_dtype(torch_model) == dt else copy.deepcopy(torch_model).to(getattr(torch, dt))
            args = [_as_torch(a, dt) for a in inputs]
            if torch_names:
                return capture_torch(tm, [], {**dict(zip(torch_names, args)), **tk}, tmap, path)
            return capture_torch(tm, args, tk, tmap, path)

        noise_path = None
        if dtype in REDUCED:
            ref = torch_run("float64", wd / "reference.safetensors")
            noise_path = torch_run(dtype, wd / "torch_noise.safetensors").path
            reference = "torch float64"
        else:
            ref = torch_run(dtype, wd / "reference.safetensors")
            reference = "torch"
            if dtype == "float32" and noise_floor:
                noise_path = torch_run("float64", wd / "torch_noise.safetensors").path
                reference = "torch (noise floor: torch float64)"
        meta = {"model": name or type(torch_model).__name__, "dtype": dtype, "reference": reference,
                "order": ref.order, "names": sorted(set(emap)), "base": emap, "lm": lm,
                "tolerance": tol.describe()}
        if ek and all(isinstance(v, (int, float, str, bool)) for v in ek.values()):
            meta["engine_kwargs"] = ek  # e.g. EnCodec's bandwidth: the golden run needs it too
        if save_golden:
            from migration.golden import save_golden as _save
            _save(save_golden, meta, ref.path, noise_path, inputs)
        return _engine_side(engine_model, inputs, ek, emap, meta, ref.path, noise_path, tol, device, confirm, wd,
                            unmatched)


def _engine_side(engine_model, inputs, ek, emap, meta, ref_path, noise_path, tol, device, confirm, wd,
                 unmatched) -> VerifyReport:
    dtype = meta["dtype"]
    args = [_to_engine(a, dtype, device) for a in inputs]
    try:
        cap = capture_engine(engine_model, args, ek, emap, wd / "engine.safetensors")
    except Exception as e:  # noqa: BLE001  (an engine that raises is a verification failure to report)
        raise VerifyError(f"the engine model raised on the verification inputs: {type(e).__name__}: {e}") from e
    results = compare_captures(cap.path, ref_path, meta["order"], tol, noise_path)
    produced = set(cap.order)
    missing = [k for k in meta["order"] if k not in produced]
    rep = VerifyReport(meta["model"], dtype, device, results, reference=meta["reference"], unmatched=unmatched,
                       route="hand")
    calls = [k for k in missing if out_key(*split_key(k)[:2]) not in produced]  # no output of that call at all
    if calls:
        rep.unmatched["reference_outputs_not_produced"] = calls
    if len(calls) < len(missing):  # the call ran but returned fewer tensors (e.g. attention weights)
        rep.unmatched["reference_extra_outputs"] = [k for k in missing if k not in set(calls)]
    rep.first_divergence, rep.note = first_divergence(results)
    skipped = _skipped_call(rep, meta["order"], missing, produced)
    if skipped:  # the engine never called a module, and the first failure comes after it
        rep.layers = with_missing(rep.layers, meta["order"], [skipped], ref_path, tol)
        rep.first_divergence = skipped
        rep.note = (f"{skipped} produced no output on the engine side (the engine model never called it) and every "
                    "failure comes after it")
        confirm = False
    if rep.first_divergence and confirm:
        def again(key):
            return confirm_layer(engine_model, args, ek, key, emap, ref_path, tol, dtype, device, noise_path)
        rep.confirmed = again(rep.first_divergence)
        explain_inherited(rep, again)
    if meta.get("lm"):
        add_lm_metrics(rep, cap.path, ref_path)
    return rep


def verify_module(torch_model, inputs, *, dtype: str | None = None, **kw) -> VerifyReport:
    """Port a torch module tree with migration.port.port, then verify it."""
    from migration.port import port
    em = port(torch_model, dtype=dtype)
    kw.setdefault("name", type(torch_model).__name__)
    return verify(torch_model, em, inputs, dtype=dtype, **kw)


def load_hf_torch(model_dir, dtype: str = "float32"):
    """The transformers reference for a model dir (eager attention: the plain reference math): the
    class of HF_MODELS for model types the engine implements, else config.json's `architectures`
    (AutoModel when it names none transformers has)."""
    import torch
    import transformers
    from migration.module_map import HF_MODELS
    from migration.port import read_config
    cfg = read_config(model_dir)
    spec = HF_MODELS.get(cfg.get("model_type"))
    names = [spec.hf_class] if spec else list(cfg.get("architectures") or [])
    auto = next((getattr(transformers, n) for n in names if hasattr(transformers, n)), transformers.AutoModel)
    return auto.from_pretrained(model_dir, dtype=getattr(torch, dtype), attn_implementation="eager").eval()


# ---- inputs per kind of model (HF_MODELS[...].inputs) -----------------------------------------------------


def verify_hf(source, *, dtype: str | None = None, batch: int = 2, seq_len: int = 16, seed: int = 0,
              engine_model=None, torch_model=None, audio=None, **kw) -> VerifyReport:
    """Verify the engine model of a HF model (a model dir, or a transformers model instance) against
    transformers on seeded inputs of its kind (HF_MODELS[...].inputs: token ids; Whisper's log-mel
    features and decoder ids; EnCodec's waveform; `audio`, a WAV path or (samples, rate), replaces
    the seeded signal), with LM metrics for causal LMs and Whisper's decoder (HF_MODELS[...].lm). The
    engine model comes from port_hf unless given."""
    from migration.module_map import hf_model
    from migration.port import port_hf
    from migration.rules import rename_name
    if isinstance(source, (str, Path)):
        tm = torch_model if torch_model is not None else load_hf_torch(source)
        name = Path(source).name
    else:
        tm, name = source, type(source).__name__
    dtype = dtype or _model_dtype(tm)
    spec = hf_model(tm.config.model_type)
    if getattr(tm.config, "_experts_implementation", None) not in (None, "eager"):
        # the reference math, and the grouped-mm MoE kernels refuse float64 (the noise-floor run)
        tm.config._experts_implementation = "eager"
    if engine_model is None:
        engine_model = port_hf(source if isinstance(source, (str, Path)) else tm, dtype=dtype).model
    inputs, torch_names, call_kw = INPUTS[spec.inputs](tm.config, batch, seq_len, seed, audio)
    kw["skip"] = tuple(spec.skip) + tuple(kw.get("skip") or ())  # the model's own, plus any asked for
    return verify(tm, engine_model, inputs, name=kw.pop("name", name), dtype=dtype, lm=spec.lm,
                  rename=lambda qn: rename_name(qn, spec.rules), torch_names=torch_names,
                  torch_kwargs={**call_kw, **({"use_cache": False} if spec.lm else {})},
                  engine_kwargs=call_kw, **kw)


from migration.golden import load_golden, verify_golden  # noqa: E402,F401  (the torch-free half, re-exported)
