"""Any candidate implementation against any reference, through impls (DESIGN: implementations are
adapters): `taper verify MODEL --reference torch --candidate onnxruntime`.

    from migration.verify_impls import verify_impls
    rep = verify_impls("llama:tiny", candidate="torch-compile")

The torch module is built once (a preset, a HF directory or module:factory, seeded) and every
implementation is loaded on those same weights (`Impl.load(None, module=...)`; the engine gets the
port of that module: its hand-written model, or the torch.export program). Both run the same seeded
inputs: teacher-forced logits for language models (with top-1/top-5/KL), else forward outputs. Where
both implementations can tap (`Model.tap`), the outputs of every module they share are compared too;
otherwise only the outputs are, and the report says why.

Reduced precision: the reference is also run in float32, which is the truth here; the reference's
own float16/bfloat16 run is the yardstick (an output passes within REDUCED_ERROR_RATIO x its error).
"""
from __future__ import annotations

import contextlib
from collections import defaultdict

import numpy as np

from migration.capture import CaptureFile, VerifyError, out_key, scratch
from migration.report import VerifyReport
from migration.verify import (REDUCED, ROOT, Tolerance, add_lm_metrics, compare_captures, first_divergence,
                              lm_inputs)


def _impl(name: str, device: str, dtype: str):
    import impls
    try:
        return impls.get(name, device, dtype)
    except impls.Unavailable as e:
        raise VerifyError(f"implementation {name!r} cannot run here: {e}") from None


def build_reference(source, seed: int = 0):
    """(torch module in float32 on the CPU, impls Source, example inputs or None)."""
    from impls import sources
    src = sources.parse(source)
    return _impl("torch", "cpu", "float32").build_module(src, seed)


def engine_module(tm, inputs=None, dtype=None, device=None, route: str = "auto"):
    """The engine twin of a torch module: the hand-written engine model (HF model types the engine
    implements, or a module tree that maps class by class), else the torch.export program. Returns
    (engine Module, route)."""
    from migration import module_map as mm
    from migration.port import plan, port, port_hf
    from impls.sources import DIFFUSERS
    cfg = getattr(tm, "config", None)
    if route in ("auto", "hand"):
        if type(tm).__name__ in DIFFUSERS:
            from migration.port import port_diffusers
            return port_diffusers(tm, dtype=dtype, device=device), "hand"
        if cfg is not None and getattr(cfg, "model_type", None) in mm.HF_MODELS:
            return port_hf(tm, dtype=dtype, device=device).model, "hand"
        if cfg is None and plan(tm).hand_ok:
            em = port(tm, dtype=dtype)
            return (em.to(device=device) if device else em), "hand"
        if route == "hand":
            raise VerifyError(f"{type(tm).__name__} has no hand-written engine twin (see `taper port`)")
    if inputs is None:
        raise VerifyError(f"{type(tm).__name__}: exporting a program needs example inputs (--input SHAPE)")
    from migration.export import port_program
    return port_program(tm, inputs, dtype=dtype, device=device).program, "export"


def _input_kind(tm):
    """HF_MODELS' input kind of a transformers model ("ids", "speech", "waveform"); None when unknown."""
    from migration import module_map as mm
    mt = getattr(getattr(tm, "config", None), "model_type", None)
    spec = mm.HF_MODELS.get(mt) if mt else None
    return getattr(spec, "inputs", None)


def _is_lm(tm) -> bool:
    cfg = getattr(tm, "config", None)
    head = getattr(tm, "get_output_embeddings", None)
    return cfg is not None and hasattr(cfg, "vocab_size") and head is not None and head() is not None


def _load(name, tm, device, dtype, inputs, route):
    """(impls Model, engine route) of implementation `name` on the weights of `tm` (float32, cpu), which
    is copied for another dtype or device (TorchImpl converts the module it is given in place)."""
    import copy
    im = _impl(name, device, dtype)
    if im.module_kind == "engine":  # a port of the torch module
        em, how = engine_module(tm, inputs, dtype=dtype, device=device, route=route)
        return im.load(None, module=em), how
    return im.load(None, module=tm if (dtype, device) == ("float32", "cpu") else copy.deepcopy(tm)), ""


