"""Port any PyTorch model to an engine program through torch.export.

    from migration.export import port_program
    ported = port_program(torch_module, [example_input])    # export, lower to Core ATen, translate
    ported.program(engine.tensor(x))                          # an engine.program.Program
    ported.program.save("out/model.program")                  # program.json + weights.safetensors

Steps: torch.export.export with the example inputs (the batch dim of every tensor input dynamic, as
Dim.AUTO, where export allows it; otherwise static, with a note), `run_decompositions()` to the Core
ATen op set, then every graph node is translated through migration.aten_ops.TABLE into engine calls.
Every node keeps its ATen op, nn.Module path and Python source line (`model.py:42 in forward`), so
verify can point at them. Ops without a translation are all collected first and reported together
(UnsupportedOpsError: each op with its count and the source lines that produced it); nothing is built.

Weights are keyed by the module's own state-dict names. `load_checkpoint` fills a program from a
checkpoint whose names differ (migration.rules: renames, fused qkv, transposes), strictly.
"""
from __future__ import annotations

import copy
import inspect
import os
import re
import sys
import warnings
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

import numpy as np

from migration import aten_ops
from migration.port import PortError, _c, is_float, to_numpy, to_torch

FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<fn>\S+)')


class ExportError(PortError):
    """torch.export could not capture the model; the message carries torch's reason."""


class UnsupportedOpsError(PortError):
    def __init__(self, ops: "OrderedDict[str, UnsupportedOp]", name: str = "model"):
        self.ops = ops
        n = sum(o.count for o in ops.values())
        lines = [f"cannot port {name}: {len(ops)} ATen op(s) have no engine translation ({n} node(s)); "
                 "nothing was built:"]
        for op in ops.values():
            lines.append(f"  {op.op}  x{op.count}" + (f"  ({op.reason})" if op.reason else ""))
            for src, k in op.sources.most_common(5):
                lines.append(f"      {k}x at {src}")
            if len(op.sources) > 5:
                lines.append(f"      ... and {len(op.sources) - 5} more source line(s)")
        lines.append("add a translation to migration.aten_ops.TABLE (engine ops by name, or a composition of them)")
        super().__init__("\n".join(lines))


@dataclass
class UnsupportedOp:
    op: str
    reason: str = ""
    count: int = 0
    sources: Counter = field(default_factory=Counter)  # "file:line in fn [module]" -> count


# ---- names, dtypes and source lines --------------------------------------------------------------------------
def dtype_name(dtype) -> str:
    """A torch dtype as an engine dtype name; aten_ops.Unsupported for the dtypes the engine lacks."""
    from engine import dtype as D
    name = str(dtype).removeprefix("torch.")
    try:
        return D.get(name).name
    except (KeyError, ValueError, TypeError):
        raise aten_ops.Unsupported(f"dtype {name} (the engine has {', '.join(d.name for d in D.ALL)})") from None


def _torch_dir() -> str:
    import torch
    return os.path.dirname(torch.__file__) + os.sep


def short_path(path: str) -> str:
    """A source path as shown in reports: an installed package's file as its module path below
    site-packages (transformers/activations.py, also when the venv lives inside the working directory),
    else relative to the working directory, else below the sys.path entry it came from (a pip --target
    folder)."""
    m = re.search(r"[/\\](?:site|dist)-packages[/\\](.+)$", path)
    if m:
        return m.group(1)
    try:
        rel = os.path.relpath(path)
        if not rel.startswith(".."):
            return rel
    except ValueError:
        pass
    roots = [r for r in (os.path.abspath(p) for p in sys.path if p) if path.startswith(r.rstrip(os.sep) + os.sep)]
    return os.path.relpath(path, max(roots, key=len)) if roots else path


def frames(node) -> list:
    """[(file, line, function)] of a node's stack trace, outermost first."""
    return [(m["file"], int(m["line"]), m["fn"]) for m in FRAME.finditer(node.meta.get("stack_trace") or "")]


def _user_frame(node):
    fs = [f for f in frames(node) if not f[0].startswith(_torch_dir())]
    return fs[-1] if fs else None


