"""Convert PyTorch checkpoints (.pt/.pth/.bin/.ckpt, sharded or not) to safetensors, safely.

Reading the source (weights_only by default, the unsafe path in a killable subprocess, hostile
structures refused) is migration/source.py. The conversion streams: each source file is mmap'd (zip
format) and tensors are cast and written one at a time, so peak RAM stays near one source shard.
Tensors that share a view of the same storage (tied embeddings) are written once, the other names
recorded as aliases in the metadata under engine.io.safetensors.ALIASES_KEY;
`engine.io.safetensors.restore_aliases` puts them back.

Nothing is lost or mixed: the output is written beside the destination (a temp file, or a staging
directory for a directory destination), re-read and compared byte for byte with the (cast) source,
and only then put in place in one step: a file by rename, a directory by an atomic exchange
(engine.io.atomic.replace_dir). A killed, failed (full disk: the file is named) or unverified
conversion leaves an earlier output as it was; the temps of killed runs are removed by the next
conversion into the same place. An existing output is only replaced with overwrite=True.

A directory destination becomes a model directory: model.safetensors, or shards plus
model.safetensors.index.json, and, when the source is a model directory (or an index in one), its
other files (config.json, generation_config.json, tokenizer files...), so that the next step
(`taper port`, engine.models.from_pretrained) finds them.
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.io.atomic import pid_alive, remove, remove_stale_temps, replace_dir, temp_path
from engine.io.safetensors import (ALIASES_KEY, DTYPES, SafetensorsWriter, aliases as read_aliases,
                                   is_checkpoint_file, open_checkpoint, save_sharded)
from migration.source import (SUFFIXES, UNSAFE_TIMEOUT_S, ConvertError, Source,  # noqa: F401 (re-exported)
                              UnsafeCheckpointError, UnsafePickleWarning, model_dir)

CASTS = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
ST_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
            torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64",
            torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint64: "U64", torch.uint32: "U32",
            torch.uint16: "U16", torch.uint8: "U8", torch.bool: "BOOL"}
FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)  # quantised weights beside their scales: never cast
WORK_PREFIX = "taper-convert-"  # + pid: the work directory in TMPDIR (unpickled copies)


class VerificationError(ConvertError):
    """The written output does not match the source; `.report` holds the details. The output was not
    put in place: it is kept for inspection at report.dst (`<destination>.unverified`)."""

    def __init__(self, report: "ConvertReport"):
        super().__init__(f"verification failed; the output was NOT put in place; it is kept for inspection at "
                         f"{report.dst} (do not use it):\n  " + "\n  ".join(report.problems))
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
    stubbed: list[str] = field(default_factory=list)        # globals read as inert stubs (no code run)
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
        if self.stubbed:
            lines.append("read without running code; these globals were not imported but stubbed (modules kept as "
                         "their state dicts): " + ", ".join(self.stubbed))
        if self.skipped:
            lines.append("skipped non-tensor entries: " + ", ".join(f"{k} ({d})" for k, d in self.skipped))
        lines += [f"PROBLEM: {p}" for p in self.problems]
        if not self.problems:
            lines.append("verified: every tensor bitwise equal to the source" if self.verified else "not verified")
        return "\n".join(lines)


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


def _resolve_dst(dst, shard_size) -> tuple[Path, bool]:
    """(destination, is a directory): a path ending in .safetensors is a file; anything else (or any
    destination with a shard size) is a model directory, created when missing."""
    dst = Path(dst)
    if dst.suffix == ".safetensors" and not str(dst).endswith(os.sep) and not dst.is_dir():
        if shard_size:
            raise ConvertError(f"{dst}: with a shard size the destination is a directory, not a .safetensors file")
        return dst, False
    if dst.exists() and not dst.is_dir():
        raise ConvertError(f"{dst}: exists and is not a directory; give a .safetensors file name or a directory")
    return dst, True


def _refuse_overwrite(out: Path, is_dir: bool, overwrite: bool) -> None:
    if overwrite or not out.exists():
        return
    held = sorted(n.name for n in out.iterdir() if is_checkpoint_file(n.name)) if is_dir else [out.name]
    if held:
        raise ConvertError(f"{out}: already holds a checkpoint ({', '.join(held[:4])}{' ...' if len(held) > 4 else ''}); "
                           "pass --overwrite (overwrite=True) to replace it as a whole")


def _side_files(src) -> list[Path]:
    """The files of the source's model directory that are not weights: config.json,
    generation_config.json, tokenizer files, ... (top level, not hidden)."""
    d = model_dir(src)
    if d is None:
        return []
    weights = SUFFIXES + (".safetensors",)
    return sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
                  and not p.name.endswith(weights) and not p.name.endswith(".index.json"))


def clean_stale(out: Path) -> list[Path]:
    """Remove what killed conversions left: temps and staging directories beside `out`, and work
    directories in TMPDIR whose process is gone."""
    removed = remove_stale_temps(out.parent) if out.parent.is_dir() else []
    for d in glob.glob(os.path.join(tempfile.gettempdir(), f"{WORK_PREFIX}*-*")):
        pid = os.path.basename(d)[len(WORK_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(Path(d))
    return removed


def convert(src, dst, *, dtype=None, shard_size=None, unsafe_pickle=False, progress=True,
            verify=True, overwrite=False, unsafe_timeout=UNSAFE_TIMEOUT_S) -> ConvertReport:
    """Convert the checkpoint at `src` to safetensors at `dst` (a .safetensors file, or a model directory).

    dtype: 'float16' | 'bfloat16' | 'float32' (or the torch dtype) casts floating tensors, fp8 excepted.
    shard_size: bytes or a string like '2GB'; writes model-0000i-of-0000N.safetensors + index into dst.
    overwrite: replace an existing output (as a whole); without it an existing output is refused.
    unsafe_timeout: seconds the unsafe-pickle subprocess may take before it is killed.
    Raises ConvertError (UnsafeCheckpointError for a refused pickle) or VerificationError, and OSError
    naming the file when the output cannot be written (a full disk).
    """
    start = time.perf_counter()
    if isinstance(dtype, str):
        if dtype not in CASTS:
            raise ConvertError(f"dtype {dtype!r} not supported; choose one of {', '.join(CASTS)}")
        dtype = CASTS[dtype]
    if dtype is not None and dtype not in CASTS.values():
        raise ConvertError(f"dtype {dtype} not supported; choose one of {', '.join(CASTS)}")
    shard_size = parse_size(shard_size) if isinstance(shard_size, str) else shard_size
    out, is_dir = _resolve_dst(dst, shard_size)
    _refuse_overwrite(out, is_dir, overwrite)
    clean_stale(out)
    report = ConvertReport(str(src), str(out), dtype=str(dtype).removeprefix("torch.") if dtype else None)

    with tempfile.TemporaryDirectory(prefix=f"{WORK_PREFIX}{os.getpid()}-") as tmpdir:
        try:
            source = Source(src, unsafe_pickle, tmpdir, unsafe_timeout)
            report.bytes_in = sum(f.stat().st_size for f in source.files)
            plan = _plan(source, dtype, report, src)
        except RecursionError:
            raise ConvertError(f"{src}: nests too deeply to read") from None
        report.tensors = list(plan)
        report.stubbed = sorted(source.stubbed)

        out.parent.mkdir(parents=True, exist_ok=True)
        staging = temp_path(out)
        kept = None
        try:
            if is_dir:
                staging.mkdir()
            try:
                written = _write(source, plan, dtype, report, staging, is_dir, shard_size, progress)
            except OSError as e:  # a full disk: name the destination, not the temp
                why = os.strerror(e.errno) if e.errno else str(e)
                raise OSError(e.errno, f"cannot write {out}: {why}; nothing was left behind"
                              + (f" and the earlier {out} is untouched" if out.exists() else "")) from e
            if is_dir:
                for f in _side_files(src):
                    shutil.copy2(f, staging / f.name)
            report.bytes_out = sum(os.path.getsize(f) for f in written)
            if verify:
                report.problems = _verify(source, plan, dtype, staging, written, report)
                report.verified = not report.problems
            if report.problems:
                kept = out.with_name(out.name + ".unverified")
                remove(kept)
                os.rename(staging, kept)
                report.dst = str(kept)
                raise VerificationError(report)
            if is_dir:
                replace_dir(staging, out, keep=lambda name: not is_checkpoint_file(name))
            else:
                os.replace(staging, out)
            report.files = [str(out / Path(f).relative_to(staging)) if is_dir else str(out) for f in written]
        finally:
            if kept is None:
                remove(staging)
        report.seconds = time.perf_counter() - start
    return report


def _plan(source: Source, dtype, report: ConvertReport, src) -> dict:
    """Pass 1: names, dtypes and shapes of everything (headers are written first), aliases, skipped."""
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
    return plan


def _write(source: Source, plan: dict, dtype, report: ConvertReport, staging: Path, is_dir: bool,
           shard_size, progress: bool) -> list[Path]:
    """Pass 2: stream every tensor into the staging output; returns the safetensors files written."""
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
            index = save_sharded(specs, staging, shard_size, get=get, metadata=metadata)
            return [staging / f for f in dict.fromkeys(index["weight_map"].values())]
        path = staging / "model.safetensors" if is_dir else staging
        with SafetensorsWriter(path, specs, metadata) as w:
            for name, _, _ in specs:
                w.write(name, get(name))
        return [path]
    finally:
        if bar is not None:
            bar.close()


def _same_bytes(a, b, chunk=1 << 26) -> bool:
    """Bitwise equality (so NaN payloads, -0.0, bf16 and fp8 all count), 64 MB at a time."""
    a, b = a.reshape(-1).view("u1"), b.reshape(-1).view("u1")
    return a.size == b.size and all(np.array_equal(a[i:i + chunk], b[i:i + chunk]) for i in range(0, a.size, chunk))


def _verify(source: Source, plan: dict, dtype, out: Path, files: list, report: ConvertReport) -> list[str]:
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
    for f in files:
        with open(f, "rb") as fh:
            headers += 8 + int.from_bytes(fh.read(8), "little")
    if report.bytes_out > data + headers:
        problems.append(f"output is {report.bytes_out} bytes but its {len(plan)} tensors hold {data} bytes "
                        f"(after the cast) and its headers {headers}: {report.bytes_out - data - headers} "
                        f"unexpected bytes")
    return problems
