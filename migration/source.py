"""Reading PyTorch checkpoints for migration.convert, safely: one source file at a time, flattened to
{dotted name: tensor}.

Safe by default: sources are read with torch.load(weights_only=True), so no code in the pickle runs.
A checkpoint whose pickle names other globals (a pickled argparse.Namespace, a whole nn.Module, an
ultralytics training checkpoint) is read a second time by the same weights_only unpickler with each
of those globals allowlisted as an inert *stub* class (`Stub`): the unpickler may build objects of it
(NEWOBJ, with BUILD storing their state as data), but calling one (REDUCE: exec, eval, a factory
function) is refused, and globals of os/posix/nt/sys stay blocked by torch. Nothing is imported and
no code of the pickle runs. Stubbed torch.nn.Module objects (their state has _parameters, _buffers
and _modules) become their state dicts; other stubs are reported as skipped; `Source.stubbed` lists
every stubbed global. A pickle that calls a stub is refused with the globals named; with
unsafe_pickle=True it is unpickled in a separate Python process (in a session of its own, killed
with everything it started after `unsafe_timeout` seconds) that hands back only plain tensors,
re-saved to a temp file the parent loads with weights_only=True. Running it issues an
UnsafePickleWarning.

Hostile structures are refused, never walked: a dict or list reached twice (a 2 KB "billion laughs"
pickle of shared references would otherwise enumerate 2**40 key paths), and nothing here recurses,
so a state dict nested 3000 deep is read like any other.
"""
from __future__ import annotations

import _compat_pickle
import collections
import functools
import os
import pickle
import pickletools
import re
import reprlib
import signal
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import torch

from engine.io.safetensors import SafetensorsError, load_index

SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
TORCH_INDEX = "pytorch_model.bin.index.json"
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")  # unwrapped in this order
UNPICKLED = "taper.unpickled"  # top-level key of the file the unsafe-pickle subprocess writes
UNSAFE_TIMEOUT_S = 600.0
MAX_STATE_NAMES = 1_000_000  # a stubbed module tree naming more tensors than this is refused (shared-module bombs)
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


class ConvertError(Exception):
    """The source cannot be read or converted; the message names the file and the reason."""


class UnsafeCheckpointError(ConvertError):
    """weights_only loading refused the file; the message names the globals it would have imported."""


class UnsafePickleWarning(UserWarning):
    """unsafe_pickle=True is about to run the code in a pickle (in a separate process, not a sandbox)."""


def source_files(src) -> tuple[list[Path], set[str] | None]:
    """The checkpoint files to read, in order, and the key set a torch index promises (None without one)."""
    p = Path(src)
    if not p.exists():
        raise ConvertError(f"{p}: no such file or directory")
    if p.is_dir():
        if (p / TORCH_INDEX).is_file():
            p = p / TORCH_INDEX
        elif (p / "pytorch_model.bin").is_file():
            return [p / "pytorch_model.bin"], None
        else:
            found = sorted(x.name for x in p.iterdir() if x.suffix in SUFFIXES)
            if len(found) != 1:
                raise ConvertError(f"{p}: expected {TORCH_INDEX}, pytorch_model.bin or exactly one "
                                   f"{'/'.join(SUFFIXES)} file; found {found or 'none'}")
            return [p / found[0]], None
    if p.suffix == ".json":
        try:
            weight_map = load_index(p)  # size, nesting and shard names checked (no ../ out of the directory)
        except SafetensorsError as e:
            raise ConvertError(str(e)) from None
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (p.parent / s).is_file()]
        if missing:
            needed = [k for k, s in weight_map.items() if s == missing[0]]
            raise ConvertError(f"{p}: missing shard files {missing}; {missing[0]} holds {needed[:3]}"
                               f"{' ...' if len(needed) > 3 else ''}")
        return [p.parent / s for s in shards], set(weight_map)
    return [p], None


def model_dir(src) -> Path | None:
    """The Hugging Face model directory a source lives in (a directory, or an index's), else None."""
    p = Path(src)
    return p if p.is_dir() else p.parent if p.suffix == ".json" else None


