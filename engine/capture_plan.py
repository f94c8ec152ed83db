"""The fusion plan of engine.capture: from the backend calls one run of a step made (their
arguments and outputs, related by the memory they read and write), groups that the backend's fused
ops (engine/backends/fused.py) can run in one launch (linear groups; group_norm -> activation; rotary and
KV-cache writes). See engine/capture.py for the groups and for how a planned step is run; this module only
reads the record.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from engine.backends.fused import ACTIVATIONS, QOperand
from engine.dtype import DType

_WRITES = {"copy_": 0, "setitem": 0, "all_reduce": 0}  # in-place ops: the argument they write


# argument types a backend call takes most: answered without attribute lookups (a failed hasattr
# raises inside, which costs microseconds per argument); array types are added as they are met
_KNOWN = {int: False, float: False, bool: False, str: False, type(None): False, tuple: False, list: False,
          dict: False, np.ndarray: True, DType: False}


# linear(x, w, b, out_dtype) and qlinear(x, data, qtype, cols, b, out_dtype) read alike through these
LINEARS = ("linear", "qlinear")


def lin_weight(name: str, args):
    """The weight operand of a linear / qlinear call: the array, or a QOperand."""
    return QOperand(args[1], args[2], args[3]) if name == "qlinear" else args[1]


def lin_bias(name: str, args):
    return args[4] if name == "qlinear" else args[2]


def lin_dtype(name: str, args):
    return args[5] if name == "qlinear" else args[3]


def _is_array(a) -> bool:
    t = type(a)
    known = _KNOWN.get(t)
    if known is not None:
        return known
    found = hasattr(a, "__cuda_array_interface__") or hasattr(a, "__array_interface__")
    if found and t.__module__.split(".")[0] in ("numpy", "cupy"):  # their arrays always have it
        _KNOWN[t] = True
    return found


def _ptr(a) -> int:
    if hasattr(a, "__cuda_array_interface__"):  # cupy
        return int(a.data.ptr)
    return int(a.__array_interface__["data"][0])  # numpy (a.data would build a buffer: not for bfloat16)


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
    known = _KNOWN
    for i, a in (enumerate(args) if not kwargs else list(enumerate(args)) + list(kwargs.items())):
        k = known.get(type(a))  # _is_array inlined: this runs for every argument of every call
        if k is None:
            k = _is_array(a)
        if k:
            out.append((i, a))
        elif isinstance(a, (list, tuple)):
            for j, b in enumerate(a):
                if _is_array(b):
                    out.append(((i, j), b))
                elif isinstance(b, (list, tuple)):  # linear_fused's norm/glu tuples
                    out += [((i, j, k), c) for k, c in enumerate(b) if _is_array(c)]
    return out


def _shapes_match(args, kwargs, shapes) -> bool:
    """Whether the array arguments (as _arrays finds them) have exactly these shapes, in order: the
    check of every call of a planned step, so it builds no list for flat argument lists."""
    j, n, known = 0, len(shapes), _KNOWN
    for a in (args if not kwargs else list(args) + list(kwargs.values())):
        k = known.get(type(a))
        if k is None:
            if isinstance(a, (list, tuple)):  # nested arrays (concat's list, fused ops' tuples): the long way
                return [tuple(b.shape) for _, b in _arrays(args, kwargs)] == list(shapes)
            k = _is_array(a)
        if k:
            if j >= n or a.shape != shapes[j]:
                return False
            j += 1
        elif type(a) is tuple or type(a) is list:
            return [tuple(b.shape) for _, b in _arrays(args, kwargs)] == list(shapes)
    return j == n


@dataclass
class Call:
    index: int
    name: str
    args: tuple
    kwargs: dict
    out: object = None
    where: str = ""
    inputs: list = field(default_factory=list)  # (position, array)
    shapes: list = field(default_factory=list)  # the inputs' shapes, kept once the record is analysed

    def signature(self) -> str:
        shapes = ", ".join(f"{tuple(a.shape)}" for _, a in self.inputs)
        return f"{self.name}({shapes})"


# ---- the fusion plan ---------------------------------------------------------------------------------------

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
    group: list = field(default_factory=list)  # linears sharing this input: [(call, weight, bias)] after the first
    frozen: bool = False  # no call of the step makes or writes any of its weights, the norm's included (the
    # backend may load them before the kernel before ends)


@dataclass
class NormAct:
    """At the activation call `at`, run backend.group_norm_act with the arguments of the elided
    group_norm call `norm` (diffusers' GroupNorm -> SiLU)."""
    at: int
    norm: int
    act: str


@dataclass
class Member:
    """A linear of a group whose output the group's first call already computed (segment `seg`)."""
    first: int
    seg: int


@dataclass
class RotaryCache:
    """At the v cache write `at`, run backend.rotary_cache with the arguments of rotary(q) `q` (None:
    no q rotary joined), rotary(k) `k` and the k cache write `kw` (both elided). The q rotary's call
    returns a fresh buffer (QOut) that the fused op writes: its readers all come after `at`."""
    at: int
    q: int | None
    k: int
    kw: int


@dataclass
class QOut:
    """The q rotary of a RotaryCache group: an unwritten output buffer, filled at call `at`."""
    at: int


def _cache_slots(c: Call):
    """The slots array of a KV-cache write setitem(buf (B, H, S, D), (:, :, slots), value (B, H, n, D)) of
    one dtype (engine.nn.kv_cache._write along dim 2), else None."""
    if c.name != "setitem" or len(c.args) != 3 or c.kwargs or not _is_array(c.args[0]) or not _is_array(c.args[2]):
        return None
    buf, key, val = c.args
    if not (type(key) is tuple and len(key) == 3 and key[0] == key[1] == slice(None) and _is_array(key[2])):
        return None
    slots = key[2]
    if buf.ndim != 4 or val.ndim != 4 or slots.ndim != 1 or slots.dtype.kind != "i" or val.dtype != buf.dtype:
        return None
    if val.shape != buf.shape[:2] + (slots.shape[0], buf.shape[3]):
        return None
    return slots


ROTARY_CACHE = {"enabled": True}  # False: plans keep the four calls (A/B runs: bench/decode_fuse.py)


def _rotary_cache(calls, g, by, taken, single) -> dict:
    """rotary(q), rotary(k) -> k cache write, v cache write (the models' apply_rotary twice, then
    cache.update): {call: RotaryCache | QOut | "elide"}."""
    out = {}
    if not ROTARY_CACHE["enabled"]:
        return out
    for kw in calls:
        slots = _cache_slots(kw)
        vw = by.get(kw.index + 1)
        if slots is None or vw is None or kw.index in taken:
            continue
        vslots = _cache_slots(vw)
        val = kw.args[2]
        ki = g.producer(val)
        if vslots is None or ki is None or ki in taken or by[ki].name != "rotary" or len(by[ki].args) != 4:
            continue
        kr = by[ki]
        s = single(ki)
        if s is None or s[0] != kw.index or not _full(kr.out, val):
            continue
        if not (_same(vslots, slots) and vw.args[0].shape == kw.args[0].shape and vw.args[0].dtype == val.dtype
                and vw.args[2].shape == val.shape) or _ptr(vw.args[0]) == _ptr(kw.args[0]):
            continue
        if any(g.written_between(a, ki, vw.index) for a in (kr.args[0], kr.args[1], kr.args[2], slots)):
            continue
        qi, q = ki - 1, by.get(ki - 1)
        x = q.args[0] if q is not None and q.name == "rotary" and len(q.args) == 4 else None
        if not (x is not None and qi not in taken and _same(q.args[1], kr.args[1]) and _same(q.args[2], kr.args[2])
                and q.args[3] == kr.args[3] and x.ndim == 4 and x.shape[0] == val.shape[0]
                and x.shape[2:] == val.shape[2:] and all(j > vw.index for j, _, _ in g.only_consumers(qi))
                and not g.written_between(x, qi, vw.index)):
            qi = None
        out[vw.index] = RotaryCache(at=vw.index, q=qi, k=ki, kw=kw.index)
        out[ki] = out[kw.index] = "elide"
        if qi is not None:
            out[qi] = QOut(at=vw.index)
        taken.update(i for i in (qi, ki, kw.index, vw.index) if i is not None)
    return out


def plan(calls: list[Call], escaping=()) -> dict:
    """{call index: Fused or "elide"} for the groups described in the module docstring."""
    g = _Graph(calls, list(escaping))
    out: dict = {}
    by = {c.index: c for c in calls}
    taken: set = set()

    def single(i):  # the one call that reads i's output (None also when the step returns that output)
        cons = g.only_consumers(i)
        return cons[0] if len(cons) == 1 and cons[0][0] < len(calls) else None

    def is_linear(c):
        return c.name in LINEARS and len(c.args) >= 4 and _is_array(c.args[0]) and _is_array(c.args[1])

    def dt(c):
        return lin_dtype(c.name, c.args)

    def kind(c):  # linears fuse with their own kind: float weights, or one block format
        return c.args[2] if c.name == "qlinear" else None

    fused: dict[int, Fused] = {}  # linear index -> its group
    # GLU from two linears: act(linear_g(x)) * linear_u(x)
    for a in calls:
        if a.name != "unary" or a.args[0] not in ACTIVATIONS or a.index in taken:
            continue
        gi = g.producer(a.args[1])
        if gi is None or not is_linear(by[gi]) or gi in taken or single(gi) is None or single(gi)[0] != a.index:
            continue
        lg = by[gi]
        if not _full(lg.out, a.args[1]) or a.args[2] != dt(lg):
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
        if not (_full(lu.out, other) and _same(lu.args[0], lg.args[0]) and dt(lu) == dt(lg)
                and lu.name == lg.name and kind(lu) == kind(lg) and lin_weight(lu.name, lu.args).shape ==
                lin_weight(lg.name, lg.args).shape and other.shape == a.args[1].shape and mc.args[3] == mc.args[4] == dt(lg)):
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
        if li is None or not is_linear(by[li]) or by[li].name != "linear" or li in taken:
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
                and _full(src_out, ad.args[s[1]]) and ad.args[3] == ad.args[4] == dt(c)):
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
    # linears sharing one input (q, k and v): one launch over the stacked weights, from the first
    by_input: dict = {}
    for c in calls:
        if not is_linear(c):
            continue
        f = fused.get(c.index)
        if f is not None and (f.act is not None or f.residual is not None or f.at != c.index):
            continue  # part of a GLU or residual group
        x = c.args[0]
        key = ("norm", f.norm) if f is not None and f.norm is not None else \
            ("x", _ptr(x), tuple(x.shape), x.strides, str(x.dtype))
        by_input.setdefault(key + (str(dt(c)), lin_weight(c.name, c.args).shape[1], c.name, kind(c)), []).append(c)
    for key, members in by_input.items():
        for i in range(0, len(members) - 1, 3):
            chunk = members[i:i + 3]
            if len(chunk) < 2:
                continue
            src = by[key[1]].args[0] if key[0] == "norm" else chunk[0].args[0]
            if g.written_between(src, chunk[0].index, chunk[-1].index):
                continue
            first = chunk[0]
            f = fused.get(first.index) or Fused(at=first.index, linear=first.index)
            fused[first.index] = f
            f.group = [(c.index, lin_weight(c.name, c.args), lin_bias(c.name, c.args)) for c in chunk[1:]]
            for seg, c in enumerate(chunk[1:], 1):
                fused.pop(c.index, None)
                out[c.index] = Member(first.index, seg)
    # group_norm -> activation: one launch when the activation is the norm's only consumer
    for a in calls:
        if a.name != "unary" or a.args[0] not in ACTIVATIONS or a.index in taken or not _is_array(a.args[1]):
            continue
        ni = g.producer(a.args[1])
        if ni is None or by[ni].name != "group_norm" or ni in taken or single(ni) is None:
            continue
        gn = by[ni]
        if single(ni)[0] != a.index or not _full(gn.out, a.args[1]) or a.args[2] != gn.args[-1]:
            continue
        taken.update([ni, a.index])
        out[ni] = "elide"
        out[a.index] = NormAct(at=a.index, norm=ni, act=a.args[0])
    out.update(_rotary_cache(calls, g, by, taken, single))
    for f in {id(f): f for f in fused.values()}.values():
        ws = [lin_weight(by[i].name, by[i].args) for i in [f.linear] + ([f.up] if f.up is not None else [])]
        ws += [w for _, w, _ in f.group]
        arrays = [w.data if isinstance(w, QOperand) else w for w in ws]
        if f.norm is not None and by[f.norm].args[2] is not None:  # rms_norm(x, nd, weight, ...)'s weight
            arrays.append(by[f.norm].args[2])
        f.frozen = all(g.producer(a) is None and not g.written_between(a, -1, len(calls)) for a in arrays)
        for e in f.elided:
            if e != f.at:
                out[e] = "elide"
        out[f.at] = f
    return out


def _same(a, b) -> bool:
    return a is b or (_ptr(a) == _ptr(b) and a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype)


