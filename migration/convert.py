"""Convert PyTorch checkpoints (.pt/.pth/.bin/.ckpt, sharded or not) to safetensors, safely.

Safe by default: sources are read with torch.load(weights_only=True), so no code in the pickle runs.
A checkpoint that needs more (a pickled argparse.Namespace, a whole nn.Module) is refused with the
offending globals named; with unsafe_pickle=True it is unpickled in a separate Python process that
hands back only plain tensors, re-saved to a temp file the parent loads with weights_only=True.

The conversion streams: each source file is mmap'd (zip format) and tensors are cast and written one
at a time, so peak RAM stays near one source shard. Tensors that share a view of the same storage
(tied embeddings) are written once, the other names recorded as aliases in the metadata under
engine.io.safetensors.ALIASES_KEY; `engine.io.safetensors.restore_aliases` puts them back. The output
is then re-read and compared byte for byte with the (cast) source.
"""
from __future__ import annotations

import _compat_pickle
import json
import math
import os
import pickle
import pickletools
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.io.safetensors import (ALIASES_KEY, DTYPES, SafetensorsWriter, aliases as read_aliases, open_checkpoint,
                                   save_sharded)

SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
TORCH_INDEX = "pytorch_model.bin.index.json"
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")  # unwrapped in this order
CASTS = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
ST_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
            torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64",
            torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint64: "U64", torch.uint32: "U32",
            torch.uint16: "U16", torch.uint8: "U8", torch.bool: "BOOL"}
FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)  # quantised weights beside their scales: never cast
UNPICKLED = "taper.unpickled"  # top-level key of the file the unsafe-pickle subprocess writes


class ConvertError(Exception):
    """The source cannot be read or converted; the message names the file and the reason."""


class UnsafeCheckpointError(ConvertError):
    """weights_only loading refused the file; the message names the globals it would have imported."""


class VerificationError(ConvertError):
    """The written output does not match the source; `.report` holds the details."""

    def __init__(self, report: "ConvertReport"):
        super().__init__(f"verification failed for {report.dst} (left in place for inspection; do not use "
                         f"it):\n  " + "\n  ".join(report.problems))
        self.report = report