def source_of(node, depth: int = 12) -> str:
    """`file.py:42 in forward` for a graph node: the innermost frame outside torch itself; for nodes made
    inside torch's own modules (nn.Linear, F.layer_norm...), the line of the nearest later node that
    uses the value in model code; else torch's own frame."""
    f = _user_frame(node)
    todo, seen = list(node.users), set()
    while f is None and todo and depth > 0:
        nxt = []
        for u in todo:
            if u in seen:
                continue
            seen.add(u)
            f = _user_frame(u)
            if f is not None:
                break
            nxt += list(u.users)
        todo, depth = nxt, depth - 1
    if f is None:
        fs = frames(node)
        f = fs[-1] if fs else None
    return "" if f is None else f"{short_path(f[0])}:{f[1]} in {f[2]}"


def module_of(node) -> tuple[str, str]:
    """(nn.Module path, its class) of a node, from nn_module_stack ('' for the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, cls = list(stack.values())[-1]
    if path.startswith("_empty_nn_module_stack"):
        return "", ""
    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = re.sub(r"\[(\d+)\]", r".\1", re.sub(r"\['([^']+)'\]", r".\1", path)).strip(".")
    cls = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
    return path, cls


def _shape(val) -> list:
    return [s if isinstance(s, int) else str(s) for s in val.shape]


# ---- the emitter ------------------------------------------------------------------------------------------
class Ref:
    """A graph value during translation: its name and torch's fake value (shape, dtype) if known."""
    __slots__ = ("name", "meta")

    def __init__(self, name, meta=None):
        self.name, self.meta = name, meta

    def __repr__(self):
        return f"Ref({self.name})"


def encode(v):
    import torch
    if isinstance(v, Ref):
        return {"ref": v.name}
    if v is aten_ops.DEV or isinstance(v, torch.device):
        return {"device": None}
    if isinstance(v, torch.dtype):
        return {"dtype": dtype_name(v)}
    if isinstance(v, aten_ops.Dt):
        return {"dtype": str(v)}
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        return v if np.isfinite(v) else {"float": str(v)}
    if isinstance(v, (list, tuple)):
        return [encode(x) for x in v]
    if isinstance(v, slice):
        return {"slice": [encode(v.start), encode(v.stop), encode(v.step)]}
    raise aten_ops.Unsupported(f"an argument of type {type(v).__name__} ({v!r})")


class Emitter:
    """Collects the engine calls of one translated ATen node (`call`), then names the last one after
    the node and attaches its metadata (`finish`)."""

    def __init__(self):
        self.nodes: list = []
        self.cur, self.start, self.k = None, 0, 0

    def begin(self, name: str):
        self.cur, self.start, self.k = name, len(self.nodes), 0

    def rollback(self):
        del self.nodes[self.start:]

    def call(self, op: str, *args, **kwargs) -> Ref:
        name = f"{self.cur}.{self.k}"
        self.k += 1
        self.nodes.append({"name": name, "op": op, "args": encode(list(args)),
                           "kwargs": {k: encode(v) for k, v in kwargs.items()}, "of": self.cur})
        return Ref(name)

    def finish(self, result, info: dict) -> None:
        last = self.nodes[-1] if len(self.nodes) > self.start else None
        if isinstance(result, Ref) and last is not None and last["name"] == result.name:
            last["name"] = self.cur
            del last["of"]
        elif isinstance(result, tuple):
            self.call("py.tuple", *result)
            self.nodes[-1]["name"] = self.cur
            del self.nodes[-1]["of"]
        else:
            self.call("py.identity", result)
            self.nodes[-1]["name"] = self.cur
            del self.nodes[-1]["of"]
        self.nodes[-1].update(info)


# ---- export ----------------------------------------------------------------------------------------------
@dataclass
class Exported:
    ep: object                 # the decomposed torch.export.ExportedProgram
    module: object             # the torch module that was exported (in the exported dtype)
    inputs: tuple              # example inputs (torch tensors)
    kwargs: dict
    dynamic: bool              # the batch dim is dynamic
    note: str = ""


def _as_tensors(inputs, dtype):
    import torch
    out = []
    for x in inputs:
        t = x if isinstance(x, torch.Tensor) else to_torch(np.asarray(x))
        if t.is_floating_point() and dtype is not None:
            t = t.to(dtype)
        out.append(t)
    return tuple(out)


