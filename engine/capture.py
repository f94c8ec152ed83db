"""Capture any fixed-shape step (a decode step, a forward) once and replay it (in the spirit of
tinygrad's TinyJit and torch's CUDA graphs).

    step = engine.capture.Captured(fn)   # fn(*tensors) -> a Tensor, a tuple of Tensors, or None
    out = step(x)                        # every call is one real step:
                                         #   call 1 runs fn eagerly (kernels compile, caches fill)
                                         #   call 2 runs it eagerly and records its backend calls
                                         #   call 3 runs it with the fusion plan, then captures that
                                         #   as a CUDA graph (not run); later calls replay the graph

Inputs are copied into static buffers (same shapes and dtypes every call: a different shape is an
error, capture again); the returned tensors are the graph's own outputs, overwritten by the next
call (copy what you keep). A step may also take no inputs and read and write tensors it closes over
(a decode step updates its token, position and cache in place, so replays need no host work).

Python runs only while recording and capturing: whatever the step computes on the host is frozen
into the graph, and inside a capture index bounds are not checked on the host (that would be a
host read); the indices entering a step are checked where they are made. A step that reads the
device from the host (.item(), .numpy(), a synchronize), uploads host data, or calls a library that
cannot be captured (cuBLAS, through cupy) raises CaptureError naming the op and the source line.

The fusion plan (made from call 2's record, see `plan`) replaces groups of backend calls by the
backend's fused ops (engine/backends/fused.py), reached by dataflow, not by model code:
  (linear here is a linear or a qlinear call: a quantized weight's linears fuse alike, as QOperands)
  rms_norm -> linear                 the norm runs as the GEMV's prologue
  linear -> add(residual)            the residual add runs in the GEMV's epilogue
  act(linear_g(x)) * linear_u(x)     one GEMV over both weights with the GLU epilogue (also one
                                     linear whose output is split in halves, as Phi-3's gate_up_proj)
  linear(x), linear(x), linear(x)    linears sharing an input (q, k, v): one GEMV over the stacked
                                     weights; each output is a view of the result
  act(group_norm(x))                 one group_norm_act launch (diffusers' GroupNorm -> SiLU)
  rotary(q), rotary(k),              one rotary_cache launch: both rotations and the writes of rotated k
  cache[k][:, :, slots] = k, ...v    and v at the step's device slots (every LLM family's attention)
Each fused op rounds exactly as the ops it replaces, so a captured step equals the eager one.
On a device without CUDA graphs (the CPU) calls after the record run fn with the plan, eagerly.
"""
from __future__ import annotations

import functools
import os
import time
import traceback

from engine import dtype as D
from engine.capture_plan import (Call, Fused, Member, NormAct, QOut, RotaryCache, _arrays, _is_array, _shapes_match,
                                  lin_bias, lin_dtype, lin_weight, plan)
from engine.storage import GraphMemory
from engine.tensor import Tensor

# backend methods that are not ops: memory, views, and what the recorder itself uses
_NOT_OPS = {"raw_alloc", "raw_free", "free_bytes", "wrap", "empty", "strided", "graph_capture", "graph_launch",
            "capturing", "load_ranges", "random_normal"}
_HOST = {"to_numpy": "reads a tensor on the host", "synchronize": "waits for the device on the host",
         "from_numpy": "uploads host data", "from_dlpack": "imports a foreign array",
         "random": "draws random numbers on the host"}
_ENGINE_DIR = os.path.dirname(os.path.abspath(__file__))


class CaptureError(RuntimeError):
    """A step cannot be captured (or took another path than the one captured); the message names the
    backend op and the source line that called it."""


def _caller() -> str:
    """The first frame outside the engine's op layers (engine/models and engine/generation count as
    callers): the model or user line that made the call."""
    models = os.path.join(_ENGINE_DIR, "models") + os.sep
    for fr in reversed(traceback.extract_stack()):
        f = os.path.abspath(fr.filename)
        internal = f.startswith(_ENGINE_DIR + os.sep) and not f.startswith(models) \
            and f != os.path.join(_ENGINE_DIR, "generation.py")
        if not internal:
            return f"{os.path.relpath(f)}:{fr.lineno} in {fr.name}"
    return "<unknown>"