def parse_size(text) -> int:
    """'2GB' -> 2_000_000_000, '1.5GiB' -> 1610612736, '4096' -> 4096 (GB = 1e9 and GiB = 2**30, as HF does)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(I?)B?\s*", str(text).upper())
    if not m or (m[3] and not m[2]):
        raise ValueError(f"cannot read size {text!r}; use e.g. 2GB, 500MB, 1.5GiB or a byte count")
    n = float(m[1]) * (1024 if m[3] else 1000) ** " KMGT".index(m[2] or " ")
    if n < 1:
        raise ValueError(f"size {text!r} is less than one byte")
    return int(n)


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


@dataclass
class ConvertReport:
    """What a conversion did; str() gives a short summary."""
    src: str
    dst: str
    files: list[str] = field(default_factory=list)          # safetensors files written
    tensors: list[str] = field(default_factory=list)        # names stored (aliases excluded)
    aliases: dict[str, str] = field(default_factory=dict)   # alias -> stored name
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, what it was)
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    dtype: str | None = None
    verified: bool = False
    problems: list[str] = field(default_factory=list)

    def __str__(self):
        cast = f", cast to {self.dtype}" if self.dtype else ""
        lines = [f"{self.src} -> {self.dst}: {len(self.tensors)} tensors in {len(self.files)} file(s){cast}, "
                 f"{_fmt_bytes(self.bytes_in)} -> {_fmt_bytes(self.bytes_out)} in {self.seconds:.1f} s"]
        if self.aliases:
            lines.append("aliases (stored once): " + ", ".join(f"{a} -> {t}" for a, t in self.aliases.items()))
        if self.skipped:
            lines.append("skipped non-tensor entries: " + ", ".join(f"{k} ({d})" for k, d in self.skipped))
        lines += [f"PROBLEM: {p}" for p in self.problems]
        if not self.problems:
            lines.append("verified: every tensor bitwise equal to the source" if self.verified else "not verified")
        return "\n".join(lines)


# ---------------------------------------------------------------- reading sources

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
            weight_map = json.loads(p.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConvertError(f"{p}: not a checkpoint index with a 'weight_map' ({e})") from None
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (p.parent / s).is_file()]
        if missing:
            needed = [k for k, s in weight_map.items() if s == missing[0]]
            raise ConvertError(f"{p}: missing shard files {missing}; {missing[0]} holds {needed[:3]}"
                               f"{' ...' if len(needed) > 3 else ''}")
        return [p.parent / s for s in shards], set(weight_map)
    return [p], None


def describe(x) -> str:
    """A non-tensor entry in a few words for the skipped list: 'int 3', 'argparse.Namespace Namespace(lr=1)'."""
    t = type(x)
    name = t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    if isinstance(x, torch.Tensor):
        return f"tensor {str(x.dtype).removeprefix('torch.')} {list(x.shape)}"
    if isinstance(x, (dict, list, tuple)):
        return f"{name} of {len(x)} entries"
    text = repr(x)
    return f"{name} {text[:60]}{'...' if len(text) > 60 else ''}"


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


class _Source:
    """The source checkpoint, one file loaded at a time, flattened to {name: tensor}."""

    def __init__(self, src, unsafe_pickle: bool, tmpdir: str):
        self.files, self.index_keys = source_files(src)
        self.unsafe, self.tmpdir = unsafe_pickle, Path(tmpdir)
        self._cache: tuple[int, dict, list] | None = None

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
                root = str(Path(__file__).resolve().parents[1])
                code = (f"import sys; sys.path.insert(1, {root!r}); from migration.convert import "
                        "_unpickle_worker; _unpickle_worker(sys.argv[1], sys.argv[2])")
                done = subprocess.run([sys.executable, "-c", code, str(path), str(plain)],
                                      capture_output=True, text=True)
                if done.returncode:
                    raise ConvertError(f"{path}: unpickling in a subprocess failed:\n{done.stderr[-2000:]}")
            path, described = plain, True
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except pickle.UnpicklingError as e:
            names = _unsafe_globals(path, e)
            raise UnsafeCheckpointError(
                f"{path}: refused to unpickle: it needs {', '.join(names) or 'globals'} that weights_only "
                f"loading does not allow{_torch_reason(e)}. Pass "
                f"--unsafe-pickle (unsafe_pickle=True) only if you trust the source of this file; it is then "
                f"unpickled in a separate process.") from None
        except Exception as e:
            raise ConvertError(f"{path}: cannot load as a PyTorch checkpoint: {type(e).__name__}: {e}") from None
        if described:
            obj = obj[UNPICKLED]
        return _flatten_state(obj, path, described)


def _flatten_state(obj, path, described: bool):
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
    tensors = {}
    _walk(obj, "", tensors, skipped, say)
    while tensors and all(k.startswith("module.") for k in tensors):  # DataParallel / DDP prefix
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors, skipped


def _walk(x, name: str, tensors: dict, skipped: list, say) -> None:
    """Collect tensors under dotted names and describe everything else. (A plain function, not a
    recursive closure: that would be a reference cycle keeping a whole mmap'd shard alive until gc.)"""
    if isinstance(x, torch.Tensor):
        tensors[name] = x
    elif isinstance(x, dict) and x:
        for k, v in x.items():
            _walk(v, f"{name}.{k}" if name else str(k), tensors, skipped, say)
    elif isinstance(x, (list, tuple)) and x and all(isinstance(v, (torch.Tensor, dict, list, tuple)) for v in x):
        for j, v in enumerate(x):
            _walk(v, f"{name}.{j}", tensors, skipped, say)
    else:
        skipped.append((name, say(x)))


# ---------------------------------------------------------------- converting

def _target(t: torch.Tensor, cast: torch.dtype | None) -> torch.dtype:
    return cast if cast is not None and t.is_floating_point() and t.dtype not in FP8 else t.dtype


def _to_numpy(t: torch.Tensor, dtype: torch.dtype):
    """Contiguous numpy array with the exact bytes of `t` cast to dtype (bf16/fp8 through ml_dtypes)."""
    t = t.detach().to(dtype).contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().view(DTYPES[ST_NAMES[dtype]]).reshape(tuple(t.shape))


def _view_key(t: torch.Tensor):
    """Two names with the same key are the same tensor (same storage, offset, shape, strides, dtype)."""
    if t.numel() == 0:
        return None  # empty tensors may all report data_ptr 0
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, desc="convert", file=sys.stderr, leave=False)


