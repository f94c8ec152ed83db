"""Per-layer capture for migration.verify: the output/input key scheme, CaptureFile (arrays streamed
into one safetensors file), torch forward hooks (capture_torch) and engine taps plus forward wrappers
(capture_engine). migration.verify re-exports every name here.

Output keys: "<module>" for a module's first output of its first call, "<module>@<call>" for later
calls, "<module>:<i>" for the i-th tensor of a tuple/dict output; "<module>#in" is a primary input.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class VerifyError(RuntimeError):
    """A verification could not run (bad inputs, a model that raises, an unreadable golden dir)."""


@contextlib.contextmanager
def scratch(workdir=None):
    """The directory capture files go to: `workdir` (created, kept), or a temp dir removed afterwards."""
    own = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="taper-verify-") if own else workdir)
    wd.mkdir(parents=True, exist_ok=True)
    try:
        yield wd
    finally:
        if own:
            shutil.rmtree(wd, ignore_errors=True)


# ---- keys -------------------------------------------------------------------------------------------
def out_key(base: str, call: int = 0, index: int = 0) -> str:
    return base + (f"@{call}" if call else "") + (f":{index}" if index else "")


def in_key(base: str, call: int = 0) -> str:
    return base + (f"@{call}" if call else "") + "#in"


def split_key(key: str) -> tuple[str, int, int]:
    """'a.b@2:1' -> ('a.b', 2, 1)."""
    base, index = key, 0
    if ":" in base and base.rsplit(":", 1)[1].isdigit():
        base, i = base.rsplit(":", 1)
        index = int(i)
    call = 0
    if "@" in base and base.rsplit("@", 1)[1].isdigit():
        base, c = base.rsplit("@", 1)
        call = int(c)
    return base, call, index


# ---- streaming capture ---------------------------------------------------------------------------------
class CaptureFile:
    """Append named arrays as they come (to a scratch file, nothing kept in memory), then close() writes
    one safetensors file through engine.io's SafetensorsWriter, reading the scratch file back mmap'd."""

    def __init__(self, path):
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + ".part")
        self._f = open(self.part, "wb")
        self.index: list = []  # (key, dtype, shape, offset, nbytes)
        self._keys: set = set()

    def add(self, key: str, arr) -> None:
        a = np.asarray(arr)
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        if key in self._keys:
            raise VerifyError(f"capture key {key!r} written twice")
        self._keys.add(key)
        off = self._f.tell()
        if a.size:
            self._f.write(a.reshape(-1).view(np.uint8).data)
        self.index.append((key, a.dtype, a.shape, off, a.nbytes))

    def close(self, metadata: dict | None = None) -> Path:
        from engine.io.safetensors import SafetensorsWriter
        self._f.close()
        size = os.path.getsize(self.part)
        data = np.memmap(self.part, np.uint8, "r") if size else np.zeros(0, np.uint8)
        meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (metadata or {}).items()}
        with SafetensorsWriter(self.path, [(k, dt, sh) for k, dt, sh, _, _ in self.index], meta) as w:
            for k, dt, sh, off, n in self.index:
                w.write(k, data[off:off + n].view(dt).reshape(sh))
        del data
        os.remove(self.part)
        return self.path

    def abort(self):
        if not self._f.closed:
            self._f.close()
        if self.part.exists():
            self.part.unlink()


def _flatten(out, is_tensor) -> list:
    """The tensors of an output, depth first: a tensor, tuples/lists, dicts (HF ModelOutput) in order."""
    if is_tensor(out):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flatten(v, is_tensor)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _flatten(v, is_tensor)]
    return []


def _primary(args, kwargs, is_tensor):
    for a in args:
        if is_tensor(a):
            return a
    for v in kwargs.values():
        if is_tensor(v):
            return v
    return None


@dataclass
class Capture:
    path: Path
    order: list          # output keys in execution order
    output: object = None


def _torch_np(t):
    from migration.port import to_numpy
    return to_numpy(t)


def capture_torch(model, args, kwargs, names: dict, path) -> Capture:
    """Run a torch model once with hooks on `names` ({torch qualified name: capture base name})."""
    import torch
    cap = CaptureFile(path)
    order, n_in, n_out = [], defaultdict(int), defaultdict(int)
    is_t = lambda x: isinstance(x, torch.Tensor)  # noqa: E731
    handles = []
    mods = dict(model.named_modules())

    def pre(base):
        def hook(mod, a, kw):
            c = n_in[base]
            n_in[base] += 1
            x = _primary(a, kw, is_t)
            if x is not None:
                cap.add(in_key(base, c), _torch_np(x))
        return hook

    def post(base):
        def hook(mod, a, kw, out):
            c = n_out[base]
            n_out[base] += 1
            for i, t in enumerate(_flatten(out, is_t)):
                k = out_key(base, c, i)
                cap.add(k, _torch_np(t))
                order.append(k)
        return hook

    try:
        for qn, base in names.items():
            m = mods[qn]
            handles.append(m.register_forward_pre_hook(pre(base), with_kwargs=True))
            handles.append(m.register_forward_hook(post(base), with_kwargs=True))
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                output = model(*args, **kwargs)
        finally:
            model.train(was)
    except BaseException:
        cap.abort()
        raise
    finally:
        for h in handles:
            h.remove()
    cap.close({"order": order})
    return Capture(Path(path), order, output)


class _EngineHooks:
    """Engine-side capture: taps for outputs, per-instance forward wrappers for the primary input."""

    def __init__(self, model, names: dict, on_input, on_output):
        self.model, self.names = model, names
        self.on_input, self.on_output = on_input, on_output
        self.saved: list = []

    def __enter__(self):
        from engine.tensor import Tensor
        is_t = lambda x: isinstance(x, Tensor)  # noqa: E731
        mods = dict(self.model.named_modules())
        for qn, base in self.names.items():
            m = mods[qn]
            had = "forward" in m.__dict__
            self.saved.append((m, had, m.__dict__.get("forward")))
            fwd = m.forward

            def wrapped(*a, __f=fwd, __base=base, **kw):
                self.on_input(__base, _primary(a, kw, is_t))
                return __f(*a, **kw)
            object.__setattr__(m, "forward", wrapped)
        self.model.set_taps(lambda qn, out: self.on_output(self.names[qn], _flatten(out, is_t)), list(self.names))
        return self

    def __exit__(self, *exc):
        self.model.set_taps(None)
        for m, had, f in self.saved:
            if had:
                object.__setattr__(m, "forward", f)
            else:
                del m.__dict__["forward"]


def capture_engine(model, args, kwargs, names: dict, path) -> Capture:
    """Run an engine model once with taps on `names` ({engine qualified name: capture base name})."""
    cap = CaptureFile(path)
    order, n_in, n_out = [], defaultdict(int), defaultdict(int)

    def on_input(base, x):
        c = n_in[base]
        n_in[base] += 1
        if x is not None:
            cap.add(in_key(base, c), x.numpy())

    def on_output(base, tensors):
        c = n_out[base]
        n_out[base] += 1
        for i, t in enumerate(tensors):
            k = out_key(base, c, i)
            cap.add(k, t.numpy())
            order.append(k)

    try:
        with _EngineHooks(model, names, on_input, on_output):
            output = model(*args, **kwargs)
    except BaseException:
        cap.abort()
        raise
    cap.close({"order": order})
    return Capture(Path(path), order, output)