def describe(x) -> str:
    """A non-tensor entry in a few words for the skipped list: 'int 3', 'argparse.Namespace Namespace(lr=1)'."""
    t = type(x)
    name = t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    if isinstance(x, torch.Tensor):
        return f"tensor {str(x.dtype).removeprefix('torch.')} {list(x.shape)}"
    if isinstance(x, (dict, list, tuple)):
        return f"{name} of {len(x)} entries"
    return f"{name} {_REPR.repr(x)}"


def _unpickle_worker(src: str, dst: str) -> None:
    """Runs in the child process of the unsafe path: full unpickle, then save plain tensors only."""
    def clean(x):
        if isinstance(x, torch.Tensor):
            return x.detach().as_subclass(torch.Tensor)  # keeps storage sharing (tied weights)
        if isinstance(x, torch.nn.Module):
            return clean(x.state_dict())
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return describe(x)  # a string the parent reports as skipped
    torch.save({UNPICKLED: clean(torch.load(src, map_location="cpu", weights_only=False))}, dst)


def _pickle_globals(path: Path, max_pickles: int = 4) -> set[str]:
    """Globals named by the pickles at the start of `path`, read statically with pickletools (nothing runs).

    A plain pickle is one pickle; torch's legacy format is magic, protocol, sys_info, then the object.
    """
    found = set()
    with open(path, "rb") as f:
        for _ in range(max_pickles):
            pushed, memo = [], {}  # recent stack pushes (str or None) and the memo, enough for STACK_GLOBAL
            try:
                for op, arg, _ in pickletools.genops(f):
                    if op.name == "GLOBAL":  # protocol < 3 writes Python 2 names, e.g. __builtin__ exec
                        module, name = arg.split(" ", 1)
                        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
                        found.add(f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}")
                    elif op.name == "STACK_GLOBAL" and len(pushed) > 1 and all(isinstance(x, str) for x in pushed[-2:]):
                        found.add(".".join(pushed[-2:]))
                    elif op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                        memo[len(memo) if op.name == "MEMOIZE" else arg] = pushed[-1] if pushed else None
                        continue
                    elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                        pushed.append(memo.get(arg))
                        continue
                    pushed.append(arg if isinstance(arg, str) else None)
            except Exception:  # not (or no longer) a pickle: stop scanning
                break
    return found


def _unsafe_globals(path: Path, error: Exception) -> list[str]:
    """The globals that made weights_only refuse `path`, found statically; torch's own message as fallback."""
    try:
        from torch import _weights_only_unpickler as wo  # private, hence guarded
        allowed = set(wo._get_allowed_globals()) | set(wo._get_user_allowed_globals())
    except (ImportError, AttributeError):
        allowed = None
    names: set[str] = set()
    try:
        if zipfile.is_zipfile(path):
            names = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        elif allowed is not None:
            names = _pickle_globals(path) - allowed
    except Exception:  # a failed scan must not hide the refusal itself
        pass
    return sorted(names) or sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(error))))