def _resolve_dst(dst, shard_size) -> Path:
    dst = Path(dst)
    if shard_size:
        if dst.suffix == ".safetensors":
            raise ConvertError(f"{dst}: with a shard size the destination is a directory, not a .safetensors file")
        return dst
    if dst.is_dir() or str(dst).endswith(os.sep):
        return dst / "model.safetensors"
    if dst.suffix != ".safetensors":
        raise ConvertError(f"{dst}: destination must end in .safetensors or be a directory")
    return dst


def convert(src, dst, *, dtype=None, shard_size=None, unsafe_pickle=False, progress=True,
            verify=True) -> ConvertReport:
    """Convert the checkpoint at `src` to safetensors at `dst` (a file, or a directory of shards).

    dtype: 'float16' | 'bfloat16' | 'float32' (or the torch dtype) casts floating tensors, fp8 excepted.
    shard_size: bytes or a string like '2GB'; writes model-0000i-of-0000N.safetensors + index into dst.
    Raises ConvertError (UnsafeCheckpointError for a refused pickle) or VerificationError.
    """
    start = time.perf_counter()
    if isinstance(dtype, str):
        if dtype not in CASTS:
            raise ConvertError(f"dtype {dtype!r} not supported; choose one of {', '.join(CASTS)}")
        dtype = CASTS[dtype]
    if dtype is not None and dtype not in CASTS.values():
        raise ConvertError(f"dtype {dtype} not supported; choose one of {', '.join(CASTS)}")
    shard_size = parse_size(shard_size) if isinstance(shard_size, str) else shard_size
    out = _resolve_dst(dst, shard_size)
    report = ConvertReport(str(src), str(out), dtype=str(dtype).removeprefix("torch.") if dtype else None)

    with tempfile.TemporaryDirectory(prefix="taper-convert-") as tmpdir:
        source = _Source(src, unsafe_pickle, tmpdir)
        report.bytes_in = sum(f.stat().st_size for f in source.files)

        # Pass 1: names, dtypes and shapes of everything (headers are written first), aliases, skipped.
        plan: dict[str, tuple[int, str, tuple]] = {}  # name -> (file index, safetensors dtype, shape)
        for i in range(len(source.files)):
            tensors, skipped = source.load(i)
            report.skipped += skipped
            seen = {}
            for name, t in tensors.items():
                if name in plan or name in report.aliases:
                    raise ConvertError(f"{source.files[i]}: tensor {name!r} also appears in an earlier file")
                key = _view_key(t)
                if key is not None and key in seen:
                    report.aliases[name] = seen[key]
                    continue
                seen.setdefault(key, name)
                target = _target(t, dtype)
                if target not in ST_NAMES:
                    raise ConvertError(f"{source.files[i]}: tensor {name!r} has dtype {t.dtype}, which "
                                       f"safetensors cannot hold")
                plan[name] = (i, ST_NAMES[target], tuple(t.shape))
        if source.index_keys is not None and source.index_keys != set(plan) | set(report.aliases):
            found = set(plan) | set(report.aliases)
            raise ConvertError(f"{src}: index and shards disagree: in the index only "
                               f"{sorted(source.index_keys - found)[:5]}, in the shards only "
                               f"{sorted(found - source.index_keys)[:5]}")
        if not plan:
            raise ConvertError(f"{src}: no tensors found; skipped entries: {report.skipped[:5] or 'none'}")
        report.tensors = list(plan)

        # Pass 2: stream every tensor into the output.
        metadata = {"format": "pt"}
        if report.aliases:
            metadata[ALIASES_KEY] = json.dumps(report.aliases, sort_keys=True)
        specs = [(name, st, shape) for name, (_, st, shape) in plan.items()]
        bar = _progress(sum(DTYPES[st].itemsize * math.prod(shape) for _, st, shape in specs), progress)

        def get(name):
            t = source.load(plan[name][0])[0][name]
            array = _to_numpy(t, _target(t, dtype))
            if bar is not None:
                bar.update(array.nbytes)
            return array

        try:
            if shard_size:
                index = save_sharded(specs, out, shard_size, get=get, metadata=metadata)
                report.files = [str(out / f) for f in dict.fromkeys(index["weight_map"].values())]
            else:
                out.parent.mkdir(parents=True, exist_ok=True)
                with SafetensorsWriter(out, specs, metadata) as w:
                    for name, _, _ in specs:
                        w.write(name, get(name))
                report.files = [str(out)]
        finally:
            if bar is not None:
                bar.close()
        report.bytes_out = sum(os.path.getsize(f) for f in report.files)

        if verify:
            report.problems = _verify(source, plan, dtype, out, report)
            report.verified = not report.problems
        report.seconds = time.perf_counter() - start
        if report.problems:
            raise VerificationError(report)
    return report