class _Patched:
    """Wrap every op method of one backend instance for the length of a `with` block. Only calls made
    from outside the backend are seen (a fused op's composition calls are its own business)."""

    def __init__(self, backend, on_call):
        self.backend, self.on_call = backend, on_call
        self.depth = 0
        self.wrappers = None  # name -> wrapper, built at the first __enter__ (a _Patched may be re-entered)

    def _wrappers(self) -> dict:
        b, out = self.backend, {}
        for n in _op_names(type(b)):
            orig = getattr(b, n)

            def wrapper(*args, _orig=orig, _name=n, **kwargs):
                if self.depth:
                    return _orig(*args, **kwargs)
                self.depth += 1
                try:
                    return self.on_call(_name, _orig, args, kwargs)
                finally:
                    self.depth -= 1
            out[n] = wrapper
        return out

    def __enter__(self):
        if self.wrappers is None:
            self.wrappers = self._wrappers()
        self.backend.__dict__.update(self.wrappers)
        return self

    def __exit__(self, *exc):
        d = self.backend.__dict__
        for n in self.wrappers:
            d.pop(n, None)


@functools.lru_cache(maxsize=None)
def _op_names(cls) -> tuple:
    """The op methods of a backend class (every public callable but _NOT_OPS)."""
    return tuple(n for n in dir(cls) if not n.startswith("_") and n not in _NOT_OPS
                 and callable(getattr(cls, n, None)))


class Recorder:
    """Runs calls and keeps them (their outputs stay alive, so no two outputs of a step share memory
    while it is analysed)."""

    def __init__(self, allow_host: bool):
        self.calls: list[Call] = []
        self.allow_host = allow_host

    def __call__(self, name, orig, args, kwargs):
        call = Call(len(self.calls), name, args, kwargs, where=_caller())
        call.inputs = _arrays(args, kwargs)
        if name in _HOST and not self.allow_host:
            raise CaptureError(f"{name} {_HOST[name]} at {call.where}: a captured step cannot do that "
                               f"(backend call {call.index}); keep host work outside the step")
        call.out = orig(*args, **kwargs)
        self.calls.append(call)
        return call.out