def _run(model, lm, ids, inputs, names, path):
    cap = CaptureFile(path)
    order, calls = [], defaultdict(int)

    def on(name, arr):
        k = out_key(names[name], calls[name])
        calls[name] += 1
        cap.add(k, np.asarray(arr))
        order.append(k)
    try:
        if names:
            with _tap(model, list(names), on):
                outs = [model.logits(ids)] if lm else model.forward(*inputs)
        else:
            outs = [model.logits(ids)] if lm else model.forward(*inputs)
        for i, o in enumerate(outs):
            cap.add(out_key(ROOT, 0, i), np.asarray(o))
            order.append(out_key(ROOT, 0, i))
    except BaseException:
        cap.abort()
        raise
    cap.close({"order": order})
    return order


@contextlib.contextmanager
def _tap(model, names, callback):
    """model.tap, except for models over an engine Module, whose modules may return tuples: those report
    their first tensor here (as torch's taps do); impls' engine tap reads a single tensor only."""
    from engine.nn.module import Module
    from engine.tensor import Tensor
    from migration.capture import _flatten
    em = getattr(model, "module", None)
    if not isinstance(em, Module):
        with model.tap(names, callback):
            yield
        return

    def on(name, out):
        ts = _flatten(out, lambda x: isinstance(x, Tensor))
        if ts:
            callback(name, ts[0].float().numpy() if ts[0].dtype.is_reduced else ts[0].numpy())
    em.set_taps(on, names)
    try:
        yield
    finally:
        em.set_taps(None)


def _capture(model, lm, ids, inputs, names: dict, path):
    """Run the model once with taps on `names` ({its module name: capture key}); when it cannot tap,
    run it again without. Returns (order, reason taps were not used)."""
    reason = ""
    if names:
        try:
            return _run(model, lm, ids, inputs, names, path), ""
        except Exception as e:  # noqa: BLE001  (TapsUnsupported, or a tap that cannot read an output)
            first = (str(e).strip().splitlines() or [""])[0][:160]
            reason = str(e) if type(e).__name__ == "TapsUnsupported" else \
                f"{model.impl.name} cannot tap here ({type(e).__name__}: {first}): outputs only"
    try:
        return _run(model, lm, ids, inputs, {}, path), reason
    except Exception as e:  # noqa: BLE001  (an implementation that raises is a verification failure)
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise VerifyError(f"{model.impl.name} raised on the verification inputs: {type(e).__name__}: {first}") from e


def _tap_names(tm, model) -> dict:
    """{module name in `model`: capture key}: torch's module names; a hand-written engine model's names
    after the model's migration rules; none for an engine program (it taps graph nodes, not modules)."""
    em = getattr(model, "module", None)
    if em is tm or model.impl.name != "engine":
        return {n: n for n, _ in tm.named_modules() if n}
    if hasattr(em, "graph"):
        return {}
    from migration.verify import _common_names
    tmap, _, _ = _common_names(tm, em, _rename_for(tm))
    return {b: b for q, b in tmap.items() if q}


def _rename_for(tm):
    from migration import module_map as mm
    from migration.rules import rename_name
    mt = getattr(getattr(tm, "config", None), "model_type", None)
    if mt in mm.HF_MODELS:
        return lambda qn: rename_name(qn, mm.HF_MODELS[mt].rules)
    return None


