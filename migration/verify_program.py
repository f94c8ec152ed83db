"""Node-by-node verification of an exported engine program against torch.

    from migration.verify_program import verify_exported
    rep = verify_exported(torch_module, [x])                   # ports through torch.export, then compares
    rep = verify_exported(torch_module, [x], dtype="bfloat16", nodes=["encoder.layer.0.*"])

The torch side is the same torch.export graph run node by node by torch's own kernels (an
fx.Interpreter); the engine side is the translated program, tapped node by node. Every graph node
whose value is a tensor is compared (or those whose name, ATen op or module path matches `nodes`
globs), in execution order, under the node's own name; the model's outputs are "<output>", "<output>:1".
A node passes by the rules of migration.verify (the per-dtype table, or within REDUCED_ERROR_RATIO x
torch's own error against a float64 run of the same graph). The first divergence is the first failing
node whose tensor inputs all pass; it is re-run on torch's values of its inputs (confirmed when it
still fails), and reported with its ATen op, nn.Module path and source line.

Reference: float32 compares with torch's float32 run (noise floor: the graph run in float64 with the
model's own float32 weights). float16/bfloat16 export the model in that dtype; the reference is that
graph run in float64 with the original weights, and torch's own error is the graph run in the dtype.
The eager module's outputs are also compared with the graph's, so an export that changed the math
shows up as a note.
"""
from __future__ import annotations

import fnmatch

import numpy as np

from migration.capture import CaptureFile, VerifyError, scratch
from migration.port import _c
from migration.verify import (REDUCED, ROOT, Tolerance, _as_torch, _model_dtype, compare_captures, first_divergence,
                              add_lm_metrics, explain_inherited, judge, round_inputs)
from migration.report import VerifyReport


def _out_key(i: int) -> str:
    return ROOT if i == 0 else f"{ROOT}:{i}"


def _torch_values(out) -> list:
    import torch
    from migration.capture import _flatten
    return _flatten(out, lambda x: isinstance(x, torch.Tensor))


def run_graph(ex, inputs, weights=None, promote: bool = False, on_value=None, wanted=None) -> list:
    """Run the exported graph with torch's kernels: user `inputs` (torch tensors, in order), weights
    {state-dict name: tensor} overriding the exported ones; promote: every floating tensor and dtype
    argument in float64. on_value(node name, tensor) for each node in `wanted` (None: all). Returns the
    user outputs."""
    import torch
    ep = ex.ep
    f64 = torch.float64

    def up(v):
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v.to(f64)
        if isinstance(v, torch.dtype) and v.is_floating_point:
            return f64
        return v

    class Capture(torch.fx.Interpreter):
        def call_function(self, target, args, kwargs):
            if promote:
                args, kwargs = torch.utils._pytree.tree_map(up, (args, kwargs))
            return super().call_function(target, args, kwargs)

        def run_node(self, n):
            out = super().run_node(n)
            if on_value is not None and n.op == "call_function" and isinstance(out, torch.Tensor) \
                    and (wanted is None or n.name in wanted):
                on_value(n.name, out)
            return out

    sig = ep.graph_signature
    by_name = {s.arg.name: s for s in sig.input_specs}
    src = {**ep.state_dict, **ep.constants, **(weights or {})}
    feed, user = [], iter(inputs)
    for n in ep.graph.nodes:
        if n.op != "placeholder":
            continue
        s = by_name[n.name]
        if s.kind.name == "USER_INPUT":
            v = next(user) if isinstance(n.meta.get("val"), torch.Tensor) else n.meta.get("val")
        else:
            v = src[s.target]
        feed.append(up(v) if promote else v)
    with torch.no_grad():
        outs = Capture(ep.graph_module).run(*feed)
    flat = list(outs) if isinstance(outs, (tuple, list)) else [outs]
    return [o for o, s in zip(flat, sig.output_specs) if s.kind.name == "USER_OUTPUT"]


def _capture_torch(ex, inputs, path, wanted, weights=None, promote=False):
    from migration.port import to_numpy
    cap = CaptureFile(path)
    order = []

    def on(name, t):
        cap.add(name, to_numpy(t))
        order.append(name)
    try:
        outs = run_graph(ex, inputs, weights, promote, on, wanted)
        for i, o in enumerate(_torch_values(outs)):
            cap.add(_out_key(i), to_numpy(o))
            order.append(_out_key(i))
    except BaseException:
        cap.abort()
        raise
    cap.close({"order": order})
    return order, outs