class _Planned:
    """Runs a step's backend calls under a plan: elided calls return an unwritten placeholder, fused
    groups run at their last call. Checks that each call is the one recorded."""

    def __init__(self, trace: list[Call], the_plan: dict):
        self.trace, self.plan = trace, the_plan
        # the calls whose arguments a fused group reads (_fused): only those are kept during a run, so
        # every other call's arrays go back to the pool as soon as the step is done with them
        self.needed = {i for f in the_plan.values() if isinstance(f, Fused)
                       for i in (f.linear, f.norm, f.up, f.residual[0] if f.residual else None) if i is not None}
        self.needed |= {f.norm for f in the_plan.values() if isinstance(f, NormAct)}
        self.needed |= {i for f in the_plan.values() if isinstance(f, RotaryCache)
                        for i in (f.q, f.k, f.kw, f.at) if i is not None}
        self.placeholders: dict = {}  # (shape, dtype) -> the unwritten output of elided calls
        self.reset()

    def reset(self) -> None:
        """Ready for another run of the step (the uncaptured planned step reuses one _Planned)."""
        self.live: dict[int, tuple] = {}  # call index -> (args, kwargs) of this run
        self.group_out: dict[int, list] = {}  # a group's first call -> every member's output
        self.q_out: dict[int, object] = {}  # a RotaryCache's call -> the q buffer its QOut call returned
        self.i = 0

    def __call__(self, name, orig, args, kwargs):
        i = self.i
        self.i += 1
        if i >= len(self.trace):
            raise CaptureError(f"the step made more backend calls than when it was recorded ({name} at {_caller()})")
        rec = self.trace[i]
        if rec.name != name or not _shapes_match(args, kwargs, rec.shapes):
            now = _arrays(args, kwargs)
            raise CaptureError(f"the step took another path at backend call {i}: recorded {rec.signature()} at "
                               f"{rec.where}, now {name}({', '.join(str(tuple(a.shape)) for _, a in now)}) at "
                               f"{_caller()}; a captured step must make the same calls with the same shapes")
        if i in self.needed:
            self.live[i] = (args, kwargs)
        act = self.plan.get(i)
        if act is None:
            return orig(*args, **kwargs)
        backend = orig.__self__
        if act == "elide":  # nothing reads or writes the placeholder: one per shape and dtype serves every run
            o = rec.out
            if o is None:  # an elided in-place write (a RotaryCache's k cache write)
                return None
            key = (o.shape, o.dtype)
            ph = self.placeholders.get(key)
            if ph is None:
                ph = self.placeholders[key] = backend.empty(o.shape, D.get(o.dtype))
            return ph
        if isinstance(act, Member):
            return self.group_out[act.first][act.seg]
        if isinstance(act, QOut):  # written by the fused op at act.at, before anything reads it
            o = rec.out
            buf = self.q_out[act.at] = backend.empty(o.shape, D.get(o.dtype))
            return buf
        return self._fused(backend, act)

    def _fused(self, backend, f: Fused | NormAct | RotaryCache):
        if isinstance(f, RotaryCache):  # rotary(x, cos, sin, dt); setitem(cache, (:, :, slots), value)
            x, cos, sin, dt = self.live[f.k][0]
            kc, key, _ = self.live[f.kw][0]
            vc, _, v = self.live[f.at][0]
            q = self.live[f.q][0][0] if f.q is not None else None
            backend.rotary_cache(q, x, v, cos, sin, kc, vc, key[2], dt, q_out=self.q_out.pop(f.at, None))
            return None  # what the v write (setitem) returns
        if isinstance(f, NormAct):  # group_norm(x, groups, weight, bias, eps, out_dtype) -> act
            x, groups, w, b, eps, dt = self.live[f.norm][0][:6]
            return backend.group_norm_act(x, groups, w, b, eps, f.act, dt)
        name, lin_args = self.trace[f.linear].name, self.live[f.linear][0]  # linear or qlinear
        x, w, b, dt = lin_args[0], lin_weight(name, lin_args), lin_bias(name, lin_args), lin_dtype(name, lin_args)
        norm = glu = residual = None
        if f.norm is not None:
            na = self.live[f.norm][0]  # rms_norm(x, nd, weight, eps, out_dtype, style)
            nkw = self.live[f.norm][1]
            x = na[0]
            norm = (na[2], na[3], nkw.get("style", na[5] if len(na) > 5 else "torch"))
        if f.up is not None:
            ua = self.live[f.up][0]
            up_name = self.trace[f.up].name
            glu = (lin_weight(up_name, ua), lin_bias(up_name, ua), f.act)
        elif f.split:
            n = w.shape[0] // 2
            glu = (w[n:], b[n:] if b is not None else None, f.act)
            w, b = w[:n], (b[:n] if b is not None else None)
        if f.residual is not None:
            ci, pos = f.residual
            residual = self.live[ci][0][pos]
        if f.group:
            outs = backend.linear_group(x, [w] + [m[1] for m in f.group], [b] + [m[2] for m in f.group], dt,
                                        norm=norm, frozen=f.frozen)
            self.group_out[f.at] = outs
            return outs[0]
        return backend.linear_fused(x, w, b, dt, norm=norm, glu=glu, residual=residual, frozen=f.frozen)


