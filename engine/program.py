"""Engine programs: a model as a small JSON graph of engine calls beside a safetensors file of its
weights. Written by `taper port` (migration.export translates a torch.export graph); run here with
the engine alone (numpy on the CPU, cupy on CUDA), no torch.

    import engine.program
    prog = engine.program.load("out/mlp.program", device="cuda")
    y = prog(engine.tensor(x, device="cuda"))          # one output: a Tensor; several: a tuple

A program directory holds `program.json` and `weights.safetensors`. program.json::

    {"format": "taper.program", "version": 1, "source": ..., "dtype": "float32",
     "inputs":  [{"name": "x", "shape": ["s0", 8], "dtype": "float32"}],     # str: a symbolic size
     "weights": [{"name": "p_fc_weight", "key": "fc.weight", "kind": "parameter", "shape": [8, 4]}, ...],
     "nodes":   [{"name": "addmm", "op": "engine.matmul", "args": [{"ref": "x"}, {"ref": "permute"}],
                  "kwargs": {}, "of": "addmm"?, "aten": "aten.addmm.default", "module": "fc",
                  "module_type": "torch.nn.modules.linear.Linear", "source": "model.py:7 in forward",
                  "stack": [...], "shape": ["s0", 8], "dtype": "float32"}, ...],
     "outputs": [{"ref": "addmm"}]}

Weights are keyed in the safetensors file by the torch module's own state-dict names ("fc.weight"),
so `Program.state_dict()` has torch's keys. A node's `op` names one engine callable: `engine.<fn>`,
`F.<fn>` (engine.functional), `Tensor.<method>` (called on the first argument) or `py.<helper>` (the
structural helpers below: getitem, size, slicing and indexed writes, integer arithmetic on sizes); nothing else can be
named, so loading a program runs no foreign code. Arguments are JSON values plus tagged objects:
{"ref": name} a value computed earlier (or an input or weight), {"dtype": "float32"}, {"device": null}
(the program's device), {"float": "inf"|"-inf"|"nan"}, {"slice": [start, stop, step]}.

Nodes with no `of` are the values of the torch.export graph's nodes (same names), which verify compares
one by one; nodes with `of` are intermediate steps of one translated ATen op.
"""
from __future__ import annotations

import json
import math
import operator
from pathlib import Path

import engine
from engine import dtype as D
from engine.nn.module import Module
from engine.tensor import Tensor

FORMAT, VERSION = "taper.program", 1
GRAPH_FILE, WEIGHTS_FILE = "program.json", "weights.safetensors"


class ProgramError(ValueError):
    """A program that cannot be loaded or run as given; the message names the node, input or file."""


# ---- the py.* helpers: structure, not math ------------------------------------------------------------
def _slice(x, dim, start=None, stop=None, step=1):
    key = (slice(None),) * (dim % x.ndim) + (slice(start, stop, step),)
    return x[key]


def _index(x, indices):
    key = tuple(slice(None) if i is None else i for i in indices)
    return x[key]


def _put(x, key, value):
    """A copy of x with x[key] = value (the functional form of an in-place write)."""
    out = x.clone()
    out[key] = value
    return out


def _index_put(x, indices, values):
    return _put(x, tuple(slice(None) if i is None else i for i in indices), values)


def _slice_scatter(x, src, dim=0, start=None, stop=None, step=1):
    return _put(x, (slice(None),) * (dim % x.ndim) + (slice(start, stop, step),), src)


def _select_scatter(x, src, dim, index):
    return _put(x, (slice(None),) * (dim % x.ndim) + (index,), src)


HELPERS = {
    "getitem": operator.getitem, "size": lambda x, dim: x.shape[dim], "numel": lambda x: x.numel(),
    "slice": _slice, "index": _index, "tuple": lambda *a: tuple(a), "identity": lambda x: x,
    "index_put": _index_put, "slice_scatter": _slice_scatter, "select_scatter": _select_scatter,
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "floordiv": operator.floordiv,
    "truediv": operator.truediv, "mod": operator.mod, "neg": operator.neg, "pow": operator.pow,
    "eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le, "gt": operator.gt,
    "ge": operator.ge, "max": max, "min": min, "int": int, "float": float, "ceil": math.ceil,
    "floor": math.floor, "sqrt": math.sqrt, "item": lambda x: x.item(),
}