def _same_bytes(a, b, chunk=1 << 26) -> bool:
    """Bitwise equality (so NaN payloads, -0.0, bf16 and fp8 all count), 64 MB at a time."""
    a, b = a.reshape(-1).view("u1"), b.reshape(-1).view("u1")
    return a.size == b.size and all(np.array_equal(a[i:i + chunk], b[i:i + chunk]) for i in range(0, a.size, chunk))


def _verify(source: _Source, plan: dict, dtype, out: Path, report: ConvertReport) -> list[str]:
    """Re-read the output and compare every tensor's bytes with the (cast) source; check the size."""
    problems = []
    with open_checkpoint(out) as ck:
        if set(ck.keys()) != set(plan):
            problems.append(f"output holds {len(ck.keys())} tensors, expected {len(plan)}; missing "
                            f"{sorted(set(plan) - set(ck.keys()))[:5]}, unexpected {sorted(set(ck.keys()) - set(plan))[:5]}")
        if read_aliases(ck.metadata) != report.aliases:
            problems.append(f"aliases in the metadata {read_aliases(ck.metadata)} != {report.aliases}")
        for i in range(len(source.files)):
            tensors = source.load(i)[0]
            for name in [n for n, (j, _, _) in plan.items() if j == i and n in ck]:
                want = _to_numpy(tensors[name], _target(tensors[name], dtype))
                got = ck.get_numpy(name)
                if ck.info(name)[:2] != (plan[name][1], want.shape):
                    problems.append(f"{name}: output is {ck.info(name)[:2]}, expected {(plan[name][1], want.shape)}")
                elif not _same_bytes(want, got):
                    problems.append(f"{name}: bytes differ from the source")
    data = sum(DTYPES[st].itemsize * math.prod(shape) for _, st, shape in plan.values())
    headers = 0
    for f in report.files:
        with open(f, "rb") as fh:
            headers += 8 + int.from_bytes(fh.read(8), "little")
    if report.bytes_out > data + headers:
        problems.append(f"output is {report.bytes_out} bytes but its {len(plan)} tensors hold {data} bytes "
                        f"(after the cast) and its headers {headers}: {report.bytes_out - data - headers} "
                        f"unexpected bytes")
    return problems