# ---- the captured step --------------------------------------------------------------------------------------
class Captured:
    """See the module docstring. graphs=False runs the planned step eagerly from call 3 on (the same
    kernels, launched one by one from the host: for debugging, and the engine's uncaptured decode).
    check_host: refuse host reads and uploads in the recorded call (CaptureError naming the op and the
    line) even where the device has no graphs, so a CPU run finds what a GPU capture would refuse
    (default: only where the step is captured as a graph)."""

    def __init__(self, fn, device=None, graphs: bool = True, check_host: bool | None = None):
        self.fn, self.graphs, self.check_host = fn, graphs, check_host
        self.device = device  # where the step runs (default: its inputs', else its outputs')
        self.calls = 0
        self.inputs = None  # static input tensors
        self.trace: list[Call] | None = None
        self.the_plan: dict = {}
        self.graph = None
        self.memory = None
        self.outputs = None
        self.backend = None
        self.capture_s = None  # seconds spent recording and capturing
        self._patched = None  # the reusable _Patched(_Planned) of the uncaptured planned step

    # ---- inputs ------------------------------------------------------------------------------------------
    def _bind(self, args):
        for a in args:
            if not isinstance(a, Tensor):
                raise TypeError(f"captured steps take tensors, got {type(a).__name__}")
        if self.inputs is None:
            self.inputs = [a.clone() for a in args]
            devs = {a.device for a in args}
            if len(devs) > 1:
                raise CaptureError(f"inputs on several devices: {sorted(map(str, devs))}")
            return
        if len(args) != len(self.inputs):
            raise CaptureError(f"captured with {len(self.inputs)} inputs, called with {len(args)}")
        for i, (a, s) in enumerate(zip(args, self.inputs)):
            if a.shape != s.shape or a.dtype is not s.dtype or a.device != s.device:
                raise CaptureError(f"input {i}: {tuple(a.shape)} {a.dtype.name} on {a.device}, captured with "
                                   f"{tuple(s.shape)} {s.dtype.name} on {s.device}; a captured step has fixed "
                                   "shapes (make a new Captured for this shape)")
            if a is not s:
                s.copy_(a)

    def _device_backend(self, out):
        import engine
        if self.device is not None:
            return engine.backend(self.device)
        if self.inputs:
            return self.inputs[0].backend
        ts = [o for o in (out if isinstance(out, tuple) else (out,)) if isinstance(o, Tensor)]
        if ts:
            return ts[0].backend
        return engine.backend()

    # ---- calls ---------------------------------------------------------------------------------------------
    def __call__(self, *args):
        self._bind(args)
        self.calls += 1
        if self.calls == 1:  # warm-up: kernels compile, caches and pools fill
            out = self.fn(*self.inputs)
            self.backend = self._device_backend(out)
            return out
        if self.calls == 2:
            t0 = time.perf_counter()
            out = self._record()
            self.capture_s = time.perf_counter() - t0
            return out
        if self.calls == 3:
            t0 = time.perf_counter()
            out = self._capture()
            self.capture_s += time.perf_counter() - t0
            return out
        return self.replay()

    def _record(self):
        b = self.backend
        rec = Recorder(allow_host=not (self._has_graphs() if self.check_host is None else self.check_host))
        with _Patched(b, rec):
            out = self.fn(*self.inputs)
        outs = [o.array for o in (out if isinstance(out, tuple) else (out,)) if isinstance(o, Tensor)]
        self.trace = rec.calls
        self.the_plan = plan(self.trace, outs)
        for c in self.trace:  # the outputs may go back to the pool now; the record keeps shapes only
            c.out = _Shape(c.out) if _is_array(c.out) else None
            c.args, c.kwargs, c.inputs = (), {}, [(p, _Shape(a)) for p, a in c.inputs]
            c.shapes = [s.shape for _, s in c.inputs]
        return out

    def _has_graphs(self) -> bool:
        return self.graphs and type(self.backend).graph_capture is not _no_graphs()

    def _run_planned(self):
        """One run of the step under the plan, eagerly. The _Planned and the backend's wrappers are
        made once and reused by every run (they cost a closure per backend op to build)."""
        patched = self._patched
        if patched is None or patched.on_call.trace is not self.trace:
            patched = self._patched = _Patched(self.backend, _Planned(self.trace, self.the_plan))
        patched.on_call.reset()
        try:
            with patched:
                return self.fn(*self.inputs)
        finally:
            patched.on_call.live = {}  # drop this run's arguments (and the arrays they hold)
            patched.on_call.group_out = {}
            patched.on_call.q_out = {}

    def _capture(self):
        """Call 3: the step with the fusion plan, eagerly (a real step, which also compiles the fused
        kernels and leaves their blocks in the pool's cache), then, where the device has graphs, the
        same step captured (recorded, not run); later calls replay the graph. Before a capture that
        eager run is a rehearsal (backend.rehearsing): the backend takes its capture-time paths (the
        products' capture-safe kernels, no host-side checks), so nothing compiles or grows the pool
        inside the capture and this call's output equals the replays'."""
        if not self._has_graphs():  # the CPU: the plan runs eagerly from now on
            return self._run_planned()
        b = self.backend
        b.rehearsing = True
        try:
            out = self._run_planned()
        finally:
            b.rehearsing = False
        planned = _Planned(self.trace, self.the_plan)
        self.memory = GraphMemory(b.pool)
        holder = {}

        def body():
            with _Patched(b, planned):
                holder["out"] = self.fn(*self.inputs)
        try:
            with self.memory:
                self.graph = b.graph_capture(body, self.memory)
        except CaptureError:
            raise
        except Exception as e:  # cuBLAS, a host read, an upload inside the capture
            i = max(planned.i - 1, 0)
            rec = self.trace[i] if i < len(self.trace) else None
            where = f"backend call {i} ({rec.signature()} at {rec.where})" if rec else "the step"
            raise CaptureError(f"{where} cannot run inside a CUDA graph: {type(e).__name__}: {e}") from e
        self.outputs = holder["out"]
        return out

    def replay(self):
        if self.graph is None:
            return self._run_planned()
        self.backend.graph_launch(self.graph)
        return self.outputs