def verify_impls(source, *, reference: str = "torch", candidate: str = "engine", inputs=None,
                 dtype: str = "float32", device: str = "cpu", seed: int = 0, batch: int = 2, seq_len: int = 16,
                 tol=None, tol_scale: float = 1.0, taps: bool = True, route: str = "auto", workdir=None,
                 name: str | None = None, module=None) -> VerifyReport:
    """Compare `candidate` with `reference` (impls names) on one model; see the module docstring.
    module: a torch module already built (source is then only its name)."""
    if dtype not in ("float32",) + REDUCED:
        raise VerifyError(f"dtype must be float32, float16 or bfloat16 for implementation comparisons, got {dtype!r}")
    if module is not None:
        tm, given = module.float().eval(), None
    else:
        tm, _, given = build_reference(source, seed)
    kind = _input_kind(tm)
    if kind not in (None, "ids"):
        raise VerifyError(f"{source}: comparing {candidate} with {reference} takes token ids or --input tensors; "
                          f"a {tm.config.model_type} model takes {kind} (log-mel features and decoder ids, or a "
                          "waveform): verify it torch against engine (the default --reference/--candidate), "
                          "which builds those inputs")
    inputs = [np.asarray(x.numpy() if hasattr(x, "numpy") else x) for x in (inputs if inputs is not None else
                                                                             (given or []))]
    lm = _is_lm(tm)
    ids = lm_inputs(tm.config.vocab_size, batch, seq_len, seed)[0] if lm else None
    if not lm and not inputs and hasattr(getattr(tm, "config", None), "vocab_size"):
        inputs = lm_inputs(tm.config.vocab_size, batch, seq_len, seed)  # a token encoder (bert, clip_text_model)
    if not lm and not inputs:
        raise VerifyError(f"{source} gives no inputs: pass --input SHAPE[:DTYPE[:HIGH]]")
    ex_inputs = [ids] if lm else inputs
    ref = _load(reference, tm, device, dtype, ex_inputs, route)[0]
    cand, how = _load(candidate, tm, device, dtype, ex_inputs, route)
    r_names, c_names = (_tap_names(tm, ref), _tap_names(tm, cand)) if taps else ({}, {})
    if not (r_names and c_names):
        r_names = c_names = {}
    tol = tol if isinstance(tol, Tolerance) else Tolerance(dtype, tol, tol_scale)
    with scratch(workdir) as wd:
        truth = None
        if dtype in REDUCED:  # the reference in float32 is the truth; its own reduced run the yardstick
            truth = _load(reference, tm, device, "float32", ex_inputs, route)[0]
            order, r_reason = _capture(truth, lm, ids, inputs, r_names, wd / "reference.safetensors")
            _capture(ref, lm, ids, inputs, r_names, wd / "noise.safetensors")
            noise = wd / "noise.safetensors"
        else:
            order, r_reason = _capture(ref, lm, ids, inputs, r_names, wd / "reference.safetensors")
            noise = None
        c_order, c_reason = _capture(cand, lm, ids, inputs, c_names, wd / "candidate.safetensors")
        tapped_ref = [k for k in order if not k.startswith(ROOT)]
        tapped_cand = [k for k in c_order if not k.startswith(ROOT)]
        reason = r_reason or c_reason
        if not taps:
            reason = "layer taps turned off: outputs only"
        elif not (r_names or c_names):
            reason = f"{reference} and {candidate} share no layer names (an engine program taps graph nodes)"
        if c_names and not reason and tapped_ref and not tapped_cand:
            reason = (f"{candidate}'s taps reported no layer outputs (a compiled graph runs without the module "
                      "hooks): outputs only")
        if reason:
            order = [k for k in order if k.startswith(ROOT)]
        results = compare_captures(wd / "candidate.safetensors", wd / "reference.safetensors", order, tol, noise)
        ref_name = f"{reference} ({ref.impl.label})" + (f", float32 truth; {reference} {dtype} as yardstick"
                                                        if truth is not None else "")
        rep = VerifyReport(name or str(source), dtype, device, results, reference=ref_name, candidate=candidate,
                           route="impls" + (f", engine {how} route" if how else ""))
        if reason:
            rep.unmatched["outputs_only"] = [reason]
        rep.first_divergence, rep.note = first_divergence(results)
        if lm:
            add_lm_metrics(rep, wd / "candidate.safetensors", wd / "reference.safetensors")
        return rep
