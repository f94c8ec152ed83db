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
  rms_norm -> linear                 the norm runs as the GEMV's prologue
  linear -> add(residual)            the residual add runs in the GEMV's epilogue
  act(linear_g(x)) * linear_u(x)     one GEMV over both weights with the GLU epilogue (also one
                                     linear whose output is split in halves, as Phi-3's gate_up_proj)
Each fused op rounds exactly as the ops it replaces, so a captured step equals the eager one.
On a device without CUDA graphs (the CPU) calls after the record run fn with the plan, eagerly.
"""
from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field

from engine.storage import GraphMemory
from engine.tensor import Tensor

# backend methods that are not ops: memory, views, and what the recorder itself uses
_NOT_OPS = {"raw_alloc", "raw_free", "free_bytes", "wrap", "empty", "strided", "graph_capture", "graph_launch",
            "capturing", "load_ranges", "random_normal"}
_HOST = {"to_numpy": "reads a tensor on the host", "synchronize": "waits for the device on the host",
         "from_numpy": "uploads host data", "from_dlpack": "imports a foreign array",
         "random": "draws random numbers on the host"}
_WRITES = {"copy_": 0, "setitem": 0}  # in-place ops: the argument they write
_ENGINE_DIR = os.path.dirname(os.path.abspath(__file__))


class CaptureError(RuntimeError):
    """A step cannot be captured (or took another path than the one captured); the message names the
    backend op and the source line that called it."""


# ---- recording backend calls -------------------------------------------------------------------------------
def _is_array(a) -> bool:
    return hasattr(a, "__array_interface__") or hasattr(a, "__cuda_array_interface__")


def _ptr(a) -> int:
    if hasattr(a, "data") and hasattr(a.data, "ptr"):  # cupy
        return int(a.data.ptr)
    return int(a.__array_interface__["data"][0])


def _extent(a) -> tuple[int, int] | None:
    """[lo, hi) bytes an array touches; None when empty."""
    if a.size == 0:
        return None
    p = _ptr(a)
    lo = hi = p
    for n, s in zip(a.shape, a.strides):
        if s < 0:
            lo += s * (n - 1)
        else:
            hi += s * (n - 1)
    return lo, hi + a.itemsize


def _arrays(args, kwargs):
    """(position, array) for every array argument, lists and tuples included."""
    out = []
    for i, a in list(enumerate(args)) + list(kwargs.items()):
        if _is_array(a):
            out.append((i, a))
        elif isinstance(a, (list, tuple)):
            for j, b in enumerate(a):
                if _is_array(b):
                    out.append(((i, j), b))
                elif isinstance(b, (list, tuple)):  # linear_fused's norm/glu tuples
                    out += [((i, j, k), c) for k, c in enumerate(b) if _is_array(c)]
    return out


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


@dataclass
class Call:
    index: int
    name: str
    args: tuple
    kwargs: dict
    out: object = None
    where: str = ""
    inputs: list = field(default_factory=list)  # (position, array)

    def signature(self) -> str:
        shapes = ", ".join(f"{tuple(a.shape)}" for _, a in self.inputs)
        return f"{self.name}({shapes})"


class _Patched:
    """Wrap every op method of one backend instance for the length of a `with` block. Only calls made
    from outside the backend are seen (a fused op's composition calls are its own business)."""

    def __init__(self, backend, on_call):
        self.backend, self.on_call = backend, on_call
        self.depth = 0

    def __enter__(self):
        b = self.backend
        names = [n for n in dir(type(b)) if not n.startswith("_") and n not in _NOT_OPS
                 and callable(getattr(type(b), n, None))]
        self.names = names
        for n in names:
            orig = getattr(b, n)

            def wrapper(*args, _orig=orig, _name=n, **kwargs):
                if self.depth:
                    return _orig(*args, **kwargs)
                self.depth += 1
                try:
                    return self.on_call(_name, _orig, args, kwargs)
                finally:
                    self.depth -= 1
            setattr(b, n, wrapper)
        return self

    def __exit__(self, *exc):
        for n in self.names:
            self.backend.__dict__.pop(n, None)


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


# ---- the fusion plan ---------------------------------------------------------------------------------------
ACTIVATIONS = ("silu", "gelu_tanh", "gelu")


class _Graph:
    """Producers and consumers of each recorded call's output, by memory ranges."""

    def __init__(self, calls: list[Call], escaping: list):
        self.calls = calls
        self.ranges = []  # (lo, hi, call index)
        for c in calls:
            for o in (c.out if isinstance(c.out, tuple) else (c.out,)):
                if _is_array(o):
                    e = _extent(o)
                    if e is not None:
                        self.ranges.append((e[0], e[1], c.index))
        self.ranges.sort()
        self.consumers: dict[int, list] = {}  # producer -> [(consumer index, position, array)]
        self.writes: dict[int, list] = {}  # call index -> [(lo, hi)] it writes in place
        for c in calls:
            for pos, a in c.inputs:
                p = self.producer(a)
                if p is not None:
                    self.consumers.setdefault(p, []).append((c.index, pos, a))
            if c.name in _WRITES and c.inputs:
                e = _extent(c.args[_WRITES[c.name]])
                if e is not None:
                    self.writes[c.index] = [e]
        for a in escaping:  # the step's outputs: consumed after the step
            p = self.producer(a)
            if p is not None:
                self.consumers.setdefault(p, []).append((len(calls), "out", a))

    def producer(self, a):
        e = _extent(a)
        if e is None:
            return None
        import bisect
        i = bisect.bisect_right(self.ranges, (e[0], float("inf"), 0)) - 1
        if i >= 0 and self.ranges[i][0] <= e[0] and e[1] <= self.ranges[i][1]:
            return self.ranges[i][2]
        return None

    def only_consumers(self, i) -> list:
        return self.consumers.get(i, [])

    def written_between(self, a, lo: int, hi: int) -> bool:
        """Whether array a's memory is written in place by a call strictly between lo and hi."""
        e = _extent(a)
        if e is None:
            return False
        for k, ranges in self.writes.items():
            if lo < k < hi and any(r[0] < e[1] and e[0] < r[1] for r in ranges):
                return True
        return False


def _full(out, a) -> bool:
    """a views all of `out` in the same element order (the output itself, or a reshape of it)."""
    return a.size == out.size and _ptr(a) == _ptr(out) and a.dtype == out.dtype and _contig(a)


def _contig(a) -> bool:
    return a.flags.c_contiguous


@dataclass
class Fused:
    """At call `at`, run backend.linear_fused with arguments taken from calls of this run:
    x from (call, position), w/b from the linear call, optional norm, glu, residual."""
    at: int
    linear: int  # the (gate) linear call
    norm: int | None = None  # the elided rms_norm call
    up: int | None = None  # the up linear call (GLU from two linears)
    split: bool = False  # GLU from one linear whose output halves are gate and up
    act: str | None = None
    residual: tuple | None = None  # (call, position) of the residual operand
    elided: list = field(default_factory=list)


def plan(calls: list[Call], escaping=()) -> dict:
    """{call index: Fused or "elide"} for the groups described in the module docstring."""
    g = _Graph(calls, list(escaping))
    out: dict = {}
    by = {c.index: c for c in calls}
    taken: set = set()

    def single(i):
        cons = g.only_consumers(i)
        return cons[0] if len(cons) == 1 else None

    def is_linear(c):
        return c.name == "linear" and len(c.args) >= 4 and _is_array(c.args[0]) and _is_array(c.args[1])

    fused: dict[int, Fused] = {}  # linear index -> its group
    # GLU from two linears: act(linear_g(x)) * linear_u(x)
    for a in calls:
        if a.name != "unary" or a.args[0] not in ACTIVATIONS or a.index in taken:
            continue
        gi = g.producer(a.args[1])
        if gi is None or not is_linear(by[gi]) or gi in taken or single(gi) is None or single(gi)[0] != a.index:
            continue
        lg = by[gi]
        if not _full(lg.out, a.args[1]) or a.args[2] != lg.args[3]:
            continue
        m = single(a.index)
        if m is None or by[m[0]].name != "binary" or by[m[0]].args[0] != "mul":
            continue
        mc = by[m[0]]
        other = mc.args[2] if m[1] == 1 else mc.args[1]
        ui = g.producer(other) if _is_array(other) else None
        if ui is None or not is_linear(by[ui]) or ui in taken or single(ui) is None or single(ui)[0] != mc.index:
            continue
        lu = by[ui]
        if not (_full(lu.out, other) and _same(lu.args[0], lg.args[0]) and lu.args[3] == lg.args[3]
                and other.shape == a.args[1].shape and mc.args[3] == mc.args[4] == lg.args[3]):
            continue
        if g.written_between(lg.args[0], min(gi, ui), mc.index):
            continue
        f = Fused(at=mc.index, linear=gi, up=ui, act=a.args[0], elided=[gi, ui, a.index])
        taken.update([gi, ui, a.index, mc.index])
        fused[gi] = fused[ui] = f
    # GLU from one linear split in halves (Phi-3's gate_up_proj)
    for a in calls:
        if a.name != "unary" or a.args[0] not in ACTIVATIONS or a.index in taken:
            continue
        li = g.producer(a.args[1])
        if li is None or not is_linear(by[li]) or li in taken:
            continue
        lin = by[li]
        cons = g.only_consumers(li)
        n2 = lin.out.shape[-1]
        if len(cons) != 2 or n2 % 2 or lin.out.size == 0 or not _contig(lin.out):
            continue
        gate_view = a.args[1]
        m = single(a.index)
        if m is None or by[m[0]].name != "binary" or by[m[0]].args[0] != "mul":
            continue
        mc = by[m[0]]
        up_view = mc.args[2] if m[1] == 1 else mc.args[1]
        if not _is_array(up_view) or {c[0] for c in cons} != {a.index, mc.index}:
            continue
        half = n2 // 2 * lin.out.itemsize
        if not (_ptr(gate_view) == _ptr(lin.out) and _ptr(up_view) == _ptr(lin.out) + half
                and gate_view.shape == up_view.shape == lin.out.shape[:-1] + (n2 // 2,)
                and a.args[2] == lin.args[3] and mc.args[3] == mc.args[4] == lin.args[3]):
            continue
        f = Fused(at=mc.index, linear=li, split=True, act=a.args[0], elided=[li, a.index])
        taken.update([li, a.index, mc.index])
        fused[li] = f
    # residual epilogue: linear -> add
    for c in calls:
        if not is_linear(c) or (c.index in taken and c.index not in fused):
            continue
        f = fused.get(c.index)
        src = f.at if f is not None else c.index  # the call whose result goes to the add
        if f is not None and f.up is not None and c.index != f.linear:
            continue
        s = single(src)
        if s is None or by[s[0]].name != "binary" or by[s[0]].args[0] != "add" or s[1] not in (1, 2):
            continue
        ad = by[s[0]]
        res_pos = 2 if s[1] == 1 else 1
        res = ad.args[res_pos]
        src_out = by[src].out
        if not (_is_array(res) and res.shape == src_out.shape and res.dtype == src_out.dtype
                and _full(src_out, ad.args[s[1]]) and ad.args[3] == ad.args[4] == c.args[3]):
            continue
        if g.written_between(res, src, ad.index) or g.written_between(c.args[0], c.index, ad.index):
            continue
        if f is None:
            f = Fused(at=ad.index, linear=c.index, elided=[c.index])
            fused[c.index] = f
        else:
            f.elided.append(f.at)
            f.at = ad.index
        f.residual = (ad.index, res_pos)
        taken.update([c.index, ad.index])
    # norm prologue: rms_norm whose every consumer is a linear's input
    for c in calls:
        if c.name != "rms_norm" or c.args[1] != 1 or not _is_array(c.args[0]):
            continue
        cons = g.only_consumers(c.index)
        lins = [by[j] for j, pos, a in cons if j < len(calls)]
        if not cons or len(lins) != len(cons) or not all(is_linear(lc) and pos == 0 and _full(c.out, a)
                                                        for lc, (j, pos, a) in zip(lins, cons)):
            continue
        if any(g.written_between(c.args[0], c.index, fused[lc.index].at if lc.index in fused else lc.index)
               for lc in lins):
            continue
        for lc in lins:
            f = fused.get(lc.index)
            if f is None:
                f = Fused(at=lc.index, linear=lc.index)
                fused[lc.index] = f
            f.norm = c.index
        out[c.index] = "elide"
    for f in {id(f): f for f in fused.values()}.values():
        for e in f.elided:
            if e != f.at:
                out[e] = "elide"
        out[f.at] = f
    return out


def _same(a, b) -> bool:
    return a is b or (_ptr(a) == _ptr(b) and a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype)


class _Planned:
    """Runs a step's backend calls under a plan: elided calls return an unwritten placeholder, fused
    groups run at their last call. Checks that each call is the one recorded."""

    def __init__(self, trace: list[Call], the_plan: dict):
        self.trace, self.plan = trace, the_plan
        self.live: dict[int, tuple] = {}  # call index -> (args, kwargs) of this run
        self.i = 0

    def __call__(self, name, orig, args, kwargs):
        i = self.i
        self.i += 1
        if i >= len(self.trace):
            raise CaptureError(f"the step made more backend calls than when it was recorded ({name} at {_caller()})")
        rec = self.trace[i]
        now = _arrays(args, kwargs)
        if rec.name != name or [tuple(a.shape) for _, a in rec.inputs] != [tuple(a.shape) for _, a in now]:
            raise CaptureError(f"the step took another path at backend call {i}: recorded {rec.signature()} at "
                               f"{rec.where}, now {name}({', '.join(str(tuple(a.shape)) for _, a in now)}) at "
                               f"{_caller()}; a captured step must make the same calls with the same shapes")
        self.live[i] = (args, kwargs)
        act = self.plan.get(i)
        if act is None:
            return orig(*args, **kwargs)
        backend = orig.__self__
        if act == "elide":
            o = rec.out
            return backend.empty(o.shape, _dtype(o))
        return self._fused(backend, act)

    def _fused(self, backend, f: Fused):
        lin_args = self.live[f.linear][0]
        x, w, b, dt = lin_args[0], lin_args[1], lin_args[2], lin_args[3]
        norm = glu = residual = None
        if f.norm is not None:
            na = self.live[f.norm][0]  # rms_norm(x, nd, weight, eps, out_dtype, style)
            nkw = self.live[f.norm][1]
            x = na[0]
            norm = (na[2], na[3], nkw.get("style", na[5] if len(na) > 5 else "torch"))
        if f.up is not None:
            ua = self.live[f.up][0]
            glu = (ua[1], ua[2], f.act)
        elif f.split:
            n = w.shape[0] // 2
            glu = (w[n:], b[n:] if b is not None else None, f.act)
            w, b = w[:n], (b[:n] if b is not None else None)
        if f.residual is not None:
            ci, pos = f.residual
            residual = self.live[ci][0][pos]
        return backend.linear_fused(x, w, b, dt, norm=norm, glu=glu, residual=residual)


def _dtype(arr):
    from engine import dtype as D
    return D.get(arr.dtype)


# ---- the captured step --------------------------------------------------------------------------------------
class Captured:
    """See the module docstring. fuse=False captures without the fusion plan."""

    def __init__(self, fn, fuse: bool = True, device=None):
        self.fn, self.fuse = fn, fuse
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
        rec = Recorder(allow_host=not self._has_graphs())
        with _Patched(b, rec):
            out = self.fn(*self.inputs)
        outs = [o.array for o in (out if isinstance(out, tuple) else (out,)) if isinstance(o, Tensor)]
        self.trace = rec.calls
        self.the_plan = plan(self.trace, outs) if self.fuse else {}
        for c in self.trace:  # the outputs may go back to the pool now; the record keeps shapes only
            c.out = _Shape(c.out) if _is_array(c.out) else None
            c.args = tuple(_Shape(a) if _is_array(a) else a for a in c.args)
            c.kwargs, c.inputs = {}, [(p, _Shape(a)) for p, a in c.inputs]
        return out

    def _has_graphs(self) -> bool:
        return type(self.backend).graph_capture is not _no_graphs()

    def _run_planned(self):
        with _Patched(self.backend, _Planned(self.trace, self.the_plan)):
            return self.fn(*self.inputs)

    def _capture(self):
        """Call 3: the step with the fusion plan, eagerly (a real step, which also compiles the fused
        kernels and leaves their blocks in the pool's cache), then, where the device has graphs, the
        same step captured (recorded, not run); later calls replay the graph."""
        out = self._run_planned()
        if not self._has_graphs():  # the CPU: the plan runs eagerly from now on
            return out
        b = self.backend
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

    def release(self) -> None:
        """Drop the graph; its memory goes back to the pool once its outputs are dropped too."""
        self.graph = None
        if self.memory is not None:
            self.memory.release()
            self.memory = None


class _Shape:
    """What the plan keeps of a recorded array once the record is analysed: shape, dtype, strides."""

    def __init__(self, a):
        self.shape, self.dtype, self.strides, self.size = tuple(a.shape), a.dtype, a.strides, a.size
        self.itemsize = a.itemsize


def _no_graphs():
    from engine.backends.fused import FusedOps
    return FusedOps.graph_capture