def _capture_engine(program, args, path, wanted):
    from engine.tensor import Tensor
    cap = CaptureFile(path)
    program.set_taps(lambda name, t: cap.add(name, t.numpy()), wanted)
    try:
        out = program(*args)
    except Exception as e:
        cap.abort()
        raise VerifyError(f"the engine program raised on the verification inputs: {e}") from e
    finally:
        program.set_taps(None)
    outs = list(out) if isinstance(out, tuple) else [out]
    for i, o in enumerate([o for o in outs if isinstance(o, Tensor)]):
        cap.add(_out_key(i), o.numpy())
    cap.close()


def select_nodes(program, globs) -> set | None:
    """Node names matching any glob on name, ATen op or module path (None: every node)."""
    if not globs:
        return None
    out = set()
    for n in program.nodes():
        fields = (n["name"], n.get("aten") or "", n.get("module") or "")
        if any(fnmatch.fnmatchcase(f, g) for f in fields for g in globs):
            out.add(n["name"])
    if not out:
        raise VerifyError(f"no program node matches {', '.join(globs)} (globs on node name, ATen op or module path)")
    return out


def _deps(ex) -> dict:
    """{node name or output key: [names of the call_function nodes it reads]}"""
    import torch
    nodes = ex.ep.graph.nodes
    out = {n.name: [a.name for a in n.all_input_nodes if a.op == "call_function"]
           for n in nodes if n.op == "call_function"}
    flat = list(next(n for n in nodes if n.op == "output").args[0])
    user = [o for o, s in zip(flat, ex.ep.graph_signature.output_specs) if s.kind.name == "USER_OUTPUT"]
    tensors = [o for o in user if isinstance(o, torch.fx.Node) and isinstance(o.meta.get("val"), torch.Tensor)]
    out.update({_out_key(i): [o.name] if o.op == "call_function" else [] for i, o in enumerate(tensors)})
    return out


def _annotate(results, program, deps):
    info = {n["name"]: n for n in program.nodes()}
    by = {r.name: r for r in results}
    for r in results:
        n = info.get(r.name)
        if n is not None:
            r.op, r.module, r.source = n.get("aten", ""), n.get("module", ""), n.get("source", "")
        checked = [by[d].passed for d in _tensor_deps(r.name, deps, by)]
        r.input_passed = all(checked) if checked else None


def _tensor_deps(name, deps, by, depth: int = 50) -> list:
    """The nearest compared nodes upstream of `name` (through getitem, sizes and other uncompared nodes)."""
    out, todo, seen = [], list(deps.get(name, [])), set()
    while todo and depth:
        nxt = []
        for d in todo:
            if d in seen:
                continue
            seen.add(d)
            if d in by:
                out.append(d)
            else:
                nxt += deps.get(d, [])
        todo, depth = nxt, depth - 1
    return out


def confirm_node(program, args, name, ref_path, deps, by, tol, noise_path=None) -> bool | None:
    """Re-run node `name`'s engine steps on torch's values of its inputs: True if it still fails."""
    import engine
    from engine.io.safetensors import safe_open
    steps = [n["name"] for n in program.graph["nodes"] if n["name"] == name or n.get("of") == name]
    order = [n["name"] for n in program.graph["nodes"]]
    first = order.index(steps[0])
    env = {**program._weights(), **program._inputs(args)}
    program.run(env, names=order[:first])
    with safe_open(ref_path) as ref:
        if name not in ref:
            return None
        want = np.array(ref.get_numpy(name))
        for d in _tensor_deps(name, deps, by):
            if d in ref and d in env and hasattr(env[d], "dtype"):
                env[d] = engine.tensor(np.array(ref.get_numpy(d)), device=program.device).to(dtype=env[d].dtype)
    noise = None
    if noise_path:
        with safe_open(noise_path) as f:
            noise = np.array(f.get_numpy(name)) if name in f else None
    program.run(env, names=steps)
    got = env[name].numpy()
    rtol, atol = tol(name, want.dtype)
    return not judge(got, want, noise, rtol, atol)[0]["passed"]