def _module_dtype(module):
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def export_module(module, inputs, kwargs=None, dynamic: bool = True, dtype=None) -> Exported:
    """torch.export the module (eval mode) at the example inputs and lower it to Core ATen.
    dtype: export a copy of the module in this dtype ("bfloat16", ...). HF models get use_cache=False."""
    import torch
    if dtype is not None:
        tdt = getattr(torch, str(dtype).removeprefix("torch."))
        if _module_dtype(module) not in (None, tdt):
            module = copy.deepcopy(module).to(tdt)
    module = module.eval()
    args = _as_tensors(inputs, _module_dtype(module))
    kwargs = dict(kwargs or {})
    params = inspect.signature(module.forward).parameters
    if "use_cache" in params and "use_cache" not in kwargs:
        kwargs["use_cache"] = False  # a KV cache object is not an exportable output
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch's own pytree deprecations
        return _export(module, args, kwargs, dynamic)


def _export(module, args, kwargs, dynamic) -> Exported:
    import torch
    note, ep = "", None
    if dynamic:
        try:
            bound = inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments
            spec = {k: ({0: torch.export.Dim.AUTO} if isinstance(v, torch.Tensor) and v.ndim else None)
                    for k, v in bound.items()}
            ep = torch.export.export(module, args, kwargs, dynamic_shapes=spec).run_decompositions(_decompositions())
        except Exception as e:  # noqa: BLE001  (torch's many export errors: fall back to static shapes)
            note = f"dynamic batch refused by torch.export ({_first_line(e)}); exported at the example's shapes"
    if ep is None:
        try:
            ep = torch.export.export(module, args, kwargs).run_decompositions(_decompositions())
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"torch.export could not capture {type(module).__name__}: {type(e).__name__}: "
                              f"{_first_lines(e)}") from e
    dyn = any(not isinstance(s, int) for n in ep.graph.nodes if n.op == "placeholder"
              and hasattr(n.meta.get("val"), "shape") for s in n.meta["val"].shape)
    if dynamic and not dyn and not note:
        note = "the batch dim was specialised to the example's size (an example batch of 2 or more exports it dynamic)"
    return Exported(ep, module, args, kwargs, dyn, note)


KEEP = ("scaled_dot_product_attention",)  # kept whole: the engine has it (Core ATen would unfold it)


def _decompositions():
    """torch.export's Core ATen decomposition table, minus the ops in KEEP (their decompositions also
    trip torch's own stride checks on GPT-2's attention)."""
    import torch
    table = torch.export.default_decompositions()
    for op in list(table):
        if any(k in str(op) for k in KEEP):
            del table[op]
    return table


def _first_line(e) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _first_lines(e, n: int = 12) -> str:
    return "\n".join(str(e).strip().splitlines()[:n])


# ---- translation ----------------------------------------------------------------------------------------------
def _entry(target):
    """(table key, translation) for a call_function target; (name, None) when there is none."""
    import torch
    if isinstance(target, torch._ops.OpOverload):
        packet, overload = target._overloadpacket.__name__, target._schema.overload_name or "default"
        fn = aten_ops.TABLE.get(f"{packet}.{overload}") or aten_ops.TABLE.get(packet)
        if packet in aten_ops.SKIP:
            return packet, "skip"
        return str(target), fn
    if target in aten_ops.PY_OPS:
        op = aten_ops.PY_OPS[target]
        return op, lambda e, *a: e.call(f"py.{op}", *a)
    sym = {getattr(torch, n, None): h for n, h in (("sym_max", "max"), ("sym_min", "min"), ("sym_float", "float"),
                                                     ("sym_int", "int"))}
    if target in sym:
        return target.__name__, lambda e, *a: e.call(f"py.{sym[target]}", *a)
    name = getattr(target, "__name__", str(target))
    if name == "getitem":
        return name, aten_ops.TABLE["getitem"]
    return f"{getattr(target, '__module__', '')}.{name}".lstrip("."), None