def resolve(op: str):
    """The callable a node's op names (ProgramError for anything outside the four namespaces)."""
    space, _, name = op.partition(".")
    if not name or name.startswith("_") or "." in name:
        raise ProgramError(f"op {op!r}: expected engine.<fn>, F.<fn>, Tensor.<method> or py.<helper>")
    if space == "py" and name in HELPERS:
        return HELPERS[name]
    if space == "Tensor" and callable(getattr(Tensor, name, None)):
        return lambda x, *a, **k: getattr(x, name)(*a, **k)
    if space in ("engine", "F"):
        fn = getattr(engine.functional if space == "F" else engine, name, None)
        if callable(fn) and not isinstance(fn, type):
            return fn
    raise ProgramError(f"op {op!r} does not exist in this engine")


# ---- arguments -------------------------------------------------------------------------------------
def _decode(a, env, device):
    if isinstance(a, list):
        return [_decode(x, env, device) for x in a]
    if isinstance(a, dict):
        (tag, v), = a.items()
        if tag == "ref":
            return env[v]
        if tag == "dtype":
            return D.get(v)
        if tag == "device":
            return device
        if tag == "float":
            return float(v)
        if tag == "slice":
            return slice(*[_decode(x, env, device) for x in v])
        raise ProgramError(f"unknown argument tag {tag!r}")
    return a


def refs(a) -> list:
    """Every value name an encoded argument refers to."""
    if isinstance(a, list):
        return [r for x in a for r in refs(x)]
    if isinstance(a, dict):
        (tag, v), = a.items()
        if tag == "ref":
            return [v]
        return refs(v) if tag == "slice" else []
    return []


class _Scope(Module):
    """A plain holder of weights at one module path (the torch module tree's names)."""