def _torch_reason(error: Exception) -> str:
    """The line of torch's weights_only message that says what it refused, if there is one."""
    lines = [ln.strip() for ln in str(error).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
    return f" (torch: {lines[0][:200]})" if lines else ""


def unpickle_in_subprocess(path: Path, plain: Path, timeout: float) -> None:
    """The unsafe path: run the pickle's code in a child process (a session of its own, so that it and
    anything it starts is killed after `timeout` seconds) that writes plain tensors to `plain`."""
    warnings.warn(f"{path}: --unsafe-pickle: running the code in this pickle in a separate process (not a "
                  f"sandbox; it can do anything you can), with a {timeout:g} s limit", UnsafePickleWarning,
                  stacklevel=3)
    root = str(Path(__file__).resolve().parents[1])
    code = (f"import sys; sys.path.insert(1, {root!r}); from migration.source import _unpickle_worker; "
            "_unpickle_worker(sys.argv[1], sys.argv[2])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(plain)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise ConvertError(f"{path}: unpickling in a subprocess did not finish in {timeout:g} s; it was killed "
                           "(raise the limit with --unsafe-timeout if the file is merely large)") from None
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    if proc.returncode:
        raise ConvertError(f"{path}: unpickling in a subprocess failed (exit code {proc.returncode}):\n{err[-2000:]}")


class Source:
    """The source checkpoint, one file loaded at a time, flattened to {name: tensor}."""

    def __init__(self, src, unsafe_pickle: bool, tmpdir: str, unsafe_timeout: float = UNSAFE_TIMEOUT_S):
        self.files, self.index_keys = source_files(src)
        self.unsafe, self.tmpdir, self.unsafe_timeout = unsafe_pickle, Path(tmpdir), unsafe_timeout
        self._cache: tuple[int, dict, list] | None = None
        self.stubbed: set[str] = set()  # globals read as inert stubs (no code run)

    def load(self, i: int) -> tuple[dict[str, torch.Tensor], list[tuple[str, str]]]:
        """(tensors, skipped) of file i; the last file loaded stays cached."""
        if self._cache is None or self._cache[0] != i:
            self._cache = None  # let the previous file go before the next one loads
            self._cache = (i, *self._read(self.files[i], i))
        return self._cache[1], self._cache[2]

    def _read(self, path: Path, i: int):
        described = False
        if self.unsafe:
            plain = self.tmpdir / f"{i}.pt"
            if not plain.exists():
                unpickle_in_subprocess(path, plain, self.unsafe_timeout)
            path, described = plain, True
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except pickle.UnpicklingError as e:
            names = _unsafe_globals(path, e)
            obj = self._read_stubbed(path, names, e)
        except Exception as e:
            raise ConvertError(f"{path}: cannot load as a PyTorch checkpoint: {type(e).__name__}: {e}") from None
        if described:
            obj = obj[UNPICKLED]
        return flatten_state(obj, path, described)

    def _read_stubbed(self, path: Path, names: list[str], error: Exception):
        """The weights_only unpickler again, with `names` allowlisted as inert stubs; modules -> state dicts."""
        stubs = [(stub_class(n), n) for n in names]
        try:
            if not stubs or not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5: no stubs, refuse
                raise error
            with torch.serialization.safe_globals(stubs):
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except pickle.UnpicklingError as e:
            called = sorted(set(re.findall(r"calls the stubbed global ([\w.]+)", str(e))))
            how = (f"; read with those as inert stubs, it calls {', '.join(called)}, which would run code" if called
                   else "")
            raise UnsafeCheckpointError(
                f"{path}: refused to unpickle: it needs {', '.join(names) or 'globals'} that weights_only loading "
                f"does not allow{_torch_reason(error)}{how}. Pass --unsafe-pickle (unsafe_pickle=True) only if you "
                f"trust the source of this file; it is then unpickled in a separate process.") from None
        except Exception as e:
            raise ConvertError(f"{path}: cannot load as a PyTorch checkpoint: {type(e).__name__}: {e}") from None
        self.stubbed |= set(names)
        return unstub(obj, path)


class Stub:
    """An inert stand-in for an object of a global the safe reader does not import: the unpickler builds
    it (NEWOBJ) and stores its state (BUILD) as data; its class refuses to be called (see _StubMeta).
    Subclasses carry the global's module and qualified name, so reports name the original class."""

    def __new__(cls, *args):
        obj = object.__new__(cls)
        obj.__dict__["_stub_args"] = args
        return obj

    def __setstate__(self, state):
        self.__dict__["_stub_state"] = state

    @property
    def stub_state(self):
        return self.__dict__.get("_stub_state")

    def __repr__(self):
        return "(stub: not imported, no code run)"


class _StubMeta(type):
    def __call__(cls, *args, **kwargs):  # REDUCE on a stubbed global: a call would run the original's code
        raise pickle.UnpicklingError(f"the pickle calls the stubbed global {cls.__module__}.{cls.__qualname__}")


@functools.lru_cache(maxsize=None)
def stub_class(name: str) -> type:
    """The stub class standing for global `name` ('package.module.Class')."""
    module, _, qual = name.rpartition(".")
    return _StubMeta(qual, (Stub,), {"__module__": module, "__qualname__": qual})


def _is_module(x) -> bool:
    st = x.stub_state if isinstance(x, Stub) else None
    return isinstance(st, dict) and all(isinstance(st.get(k), dict) for k in ("_parameters", "_buffers", "_modules"))


def module_state(root: Stub, path) -> "collections.OrderedDict":
    """The state dict torch's Module.state_dict() would give for a stubbed module: parameters and
    persistent buffers (not None), then children's under 'child.' prefixes. Iterative; a shared
    submodule (ultralytics' one SiLU in every Conv) is read once; a cycle, a child that is not a module,
    or more than MAX_STATE_NAMES names is refused."""
    memo, busy = {}, set()
    stack = [(root, False)]
    while stack:
        m, done = stack.pop()
        if id(m) in memo:
            continue
        st = m.stub_state
        children = [(n, c) for n, c in st["_modules"].items() if c is not None]
        if not done:
            busy.add(id(m))
            stack.append((m, True))
            for n, c in children:
                if not _is_module(c):
                    raise ConvertError(f"{path}: module {type(m).__qualname__} has a child {n!r} that is not a module "
                                       f"({describe(c)})")
                if id(c) in busy:
                    raise ConvertError(f"{path}: the pickled modules form a cycle through {n!r}; refused")
                stack.append((c, False))
            continue
        out = collections.OrderedDict()
        skip = st.get("_non_persistent_buffers_set") or set()
        for kind in ("_parameters", "_buffers"):
            for n, t in st[kind].items():
                if t is not None and not (kind == "_buffers" and n in skip):
                    out[n] = t
        for n, c in children:
            out.update((f"{n}.{k}", t) for k, t in memo[id(c)].items())
        if len(out) > MAX_STATE_NAMES:
            raise ConvertError(f"{path}: the pickled modules name more than {MAX_STATE_NAMES} tensors (shared "
                               "submodules repeated?); refused rather than expanded")
        memo[id(m)] = out
        busy.discard(id(m))
    return memo[id(root)]


def unstub(obj, path):
    """Replace every stubbed module reachable through dicts and lists by its state dict (in place;
    iterative, each container once). Other stubs stay, and flatten_state reports them as skipped."""
    if _is_module(obj):
        return module_state(obj, path)
    seen, stack = set(), [obj]
    while stack:
        x = stack.pop()
        if id(x) in seen or not isinstance(x, (dict, list)):
            continue
        seen.add(id(x))
        for k, v in (x.items() if isinstance(x, dict) else enumerate(x)):
            if _is_module(v):
                x[k] = module_state(v, path)
            else:
                stack.append(v)
    return obj


def flatten_state(obj, path, described: bool = False):
    """Unwrap {"state_dict"|"model"|"module": ...}, flatten nested dicts to dotted keys, strip "module."."""
    say = (lambda x: x if isinstance(x, str) else describe(x)) if described else describe
    skipped = []
    while isinstance(obj, dict):
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None or all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        skipped += [(str(k), say(v)) for k, v in obj.items() if k != key]
        obj = obj[key]
    if not isinstance(obj, dict):
        raise ConvertError(f"{path}: holds a {describe(obj)}, not a state dict of named tensors")
    tensors = walk(obj, path, skipped, say)
    while tensors and all(k.startswith("module.") for k in tensors):  # DataParallel / DDP prefix
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors, skipped


def walk(root: dict, path, skipped: list, say) -> dict:
    """Tensors under dotted names, everything else described into `skipped`. Iterative (any depth),
    and each dict or list is entered once: one reached a second time is refused, because a state dict
    is a tree and a pickle of shared references (a "billion laughs") would otherwise be walked 2**40
    times. (A plain function, not a recursive closure: that would be a reference cycle keeping a whole
    mmap'd shard alive until gc.)"""
    tensors, entered = {}, {}
    stack = [("", root)]
    while stack:
        name, x = stack.pop()
        if isinstance(x, torch.Tensor):
            tensors[name] = x
            continue
        if isinstance(x, dict):
            container = bool(x)
        else:
            container = isinstance(x, (list, tuple)) and bool(x) and all(
                isinstance(v, (torch.Tensor, dict, list, tuple)) for v in x)
        if not container:
            skipped.append((name, say(x)))
            continue
        if id(x) in entered:
            raise ConvertError(f"{path}: the state dict reaches the same {type(x).__name__} as {entered[id(x)] or '<root>'!r} "
                               f"and as {name!r}; a state dict is a tree of tensors, and this pickle of shared "
                               "references (a 'billion laughs'?) is refused rather than walked")
        entered[id(x)] = name
        items = x.items() if isinstance(x, dict) else enumerate(x)
        children = [(f"{name}.{k}" if name else str(k), v) for k, v in items]
        stack.extend(reversed(children))  # keep the source's order
    return tensors
