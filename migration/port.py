"""Port a PyTorch module tree, or a Hugging Face model, to the engine.

    from migration.port import port, plan, port_hf
    em = port(torch_module)            # engine twin with the weights copied (UnmappedError if impossible)
    p = plan(torch_module)             # the mapping table only; p.unmapped lists what blocks a port
    hf = port_hf("path/to/model_dir")  # engine model from config.json + safetensors, via HF_MODELS rules

`port` walks the torch tree with migration.module_map's registry. Everything unmapped is reported in
one pass (every class, with its qualified names and counts) before anything is built. Weights go
through each entry's rules (migration.rules) and load strictly into the engine tree, so a leftover or
missing key is an error that lists all of them.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from migration import module_map as mm
from migration.rules import apply_rules, match_keys


class PortError(RuntimeError):
    """A model could not be ported; the message says everything that is wrong at once."""


class UnmappedError(PortError):
    def __init__(self, unmapped: dict, root: str = "model"):
        self.unmapped = unmapped
        lines = [f"cannot port {root}: {len(unmapped)} torch class(es) have no engine twin "
                 f"({sum(len(v) for v in unmapped.values())} module(s)); nothing was built:"]
        for cls, names in unmapped.items():
            shown = ", ".join(n or "<root>" for n in names[:6]) + (", ..." if len(names) > 6 else "")
            lines.append(f"  {cls}  x{len(names)}: {shown}")
        lines.append("register them with migration.module_map.register(TorchClass, EngineClass, children=...)")
        super().__init__("\n".join(lines))


def _c(a) -> np.ndarray:
    """C-contiguous, keeping 0-d arrays 0-d (np.ascontiguousarray makes them 1-d)."""
    a = np.asarray(a)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


# ---- torch tensors -> numpy -------------------------------------------------------------------------
def to_numpy(t) -> np.ndarray:
    """A torch tensor as a numpy array (bf16 through ml_dtypes; a view where torch allows one)."""
    import torch
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype == torch.bfloat16:
        import ml_dtypes
        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def is_float(a) -> bool:
    """A floating numpy array (or dtype), bfloat16 included (ml_dtypes' bfloat16 has kind 'V')."""
    dt = a if isinstance(a, np.dtype) else np.asarray(a).dtype
    return dt.kind == "f" or dt.name == "bfloat16"


def to_torch(a):
    """A numpy array as a torch tensor (a copy), exactly: bfloat16 through its bits."""
    import torch
    a = np.ascontiguousarray(a)
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def state_numpy(tm, copy: bool = True) -> "OrderedDict[str, np.ndarray]":
    """torch state_dict -> {key: numpy array}; copies by default so engine and torch never share memory."""
    out = OrderedDict()
    for k, v in tm.state_dict(keep_vars=False).items():
        a = to_numpy(v)
        out[k] = np.array(a, copy=True) if copy else a
    return out


# ---- the plan -----------------------------------------------------------------------------------------
@dataclass
class Row:
    name: str            # qualified torch name ("" for the root)
    torch_cls: str
    engine_cls: str
    kind: str            # leaf / container / composite / export / unmapped
    transform: str
    params: int
    note: str = ""


@dataclass
class Plan:
    root: str
    rows: list = field(default_factory=list)
    unmapped: "OrderedDict[str, list]" = field(default_factory=OrderedDict)  # class name -> qualified names
    entries: dict = field(default_factory=dict)  # qualified name -> Entry (mapped modules only)
    exported: list = field(default_factory=list)  # modules with mapped children but no twin of their forward

    @property
    def ok(self) -> bool:
        """Nothing is unmapped: the hand-written route ports every leaf (a forward without a twin, see
        `exported`, goes through torch.export)."""
        return not self.unmapped

    @property
    def hand_ok(self) -> bool:
        """`port` builds the whole engine twin by hand-written classes alone."""
        return not self.unmapped and not self.exported

    def format(self) -> str:
        return format_rows(self.rows, self.unmapped, self.root)


def _qual(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def plan(tm, root: str | None = None) -> Plan:
    """Walk a torch module tree and decide each module's engine twin, without building anything."""
    p = Plan(root or type(tm).__name__)

    pending: list = []  # [(class, name) or None], in visiting order (parents before children)

    def visit(name: str, m) -> bool:
        """Visit m's subtree; True if something in it is unmapped."""
        e = mm.lookup(m)
        n_params = sum(t.numel() for t in m.parameters())
        if e is None:
            children = list(m.named_children())
            row = Row(name, type(m).__name__, "-", "unmapped", "-", n_params)
            p.rows.append(row)
            mark = len(pending)
            pending.append((_qual(type(m)), name))
            # keep looking below so one pass finds every unmapped class
            bad = [visit(f"{name}.{cn}" if name else cn, c) for cn, c in children]
            if children and not any(bad):
                # every child maps: only this forward has no twin, and torch.export captures it
                row.kind, row.engine_cls, row.note = "export", "(torch.export)", "forward traced by torch.export"
                p.exported.append(name)
                pending[mark] = None
                return False
            return True
        p.entries[name] = e
        p.rows.append(Row(name, type(m).__name__, e.engine_name, e.kind,
                          e.describe_transform() if e.kind != "container" else "-", n_params, e.note))
        bad = False
        if e.kind in ("container", "composite"):
            for cn, c in m.named_children():
                bad |= visit(f"{name}.{cn}" if name else cn, c)
        return bad

    visit("", tm)
    for item in pending:
        if item is not None:
            p.unmapped.setdefault(item[0], []).append(item[1])
    return p


def format_rows(rows, unmapped, root: str) -> str:
    head = ("module", "torch", "engine", "kind", "params", "weight transform")
    table = [head] + [(r.name or "<root>", r.torch_cls, r.engine_cls, r.kind, f"{r.params:,}",
                       r.transform + (f" ({r.note})" if r.note else "")) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head) - 1)]
    lines = [f"port plan for {root}"]
    for i, row in enumerate(table):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * len(head[-1]))
    exported = [r.name or "<root>" for r in rows if r.kind == "export"]
    if unmapped:
        lines.append("")
        lines.append(f"UNMAPPED: {len(unmapped)} class(es), {sum(len(v) for v in unmapped.values())} module(s)")
        for cls, names in unmapped.items():
            lines.append(f"  {cls}  x{len(names)}: " + ", ".join(n or "<root>" for n in names))
    elif exported:
        lines.append("")
        lines.append(f"every leaf module is mapped; the forward of {', '.join(exported)} has no engine twin and "
                     "goes through torch.export")
    else:
        lines.append("")
        lines.append("every module is mapped")
    if unmapped or exported:
        lines.append(f"export the whole model instead (no engine code needed): taper port {root} "
                     "--example-input SHAPE[:DTYPE] -o OUT")
    return "\n".join(lines)