class _Shape:
    """What the record keeps of an array once the plan is made: shape and dtype."""

    def __init__(self, a):
        self.shape, self.dtype = tuple(a.shape), a.dtype


def _no_graphs():
    from engine.backends.fused import FusedOps
    return FusedOps.graph_capture


# ---- fixed-shape forwards ------------------------------------------------------------------------------------
def capture_mode(capture, device) -> bool | str:
    """What a forward runs as, from the `capture` option every engine entry point takes (as
    engine.generation.Decoder's): True a captured CUDA graph (the CPU runs the fusion plan eagerly),
    False the same planned kernels launched from the host, "plain" the model's ops as written; None
    (the default) True on CUDA and "plain" elsewhere (a forward gains nothing from the plan there)."""
    if capture is None:
        return True if getattr(device, "type", str(device).split(":")[0]) == "cuda" else "plain"
    if capture not in (True, False, "plain"):
        raise ValueError(f"capture must be True, False, 'plain' or None, got {capture!r}")
    return capture


class CapturedForward:
    """A forward captured once per input signature (the shapes, dtypes and device of its tensor
    arguments), each a Captured: fn(*tensors) -> a Tensor or a tuple (a NamedTuple too) of Tensors.
    Arguments that are not tensors are constants of the graph: pass what changes from call to call
    (a timestep, a mask) as a tensor. At most `keep` signatures are held (the oldest graph and its
    memory go first).

    prime=False: each call is one call of its Captured (the first calls of a signature run eagerly
    while it records and captures: right for a loop whose every call is real work, as a denoising
    loop). prime=True: a new signature's first call runs all three phases at once, so every later call
    replays (what a benchmark times). Outputs are the graph's buffers, overwritten by the next call of
    the same signature; copy=True returns copies instead (for callers that keep results).
    fallback=True (user-facing commands): a signature whose capture fails (CaptureError) warns once with
    the reason and runs as written from then on; False (benchmarks, tests) raises. check_host: Captured's."""

    def __init__(self, fn, capture=None, prime: bool = False, copy: bool = False, keep: int = 4,
                 fallback: bool = False, check_host: bool | None = None):
        self.fn, self.capture, self.prime, self.copy, self.keep = fn, capture, prime, copy, keep
        self.fallback, self.check_host = fallback, check_host
        self.steps: dict = {}  # signature -> Captured (None: its capture failed, it runs as written), oldest first

    def mode(self, args) -> bool | str:
        import engine
        dev = next((a.device for a in args if isinstance(a, Tensor)), None) or engine.default_device()
        return capture_mode(self.capture, dev)

    @property
    def capture_s(self) -> float:
        """Seconds spent recording and capturing, over every signature."""
        return sum(s.capture_s or 0.0 for s in self.steps.values() if s is not None)

    def __call__(self, *args):
        mode = self.mode(args)
        if mode == "plain":
            return self.fn(*args)
        bad = [type(a).__name__ for a in args if not isinstance(a, Tensor)]
        if bad:
            raise TypeError(f"a captured forward takes tensors only, got {', '.join(bad)} (a constant belongs in "
                            "the function; a value that changes per call must be a tensor)")
        key = tuple((tuple(a.shape), a.dtype.name, str(a.device)) for a in args)
        known = key in self.steps
        step = self.steps.pop(key, None)  # re-inserted: the dict's order is the order of last use
        if step is None and not known:
            while len(self.steps) >= self.keep:
                self.steps.pop(next(iter(self.steps)))
            step = Captured(self.fn, graphs=bool(mode), check_host=self.check_host)
        self.steps[key] = step
        if step is None:  # its capture failed before: as written
            return self.fn(*args)
        try:
            out = step(*args)
            while self.prime and step.calls < 3:
                out = step(*args)
        except CaptureError as e:
            if not self.fallback:
                raise
            import warnings
            warnings.warn(f"engine.capture: a forward of input shapes {[k[0] for k in key]} runs uncaptured: {e}",
                          RuntimeWarning, stacklevel=2)
            self.steps[key] = None
            return self.fn(*args)
        if not self.copy:
            return out
        if isinstance(out, Tensor):
            return out.clone()
        return type(out)(*(o.clone() if isinstance(o, Tensor) else o for o in out)) if hasattr(out, "_fields") \
            else type(out)(o.clone() if isinstance(o, Tensor) else o for o in out)