def translate(ex: Exported, name: str = "model") -> tuple[dict, dict]:
    """(program graph dict, {weight key: numpy array}) of an Exported model; UnsupportedOpsError lists
    every op without a translation."""
    import torch
    ep = ex.ep
    sig = ep.graph_signature
    state, consts = ep.state_dict, ep.constants
    inputs, weights, arrays = [], [], OrderedDict()
    for spec in sig.input_specs:
        kind = spec.kind.name
        if kind == "USER_INPUT":
            continue
        if kind not in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
            raise PortError(f"{name}: an exported input of kind {kind} ({spec.arg.name}) cannot be ported")
        t = state[spec.target] if spec.target in state else consts[spec.target]
        w = {"name": spec.arg.name, "key": spec.target, "kind": kind.lower().replace("constant_tensor", "constant"),
             "shape": list(t.shape)}
        if kind == "BUFFER":
            w["persistent"] = bool(spec.persistent)
        weights.append(w)
        if spec.target not in arrays:
            arrays[spec.target] = np.asarray(to_numpy(t))  # a view: port_program's engine.tensor copies it
    user = [s.arg.name for s in sig.input_specs if s.kind.name == "USER_INPUT"]
    e, structure, unsupported = Emitter(), {}, OrderedDict()
    metas = {}
    for node in ep.graph.nodes:
        metas[node.name] = node.meta.get("val")
        if node.op == "placeholder" and node.name in user:
            val = node.meta.get("val")
            if not isinstance(val, torch.Tensor):  # a constant argument (use_cache=False): fixed at export
                e.begin(node.name)
                e.finish(Ref("?"), {"note": "a non-tensor input, fixed at its export value"})
                e.nodes[-1]["args"] = [encode(val)]
                continue
            try:
                inputs.append({"name": node.name, "shape": _shape(val), "dtype": dtype_name(val.dtype)})
            except aten_ops.Unsupported as err:
                raise PortError(f"{name}: input {node.name}: {err}") from None
        if node.op != "call_function":
            continue
        key, fn = _entry(node.target)
        if fn == "skip":
            continue
        module, module_type = module_of(node)

        def miss(reason=""):
            u = unsupported.setdefault(key, UnsupportedOp(key, reason))
            u.count += 1
            u.sources[source_of(node) + (f" [{module}]" if module else "")] += 1

        if fn is None:
            miss()
            continue
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: Ref(n.name, metas.get(n.name)))
        e.begin(node.name)
        try:
            if key == "getitem" and args[0].name in structure:
                item = structure[args[0].name][args[1]]
                if item is None:
                    raise aten_ops.Unsupported(f"output {args[1]} of {structure[args[0].name + '#op']} "
                                               "(the engine does not compute it)")
            result = fn(e, *args, **kwargs)
            val = node.meta.get("val")
            info = {"aten": key, "module": module, "module_type": module_type, "source": source_of(node),
                    "stack": [f"{short_path(f)}:{ln} in {fn_}" for f, ln, fn_ in frames(node)]}
            if isinstance(val, torch.Tensor):
                info.update(shape=_shape(val), dtype=dtype_name(val.dtype))
            e.finish(result, info)
            if isinstance(result, tuple):
                structure[node.name], structure[node.name + "#op"] = result, key
        except (aten_ops.Unsupported, TypeError, KeyError, IndexError) as err:
            e.rollback()
            miss(str(err) if isinstance(err, aten_ops.Unsupported) else f"translation failed: {type(err).__name__}: {err}")
    if unsupported:
        raise UnsupportedOpsError(unsupported, name)
    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    flat = list(out_node.args[0])
    outs = [flat[i] for i, s in enumerate(sig.output_specs) if s.kind.name == "USER_OUTPUT"]
    outputs = [encode(Ref(o.name)) if isinstance(o, torch.fx.Node) else encode(o) for o in outs]
    floats = [a.dtype for a in arrays.values() if is_float(a)]
    graph = {"format": "taper.program", "version": 1, "source": name, "torch": torch.__version__,
             "dtype": dtype_name(_module_dtype(ex.module)) if _module_dtype(ex.module) is not None
             else (str(floats[0]) if floats else None),
             "dynamic": ex.dynamic, "note": ex.note, "inputs": inputs, "weights": weights, "nodes": e.nodes,
             "outputs": outputs}
    return graph, arrays


@dataclass
class Ported:
    program: object            # engine.program.Program
    exported: Exported

    def summary(self) -> str:
        return summarize(self.program.graph)