# ---- building ---------------------------------------------------------------------------------------------
def _local(sd: dict, prefix: str, exclude_children=()) -> dict:
    """The entries of a flat state dict under `prefix`, with the prefix stripped."""
    pre = f"{prefix}." if prefix else ""
    out = {}
    for k, v in sd.items():
        if k.startswith(pre):
            rest = k[len(pre):]
            if any(rest.startswith(c + ".") for c in exclude_children):
                continue
            out[rest] = v
    return out


_PLAIN = (type(None), bool, int, float, str)


def _copy_plain_attributes(m, em) -> None:
    """Attributes of a torch composite that its engine twin lacks: children that are None
    (`self.downsample = None`) and plain settings (ints, floats, bools, strings, None, tuples of them)."""
    names = {k: None for k, v in m._modules.items() if v is None}
    for k, v in vars(m).items():
        if not k.startswith("_") and k != "training" and (isinstance(v, _PLAIN) or (
                isinstance(v, tuple) and all(isinstance(x, _PLAIN) for x in v))):
            names[k] = v
    for k, v in names.items():
        if k not in em.__dict__ and k not in em._modules and not hasattr(type(em), k):
            setattr(em, k, v)


def port(tm, dtype=None, strict: bool = True, return_plan: bool = False):
    """Build the engine twin of a torch module tree and copy its weights.

    dtype: the engine dtype of floating weights (default: each module's torch dtype). Raises
    UnmappedError (listing every unmapped class) before building anything if the tree cannot be ported,
    and engine.nn.StateDictError if the transformed weights do not fit the built tree."""
    import engine
    from engine.nn.module import Module

    p = plan(tm)
    if not p.ok:
        raise UnmappedError(p.unmapped, p.root)
    if p.exported:
        raise PortError(f"cannot port {p.root} by hand: the forward of {', '.join(n or '<root>' for n in p.exported)} "
                        "has no engine twin (register one with migration.module_map.register(..., children=True)), or "
                        "export the whole model through torch.export: migration.export.port_program / taper port "
                        "--example-input")
    tm_was_training = tm.training
    tm.eval()
    try:
        sd = state_numpy(tm, copy=True)
    finally:
        tm.train(tm_was_training)
    engine_sd: dict = {}

    def build(name: str, m) -> Module:
        e = p.entries[name]
        try:
            em = e.build(e, m, dtype)
        except NotImplementedError as err:
            raise PortError(f"cannot port {name or '<root>'} ({type(m).__name__}): {err}") from None
        pre = f"{name}." if name else ""
        if e.kind == "leaf":
            local = _local(sd, name)
        else:
            children = [cn for cn, _ in m.named_children()]
            for cn, c in m.named_children():
                setattr(em, cn, build(f"{pre}{cn}", c))
            local = _local(sd, name, exclude_children=children)
        res = apply_rules(local, e.rules)
        local = e.transform(m, res.state) if e.transform is not None else res.state
        if e.kind == "composite":
            _copy_plain_attributes(m, em)
        if e.kind == "composite":  # the torch module's own tensors become attributes of the twin
            for k, v in local.items():
                if "." not in k and k not in em._params and k not in em._buffers:
                    persistent = k in dict(m.named_buffers(recurse=False))
                    t = engine.tensor(_c(v))
                    if persistent:
                        em.register_buffer(k, t)
                    else:
                        setattr(em, k, t)
        for k, v in local.items():
            engine_sd[f"{pre}{k}"] = v
        return em

    em = build("", tm)
    tensors = {k: engine.from_numpy(_c(v)) for k, v in engine_sd.items()}
    em.load_state_dict(tensors, strict=strict)
    if dtype is not None:
        em.to(dtype=engine.dtype.get(dtype))
    return (em, p) if return_plan else em