# ---- the program -------------------------------------------------------------------------------------
class Program(Module):
    """An engine Module that runs a program graph. Its state_dict has the torch module's keys; taps
    (set_taps) report node values by node name."""

    def __init__(self, graph: dict, weights: dict):
        super().__init__()
        check(graph)
        object.__setattr__(self, "graph", graph)
        object.__setattr__(self, "_fns", [resolve(n["op"]) for n in graph["nodes"]])
        object.__setattr__(self, "_node_taps", None)
        missing = sorted(w["key"] for w in graph["weights"] if w["key"] not in weights)
        extra = sorted(set(weights) - {w["key"] for w in graph["weights"]})
        shapes = sorted(f"{w['key']} {tuple(weights[w['key']].shape)} (program: {tuple(w['shape'])})"
                        for w in graph["weights"] if w["key"] in weights and "shape" in w
                        and tuple(weights[w["key"]].shape) != tuple(w["shape"]))
        if missing or extra or shapes:
            raise ProgramError("the weights do not fit the program: "
                               + "; ".join(filter(None, [missing and f"missing {', '.join(missing)}",
                                                         extra and f"unexpected {', '.join(extra)}",
                                                         shapes and f"shape {', '.join(shapes)}"])))
        for w in graph["weights"]:
            m, leaf = self._owner(w["key"], create=True)
            t = weights[w["key"]]
            if w["kind"] == "parameter":
                setattr(m, leaf, t)
            else:
                m.register_buffer(leaf, t, persistent=w.get("persistent", True) and w["kind"] == "buffer")
        object.__setattr__(self, "_last_use", _last_uses(graph))

    # ---- info -------------------------------------------------------------------------------------
    @property
    def device(self):
        """The device of the first weight (the engine's default device for a program without weights)."""
        for w in self.graph["weights"]:
            m, leaf = self._owner(w["key"])
            return getattr(m, leaf).device
        return engine.default_device()

    def nodes(self) -> list:
        """The node records (dicts) of the torch graph's values (no intermediate steps)."""
        return [n for n in self.graph["nodes"] if "of" not in n]

    def node(self, name: str) -> dict:
        for n in self.graph["nodes"]:
            if n["name"] == name:
                return n
        raise KeyError(f"no node {name!r} in the program")

    def _owner(self, key: str, create: bool = False) -> tuple:
        """(module, attribute name) holding the weight with state-dict key `key` ("fc.weight" -> (the
        "fc" scope, "weight")); create=True adds the missing scopes on the way."""
        *path, leaf = key.split(".")
        m = self
        for p in path:
            if create and p not in m._modules:
                if p in self.__dict__ or hasattr(Program, p):
                    raise ProgramError(f"weight key {key!r} clashes with the program attribute {p!r}")
                setattr(m, p, _Scope())
            m = m._modules[p]
        return m, leaf

    def _weights(self) -> dict:
        """{value name: Tensor} of every weight, by the graph's names (p_fc_weight)."""
        out = {}
        for w in self.graph["weights"]:
            m, leaf = self._owner(w["key"])
            out[w["name"]] = getattr(m, leaf)
        return out

    @staticmethod
    def _device_of(ws: dict):
        """The device of the first of the weights `ws` (the default device for none)."""
        for t in ws.values():
            return t.device
        return engine.default_device()

    # ---- running ----------------------------------------------------------------------------------
    def _inputs(self, args, dev=None) -> dict:
        """{input name: Tensor} of the call's arguments, checked against the input specs and moved to
        `dev` (by default the program's device)."""
        specs = self.graph["inputs"]
        if len(args) != len(specs):
            raise ProgramError(f"the program takes {len(specs)} input(s) "
                               f"({', '.join(s['name'] for s in specs)}), got {len(args)}")
        env, sizes = {}, {}
        dev = self.device if dev is None else dev
        for spec, x in zip(specs, args):
            if not isinstance(x, Tensor):
                x = engine.tensor(x, device=dev)
            want = D.get(spec["dtype"])
            shape = spec["shape"]
            if x.ndim != len(shape):
                raise ProgramError(f"input {spec['name']}: expected {len(shape)} dims {_fmt(shape)}, got shape "
                                   f"{tuple(x.shape)}")
            for d, (s, n) in enumerate(zip(shape, x.shape)):
                if isinstance(s, int) and s != n:
                    raise ProgramError(f"input {spec['name']}: dim {d} must be {s} (exported static), got shape "
                                       f"{tuple(x.shape)}")
                if isinstance(s, str) and sizes.setdefault(s, n) != n:
                    raise ProgramError(f"input {spec['name']}: dim {d} is {s}={sizes[s]} elsewhere, got {n}")
            if x.dtype != want:
                if (x.dtype.category == 2) != (want.category == 2):
                    raise ProgramError(f"input {spec['name']}: expected {want.name}, got {x.dtype.name}")
                x = x.to(dtype=want)
            env[spec["name"]] = x.to(device=dev) if x.device != dev else x
        return env

    def forward(self, *args):
        ws = self._weights()  # once per call: the device comes from it too
        dev = self._device_of(ws)
        env = {**ws, **self._inputs(args, dev)}
        self.run(env, dev=dev)
        outs = [_decode(o, env, dev) for o in self.graph["outputs"]]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def run(self, env: dict, names=None, dev=None) -> dict:
        """Run every node (or only `names`, in program order) on `env`, a {value name: value} dict that
        is updated in place; values are dropped after their last use unless they are outputs. `dev`:
        the device {"device": null} arguments name (by default the program's)."""
        taps, last = self._node_taps, self._last_use
        dev = self.device if dev is None else dev
        only = None if names is None else set(names)
        for i, (n, fn) in enumerate(zip(self.graph["nodes"], self._fns)):
            if only is not None and n["name"] not in only:
                continue
            try:
                val = fn(*_decode(n["args"], env, dev), **{k: _decode(v, env, dev) for k, v in n["kwargs"].items()})
            except Exception as e:  # noqa: BLE001  (re-raised with the node, its ATen op and source)
                raise ProgramError(f"node {n['name']} ({n['op']}{_where(n, self.graph)}) raised "
                                   f"{type(e).__name__}: {e}") from e
            env[n["name"]] = val
            if taps is not None and "of" not in n and isinstance(val, Tensor) \
                    and (taps[1] is None or n["name"] in taps[1]):
                taps[0](n["name"], val)
            if only is None:
                for dead in last.get(i, ()):
                    env.pop(dead, None)
        return env

    def set_taps(self, callback, names=None):
        """callback(node name, Tensor) after each graph node (those in `names`, or all) runs."""
        object.__setattr__(self, "_node_taps", None if callback is None else
                           (callback, None if names is None else set(names)))

    # ---- files ------------------------------------------------------------------------------------
    def save(self, directory) -> Path:
        """Write program.json and weights.safetensors into `directory` (each file atomically)."""
        from engine.io.atomic import atomic_write_text
        from engine.io.safetensors import save_file
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        ws = self._weights()
        arrays = {}
        for w in self.graph["weights"]:
            t = ws[w["name"]]
            arrays[w["key"]] = t.numpy()
        save_file(arrays, d / WEIGHTS_FILE, {"format": FORMAT})
        atomic_write_text(d / GRAPH_FILE, json.dumps(self.graph, indent=1, allow_nan=False))
        return d