def verify_exported(torch_module, inputs, *, name: str | None = None, dtype: str | None = None, device=None,
                    tol=None, tol_scale: float = 1.0, nodes=None, confirm: bool = True, noise_floor: bool = True,
                    lm: bool = False, workdir=None, ported=None) -> VerifyReport:
    """Port `torch_module` through torch.export (unless `ported`, a migration.export.Ported, is given)
    and compare the engine program with torch node by node on `inputs` (numpy arrays, positional)."""
    import engine
    import torch
    from migration.export import port_program
    dtype = dtype or _model_dtype(torch_module)
    if dtype not in ("float32", "float64") + REDUCED:
        raise VerifyError(f"dtype must be float32, float64, float16 or bfloat16, got {dtype!r}")
    device = str(engine.device.parse(device)) if device is not None else str(engine.default_device())
    inputs = round_inputs([x.numpy() if isinstance(x, torch.Tensor) else x for x in inputs], dtype)
    t_inputs = [_as_torch(a, dtype) for a in inputs]
    name = name or type(torch_module).__name__
    ported = ported or port_program(torch_module, t_inputs, name=name, dtype=dtype, device=device)
    program, ex = ported.program, ported.exported
    wanted = select_nodes(program, nodes)
    tol = tol if isinstance(tol, Tolerance) else Tolerance(dtype, tol, tol_scale)
    orig = {k: v.detach() for k, v in list(torch_module.named_parameters()) + list(torch_module.named_buffers())}
    with scratch(workdir) as wd:
        noise_path, note = None, ex.note
        if dtype in REDUCED:
            order, outs = _capture_torch(ex, t_inputs, wd / "reference.safetensors", wanted, orig, promote=True)
            _capture_torch(ex, t_inputs, wd / "torch_noise.safetensors", wanted)
            noise_path, reference = wd / "torch_noise.safetensors", "torch.export graph in float64"
        else:
            order, outs = _capture_torch(ex, t_inputs, wd / "reference.safetensors", wanted)
            reference = "torch.export graph"
            if dtype == "float32" and noise_floor:
                _capture_torch(ex, t_inputs, wd / "torch_noise.safetensors", wanted, orig, promote=True)
                noise_path = wd / "torch_noise.safetensors"
                reference += " (noise floor: float64 run)"
        note = _fidelity(ex, t_inputs, dtype, note)
        args = [engine.tensor(_c(a), device=device) for a in inputs]
        _capture_engine(program, args, wd / "engine.safetensors", wanted)
        results = compare_captures(wd / "engine.safetensors", wd / "reference.safetensors", order, tol, noise_path)
        deps = _deps(ex)
        _annotate(results, program, deps)
        rep = VerifyReport(name, dtype, device, results, reference=reference, note=note)
        rep.route = "export"
        produced = {r.name for r in results}
        missing = [k for k in order if k not in produced]
        if missing:
            rep.unmatched["reference_outputs_not_produced"] = missing
        rep.first_divergence, extra = first_divergence(results)
        rep.note = "; ".join(x for x in (note, extra) if x)
        if rep.first_divergence and confirm and rep.first_divergence in {n["name"] for n in program.nodes()}:
            by = {r.name: r for r in results}
            nodes_ = {n["name"] for n in program.nodes()}

            def again(name):
                if name not in nodes_:
                    return None
                return confirm_node(program, args, name, wd / "reference.safetensors", deps, by, tol, noise_path)
            rep.confirmed = again(rep.first_divergence)
            explain_inherited(rep, again)
        if lm:
            add_lm_metrics(rep, wd / "engine.safetensors", wd / "reference.safetensors")
        return rep


def _fidelity(ex, t_inputs, dtype, note: str) -> str:
    """A note when the exported graph's outputs differ from the eager module's (beyond the dtype's
    tolerance): the export changed the math, so torch-vs-engine agreement says less."""
    import torch
    from migration.port import to_numpy
    with torch.no_grad():
        eager = _torch_values(ex.module(*t_inputs, **ex.kwargs))
    graph = _torch_values(run_graph(ex, t_inputs))
    rtol, atol = Tolerance(dtype)("x")
    for i, (a, b) in enumerate(zip(graph, eager)):
        if a.shape != b.shape or not np.allclose(to_numpy(a).astype(np.float64), to_numpy(b).astype(np.float64),
                                                 rtol=rtol * 10, atol=atol * 10, equal_nan=True):
            return "; ".join(filter(None, [note, f"the exported graph's output {i} differs from the eager module's "
                                                 "(torch.export changed the math)"]))
    return note