# ---- Hugging Face models ------------------------------------------------------------------------------------
def read_config(model_dir) -> dict:
    """engine.models.read_config, with its errors as PortError."""
    from engine.models import read_config as _read
    try:
        return _read(model_dir)
    except OSError as e:
        raise PortError(f"{Path(model_dir) / 'config.json'}: cannot read ({e.strerror or e})") from None
    except ValueError as e:
        raise PortError(str(e)) from None


def checkpoint_state(model_dir) -> dict:
    """{key: read-only mmap'd numpy array} from model.safetensors (or a sharded index) in a model dir."""
    from engine.io.safetensors import open_checkpoint, restore_aliases
    d = Path(model_dir)
    for name in ("model.safetensors.index.json", "model.safetensors"):
        if (d / name).exists():
            ck = open_checkpoint(d / name)
            sd = {k: ck.get_numpy(k) for k in ck.keys()}
            return restore_aliases(sd, getattr(ck, "metadata", {}) or {})
    raise PortError(f"{d}: no model.safetensors(.index.json); convert .bin checkpoints first with `taper convert`")


@dataclass
class HFPort:
    model: object                 # the engine model (None when only planned and it could not be built)
    model_type: str
    engine: str                   # the engine class path
    spec: mm.HFModel
    steps: list                   # migration.rules.Step, in order
    keys: object                  # migration.rules.KeyReport (None if the engine model could not be built)
    source_keys: list             # checkpoint keys before the rules
    error: str | None = None

    def format(self) -> str:
        return format_hf(self)


def engine_model_class(model_type: str):
    """(HFModel spec, engine class path, engine class) for a config.json model_type."""
    try:
        spec = mm.hf_model(model_type)
        path = spec.engine_path(model_type)
    except KeyError as e:
        raise PortError(str(e.args[0])) from None
    try:
        return spec, path, mm.resolve(path)
    except (ImportError, AttributeError) as e:
        raise PortError(f"model_type {model_type!r}: engine model {path} is not available ({e})") from None


def _ignored(cls, state: dict, steps: list) -> dict:
    """Drop checkpoint keys the engine model declares it never reads (cls.IGNORED_KEYS regexes)."""
    import re
    from migration.rules import Step
    pats = getattr(cls, "IGNORED_KEYS", ())
    out = {}
    for k, v in state.items():
        if any(re.search(p, k) for p in pats):
            steps.append(Step("ignored by the engine model", (k,), None))
        else:
            out[k] = v
    return out


def build_engine_model(cls, config: dict, state: dict, dtype=None, device=None, strict: bool = True):
    """cls(Config.from_dict(config), VarBuilder over `state`): the engine's own loading path, so key
    accounting is the VarBuilder's (strict: one StateDictError lists every problem).
    With strict=False returns (model, error or None) even when keys do not fit (missing ones are zeros)."""
    from engine.nn.module import StateDictError
    from engine.nn.varbuilder import VarBuilder
    cfg = cls.Config.from_dict(config) if hasattr(cls, "Config") else config
    vb = VarBuilder.from_tensors({k: _c(v) for k, v in state.items()}, dtype=dtype, device=device)
    vb.ignore(*getattr(cls, "IGNORED_KEYS", ()))
    if strict:
        with vb.collect():
            model = cls(cfg, vb)
        return model
    model, err = None, None
    try:
        with vb.collect():
            model = cls(cfg, vb)
    except StateDictError as e:
        err = str(e)
    return model, err