def _fmt(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _where(n, graph) -> str:
    rec = n if "of" not in n else next((m for m in graph["nodes"] if m["name"] == n["of"]), n)
    parts = [p for p in (rec.get("aten"), rec.get("module") and f"in {rec['module']}", rec.get("source")
                         and f"at {rec['source']}") if p]
    return (", " + ", ".join(parts)) if parts else ""


def _last_uses(graph) -> dict:
    """{node index: [value names whose last use is that node]} (outputs and weights are never freed)."""
    keep = {r for o in graph["outputs"] for r in refs(o)} | {w["name"] for w in graph["weights"]}
    last = {}
    for i, n in enumerate(graph["nodes"]):
        for r in refs(n["args"]) + refs(list(n["kwargs"].values())):
            last[r] = i
    out: dict = {}
    for name, i in last.items():
        if name not in keep:
            out.setdefault(i, []).append(name)
    return out


def check(graph: dict) -> None:
    """Validate a program graph: format, version, and that every ref names an earlier value and every
    op exists (all problems in one ProgramError)."""
    if not isinstance(graph, dict) or graph.get("format") != FORMAT:
        raise ProgramError(f"not a {FORMAT} graph (format: {graph.get('format') if isinstance(graph, dict) else None!r})")
    if graph.get("version") != VERSION:
        raise ProgramError(f"program format version {graph.get('version')} (this engine reads {VERSION})")
    for key in ("inputs", "weights", "nodes", "outputs"):
        if not isinstance(graph.get(key), list):
            raise ProgramError(f"program graph: {key!r} must be a list")
    problems = []
    for what, items, fields in (("input", graph["inputs"], {"name": str, "shape": list, "dtype": str}),
                                ("weight", graph["weights"], {"name": str, "key": str, "kind": str}),
                                ("node", graph["nodes"], {"name": str, "op": str, "args": list, "kwargs": dict})):
        for i, item in enumerate(items):
            bad = [k for k, t in fields.items() if not isinstance(item, dict) or not isinstance(item.get(k), t)]
            if bad:
                problems.append(f"{what} {i}: needs {', '.join(f'{k} ({fields[k].__name__})' for k in bad)}")
    if problems:
        raise ProgramError(f"invalid program ({len(problems)} problem(s)):\n  " + "\n  ".join(problems))
    known = {s["name"] for s in graph["inputs"]} | {w["name"] for w in graph["weights"]}
    for n in graph["nodes"]:
        try:
            resolve(n["op"])
        except ProgramError as e:
            problems.append(f"node {n['name']}: {e}")
        for r in refs(n["args"]) + refs(list(n["kwargs"].values())):
            if r not in known:
                problems.append(f"node {n['name']}: refers to {r!r} before it is defined")
        known.add(n["name"])
    for r in refs(graph["outputs"]):
        if r not in known:
            problems.append(f"output refers to unknown value {r!r}")
    if problems:
        raise ProgramError(f"invalid program ({len(problems)} problem(s)):\n  " + "\n  ".join(problems))


def load(directory, device=None, dtype=None) -> Program:
    """A Program from a directory written by Program.save (or `taper port`). dtype casts the floating
    weights (the graph's own dtype arguments stay as exported)."""
    from engine.io.safetensors import SafetensorsError, load_file
    d = Path(directory)
    try:
        graph = json.loads((d / GRAPH_FILE).read_text())
    except OSError as e:
        raise ProgramError(f"{d / GRAPH_FILE}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ProgramError(f"{d / GRAPH_FILE}: not valid JSON ({e.msg} at line {e.lineno})") from None
    try:
        arrays = load_file(d / WEIGHTS_FILE) if graph.get("weights") else {}
    except (OSError, SafetensorsError) as e:
        raise ProgramError(f"{d / WEIGHTS_FILE}: {e}") from None
    dev = device if device is not None else engine.default_device()
    weights = {k: engine.tensor(a, device=dev) for k, a in arrays.items()}
    prog = Program(graph, weights)
    if dtype is not None:
        prog.to(dtype=D.get(dtype))
    return prog