def port_program(module, inputs, kwargs=None, *, name: str | None = None, dtype=None, device=None,
                 dynamic: bool = True) -> Ported:
    """Export, translate and build the engine Program of a torch module (weights copied)."""
    import engine
    from engine.program import Program
    ex = export_module(module, inputs, kwargs, dynamic=dynamic, dtype=dtype)
    graph, arrays = translate(ex, name or type(module).__name__)
    dev = device if device is not None else engine.default_device()
    prog = Program(graph, {k: engine.tensor(_c(a), device=dev) for k, a in arrays.items()})
    return Ported(prog, ex)


def summarize(graph: dict) -> str:
    """A few lines about a program: inputs, outputs, weights and the engine ops it calls."""
    nodes = graph["nodes"]
    ops = Counter(n["op"] for n in nodes)
    aten = Counter(n.get("aten") for n in nodes if "of" not in n)
    n_w = len(graph["weights"])
    lines = [f"program {graph.get('source')}: {sum(1 for n in nodes if 'of' not in n)} graph nodes -> "
             f"{len(nodes)} engine calls, {n_w} weight tensor(s), dtype {graph.get('dtype')}",
             "  inputs:  " + ", ".join(f"{i['name']} {tuple(i['shape'])} {i['dtype']}" for i in graph["inputs"]),
             f"  outputs: {len(graph['outputs'])}" + ("  (batch dim dynamic)" if graph.get("dynamic") else
                                                      "  (static shapes)")]
    if graph.get("note"):
        lines.append(f"  note: {graph['note']}")
    lines.append("  ATen ops: " + ", ".join(f"{k} x{v}" for k, v in aten.most_common()))
    lines.append("  engine ops: " + ", ".join(f"{k} x{v}" for k, v in ops.most_common()))
    return "\n".join(lines)


# ---- checkpoints with other names --------------------------------------------------------------------------------
def load_checkpoint(program, state: dict, rules=()) -> None:
    """Replace the program's weights with `state` ({checkpoint key: array}) after migration rules
    (Rename, Fuse, Split, Transpose, ...); strict: a leftover, missing or mis-shaped key is a PortError
    listing all of them."""
    import engine
    from migration.rules import apply_rules, match_keys
    res = apply_rules(dict(state), rules)
    own = {k: tuple(v.shape) for k, v in program.state_dict().items()}
    ws = program._weights()
    own.update({w["key"]: tuple(ws[w["name"]].shape) for w in program.graph["weights"]})
    rep = match_keys({k: np.shape(v) for k, v in res.state.items()}, own)
    if not rep.ok:
        raise PortError(f"the checkpoint does not fit the program after the rules:\n{rep.format()}")
    names = {w["key"]: w for w in program.graph["weights"]}
    for key, v in res.state.items():
        m, leaf = program._owner(key)
        old = getattr(m, leaf)
        t = engine.tensor(_c(v), dtype=old.dtype, device=old.device)
        if names[key]["kind"] == "parameter":
            setattr(m, leaf, t)
        else:
            m.register_buffer(leaf, t, m._buffers[leaf][1])


INPUT_DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32")


def input_spec(text: str) -> tuple:
    """'2,3,32,32' or '2,16:int64:100' -> ((2, 16), 'int64', 100); ValueError naming the text."""
    shape, _, rest = str(text).partition(":")
    dtype, _, high = rest.partition(":")
    try:
        dims = tuple(int(d) for d in shape.replace("x", ",").split(",") if d)
        high = int(high) if high else None
    except ValueError:
        raise ValueError(f"expected SHAPE[:DTYPE[:HIGH]] like 2,3,32,32 or 2,16:int64:100, got {text!r}") from None
    if not dims:
        raise ValueError(f"expected SHAPE[:DTYPE[:HIGH]] like 2,3,32,32 or 2,16:int64:100, got {text!r}")
    if dtype and dtype not in INPUT_DTYPES:
        raise ValueError(f"unsupported input dtype {dtype!r} in {text!r} (known: {', '.join(INPUT_DTYPES)})")
    return dims, dtype or "float32", high


def example_inputs(specs, seed: int = 0) -> list:
    """Seeded arrays for (shape, dtype name, high) specs: floats ~ N(0, 1), integers in [0, high)."""
    rng = np.random.default_rng(seed)
    out = []
    for dims, dtype, high in specs:
        if dtype.startswith("int"):
            out.append(rng.integers(0, high or 100, size=dims).astype(dtype))
        else:
            out.append(rng.standard_normal(dims).astype(np.float32))
    return out