def port_diffusers(tm, dtype=None, device=None):
    """The engine model of a diffusers component instance (UNet2DConditionModel, AutoencoderKL): the
    class of the same name in engine.models' registry, its config, the state dict as it is (the
    engine's attribute paths are diffusers' keys: no rules)."""
    from engine import models
    cls = models.model_class(type(tm).__name__)
    return build_engine_model(cls, dict(tm.config), state_numpy(tm, copy=True), dtype, device)


def port_hf(source, dtype=None, device=None, build: bool = True) -> HFPort:
    """An engine model from a HF model dir (config.json + safetensors; no torch needed) or from a
    transformers model instance (its state dict), through module_map.HF_MODELS' rules.

    build=True: strict; a PortError lists every leftover, missing and mis-shaped key.
    build=False: plan only; `.keys` says what would be leftover or missing."""
    config = read_config(source) if isinstance(source, (str, Path)) else source.config.to_dict()
    model_type = config.get("model_type")
    if model_type is None:
        raise PortError("config.json has no model_type")
    spec, path, cls = engine_model_class(model_type)
    state = checkpoint_state(source) if isinstance(source, (str, Path)) else state_numpy(source, copy=True)
    res = apply_rules(state, spec.rules, config=config)
    new_state = _ignored(cls, res.state, res.steps)
    try:
        model, err = build_engine_model(cls, config, new_state, dtype, device, strict=False)
    except (NotImplementedError, ValueError, TypeError, KeyError) as e:
        raise PortError(f"{model_type}: cannot build {cls.__name__} from this config: {e}") from None
    keys = None
    if model is not None:
        engine_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        keys = match_keys({k: np.shape(v) for k, v in new_state.items()}, engine_shapes)
    out = HFPort(model if err is None else None, model_type, path, spec, res.steps, keys, sorted(state), err)
    if build and (err is not None or model is None):
        detail = keys.format() if keys is not None and not keys.ok else (err or "")
        raise PortError(f"{model_type}: the checkpoint does not fit {cls.__name__} after the rules:\n{detail}")
    return out


def format_hf(p: HFPort) -> str:
    lines = [f"port plan for a {p.model_type} model -> {p.engine}"]
    if p.spec.notes:
        lines.append(f"  notes: {p.spec.notes}")
    lines.append(f"  rules: {', '.join(repr(r) for r in p.spec.rules) or 'none'}")
    by_source = {}
    for s in p.steps:
        for src in s.sources:
            by_source.setdefault(src, []).append(s)

    def chains(key, seen=()):
        """(final key or None if dropped, [rule, ...]) for every path a checkpoint key takes."""
        steps = [s for s in by_source.get(key, []) if s not in seen]
        if not steps:
            return [(key, [])]
        out = []
        for s in steps:
            if s.rule == "tie":
                out.append((key, []))  # the key itself stays; the tie adds another name for it
                out += [(t, ["tie (shared tensor)"] + r) for t, r in chains(s.target, seen + (s,))]
            elif s.target is None:
                out.append((None, [s.rule]))
            else:
                out += [(t, [s.rule] + r) for t, r in chains(s.target, seen + (s,))]
        return out

    rows = [("checkpoint key", "engine key", "transform")]
    for k in p.source_keys:
        for target, rules in chains(k):
            rows.append((k, target or "(dropped)", "; ".join(rules) or "identity"))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    for i, r in enumerate(rows):
        lines.append(f"  {r[0].ljust(w0)}  {r[1].ljust(w1)}  {r[2]}")
        if i == 0:
            lines.append(f"  {'-' * w0}  {'-' * w1}  {'-' * 9}")
    lines.append("")
    if p.keys is None:
        lines.append(f"the engine model could not be built: {p.error}")
    elif p.keys.ok and p.error is None:
        lines.append(f"every key maps: {len(p.keys.matched)} tensors load into the engine model; nothing unmapped")
    else:
        lines.append(f"UNMAPPED: {len(p.keys.leftover)} leftover, {len(p.keys.missing)} missing, "
                     f"{len(p.keys.shape_mismatch)} shape mismatch(es)")
        lines.append(p.keys.format())
    return "\n".join(lines)


# ---- `module:factory` targets ---------------------------------------------------------------------------------
def load_factory(spec: str):
    """'package.module:factory' or 'path/to/file.py:factory' -> (torch module, example inputs or None);
    impls.sources.load_factory, with its errors as PortError."""
    from impls.sources import SourceError
    from impls.sources import load_factory as _load
    try:
        return _load(spec)
    except SourceError as e:
        raise PortError(str(e)) from None
