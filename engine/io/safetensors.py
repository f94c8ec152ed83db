"""Read and write the safetensors format on numpy arrays, with the header validated before any use.

The format and the header parser are in engine/io/safetensors_header.py; every problem with a file
or an index raises SafetensorsError naming the file, the tensor and the byte offset.

Reading maps the file once and hands out read-only zero-copy views over that mapping, so a 13 GB
checkpoint costs no RAM until its pages are touched. Caveat of every memory map: if the file is
truncated in place while it is mapped, touching a page past the new end kills the process with
SIGBUS (Python cannot catch it). Replacing a file by rename is safe (the mapping keeps the old
one); truncating or rewriting it in place is not. Views are only handed out after checking that
the file still covers them, but an array handed out earlier can still fault. Servers that swap
files under a running process should open with `mmap=False` (copy-on-load): each tensor is then
read into memory with ordinary reads, and a file that shrank raises SafetensorsError instead.

Writing streams tensor by tensor into a temp file that is renamed into place only when everything
was written (engine/io/atomic.py), so a failed write, a full disk or a killed process never leaves
a truncated file behind, and a full disk names the file. Sharded checkpoints follow the Hugging
Face index format; an index may only name shard files in its own directory.

This module imports numpy and ml_dtypes only (engine rule: never torch).
"""
from __future__ import annotations

import difflib
import json
import math
import mmap as _mmap
import os
import struct
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from engine.io.atomic import (atomic_write_text, discard, open_temp, remove, remove_stale_temps, replace_dir,
                              temp_path)
from engine.io.safetensors_header import DTYPES, MAX_HEADER_BYTES, SafetensorsError, parse_header, validate

INDEX_NAME = "model.safetensors.index.json"
ALIASES_KEY = "taper.aliases"  # metadata key: JSON {alias name: name of the tensor actually stored}
MAX_INDEX_BYTES = MAX_HEADER_BYTES
MAX_INDEX_CONTAINERS = 10_000  # JSON objects and lists in an index (a real one holds a handful)
_NAMES = {dt: name for name, dt in DTYPES.items()}
__all__ = ["DTYPES", "MAX_HEADER_BYTES", "SafetensorsError"]  # re-exported from safetensors_header


def dtype_to_str(dtype) -> str:
    """numpy dtype (or anything np.dtype accepts, or a safetensors name) -> safetensors name, e.g. 'BF16'."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    dt = np.dtype(dtype)
    if dt.byteorder == ">":
        dt = dt.newbyteorder("<")
    try:
        return _NAMES[dt]
    except KeyError:
        raise SafetensorsError(f"dtype {dt} has no safetensors equivalent; known: {', '.join(DTYPES)}") from None


def str_to_dtype(name: str) -> np.dtype:
    """safetensors dtype name -> numpy dtype (bf16 and fp8 through ml_dtypes)."""
    try:
        return DTYPES[name]
    except KeyError:
        raise SafetensorsError(f"unknown safetensors dtype {name!r}; known: {', '.join(DTYPES)}") from None


def _close_keys(name: str, keys: Iterable[str]) -> str:
    keys = list(keys)
    near = difflib.get_close_matches(name, keys, n=5, cutoff=0.5) or keys[:5]
    return f"{name!r} not found ({len(keys)} tensors); close keys: {', '.join(near) or 'none'}"


def _read_header(path: str, fd: int, file_size: int) -> tuple[dict, dict, int]:
    """({name: (dtype, shape, (begin, end) absolute)}, metadata, data_start) of an open file."""
    if file_size < 8:
        raise SafetensorsError(f"file is {file_size} bytes, too short for the 8-byte header length", path)
    (n,) = struct.unpack("<Q", os.pread(fd, 8, 0))
    if n > MAX_HEADER_BYTES:
        raise SafetensorsError(f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit", path, offset=0)
    if 8 + n > file_size:
        raise SafetensorsError(f"header length {n} runs past the end of the file ({file_size} bytes)", path, offset=0)
    raw = os.pread(fd, n, 8)
    if len(raw) != n:
        raise SafetensorsError(f"file shrank while its header was read ({len(raw)} of {n} bytes)", path, offset=8)
    entries, metadata = parse_header(path, raw)
    del raw
    return validate(path, entries, 8 + n, file_size), metadata, 8 + n


class SafetensorsFile:
    """One validated safetensors file. With mmap=True (default) it is mapped once and tensors come out
    as read-only zero-copy numpy views; with mmap=False (copy-on-load) each tensor is read into a
    new array when asked for, so a file changed on disk later cannot crash the process."""

    def __init__(self, path, mmap: bool = True):
        self.path = str(path)
        self._mmap = self._fd = None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except IsADirectoryError:
            raise SafetensorsError("is a directory, not a .safetensors file", self.path) from None
        try:
            size = os.fstat(fd).st_size
            self._entries, self.metadata, self.data_start = _read_header(self.path, fd, size)
            self._size = size
            self._mmap = _mmap.mmap(fd, 0, access=_mmap.ACCESS_READ) if (mmap and size) else None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.copy_on_load = not mmap

    def keys(self) -> list[str]:
        """Tensor names in file (data offset) order."""
        return list(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def info(self, name: str) -> tuple[str, tuple[int, ...], tuple[int, int]]:
        """(dtype name, shape, (begin, end) absolute byte offsets in the file)."""
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"{self.path}: {_close_keys(name, self._entries)}") from None

    def _check_size(self, name: str, begin: int, end: int) -> None:
        size = os.fstat(self._fd).st_size
        if size < end:
            raise SafetensorsError(f"the file is now {size} bytes, it was {self._size} when opened: it was truncated "
                                   f"or rewritten in place; this tensor's data [{begin}, {end}) is gone (reading it "
                                   "through the memory map would kill the process with SIGBUS)", self.path, name, begin)

    def get_numpy(self, name: str) -> np.ndarray:
        """Tensor `name`: a read-only view over the file mapping (no copy), or with mmap=False a new
        writable array read from the file."""
        dtype, shape, (begin, end) = self.info(name)
        if self._fd is None:
            raise SafetensorsError("file is closed", self.path, name)
        dt = DTYPES[dtype]
        if self.copy_on_load:
            buf = bytearray(end - begin)
            got = os.preadv(self._fd, [buf], begin) if end > begin else 0
            if got != end - begin:
                raise SafetensorsError(f"read {got} of {end - begin} bytes: the file shrank to "
                                       f"{os.fstat(self._fd).st_size} bytes since it was opened ({self._size})",
                                       self.path, name, begin)
            return np.frombuffer(buf, dtype=dt).reshape(shape)
        if end == begin:  # no bytes: nothing to map
            out = np.empty(shape, dt)
            out.flags.writeable = False
            return out
        self._check_size(name, begin, end)
        return np.frombuffer(self._mmap, dtype=dt, count=(end - begin) // dt.itemsize, offset=begin).reshape(shape)

    def close(self) -> None:
        """Drop the mapping. Arrays handed out earlier stay valid: they keep the mapping alive."""
        mm, self._mmap = self._mmap, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:  # views still alive; the mapping goes when the last one does
                pass
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"SafetensorsFile({self.path!r}, {len(self)} tensors)"


def safe_open(path, mmap: bool = True) -> SafetensorsFile:
    """Open and validate one safetensors file (mmap=False: copy-on-load, see SafetensorsFile)."""
    return SafetensorsFile(path, mmap=mmap)


def load_file(path, mmap: bool = True) -> dict[str, np.ndarray]:
    """All tensors of a file as arrays (read-only over the mapping, or copies with mmap=False), in file order."""
    with safe_open(path, mmap=mmap) as f:
        return {k: f.get_numpy(k) for k in f.keys()}


def aliases(metadata: Mapping[str, str]) -> dict[str, str]:
    """The {alias: stored name} map that migration.convert records for tied tensors (empty if none)."""
    raw = metadata.get(ALIASES_KEY)
    return json.loads(raw) if raw else {}


def restore_aliases(tensors: dict, metadata: Mapping[str, str]) -> dict:
    """Add each alias recorded in `metadata` to `tensors`, pointing at the same array as its target."""
    for alias, target in aliases(metadata).items():
        if target not in tensors:
            raise KeyError(f"alias {alias!r} points at {target!r}, which is not among the tensors")
        tensors[alias] = tensors[target]
    return tensors


def _as_spec(spec) -> tuple[str, str, tuple[int, ...]]:
    name, dtype, shape = spec
    return str(name), dtype_to_str(dtype), tuple(int(d) for d in shape)


class SafetensorsWriter:
    """Stream tensors into a safetensors file: header first, then `write(name, array)` in spec order.

    specs: [(name, dtype, shape)], dtype a safetensors name ('BF16') or a numpy dtype. Data goes to a
    temp file beside `path`, renamed into place by a successful close(); on error nothing is left, and
    the temps of writers to the same path that were killed are removed when a new one starts.
    """

    def __init__(self, path, specs, metadata: Mapping[str, str] | None = None):
        self.path = str(path)
        self.specs = [_as_spec(s) for s in specs]
        names = [s[0] for s in self.specs]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise SafetensorsError(f"duplicate tensor names {dup}", self.path)
        if metadata and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise SafetensorsError(f"metadata must map str to str, got {dict(metadata)!r:.200}", self.path)
        header, pos = {}, 0
        if metadata:
            header["__metadata__"] = dict(metadata)
        for name, dtype, shape in self.specs:
            nbytes = math.prod(shape) * DTYPES[dtype].itemsize
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
            pos += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # pad so the data section starts 8-byte aligned
        self.header_bytes = 8 + len(raw)
        self.nbytes = self.header_bytes + pos
        remove_stale_temps(Path(self.path).parent, Path(self.path).name)  # what killed writers left
        self._f, self._tmp = open_temp(self.path, "wb")
        self._next = 0
        self._io(self._f.write, struct.pack("<Q", len(raw)) + raw)

    def _io(self, fn, *args):
        """One write/flush; on failure (a full disk) the partial file goes and the error names the file."""
        try:
            return fn(*args)
        except OSError as e:
            self.abort()
            raise OSError(e.errno, f"cannot write {self.path}: {e.strerror or e}; nothing was left behind") from e
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, array) -> None:
        """Append the next tensor; its name, dtype and shape must match the next spec."""
        if self._f is None:
            raise SafetensorsError("writer is closed", self.path)
        if self._next >= len(self.specs):
            raise SafetensorsError(f"all {len(self.specs)} tensors already written; got {name!r}", self.path)
        want, dtype, shape = self.specs[self._next]
        if name != want:
            raise SafetensorsError(f"expected tensor {want!r} (#{self._next}), got {name!r}", self.path)
        array = np.asarray(array)
        if dtype_to_str(array.dtype) != dtype or array.shape != shape:
            raise SafetensorsError(f"is {dtype_to_str(array.dtype)} {array.shape}, spec says {dtype} {shape}",
                                   self.path, name)
        array = np.ascontiguousarray(array, dtype=DTYPES[dtype])  # also fixes big-endian input
        self._io(self._f.write, array.reshape(-1).view(np.uint8))
        self._next += 1

    def close(self) -> None:
        """Check every tensor was written, then move the file into place."""
        if self._f is None:
            return
        if self._next != len(self.specs):
            missing = [s[0] for s in self.specs[self._next:]]
            self.abort()
            raise SafetensorsError(f"closed after {self._next} of {len(self.specs)} tensors; missing {missing[:5]}",
                                   self.path)
        self._io(self._f.flush)
        self._io(os.fsync, self._f.fileno())
        self._io(self._f.close)
        self._f = None
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Discard the partial file (even when closing it fails again, as on a full disk)."""
        f, self._f = self._f, None
        discard(f, self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def save_file(tensors: Mapping[str, np.ndarray], path, metadata: Mapping[str, str] | None = None) -> None:
    """Write a dict of arrays to one safetensors file (in dict order)."""
    arrays = {k: np.asarray(v) for k, v in tensors.items()}
    with SafetensorsWriter(path, [(k, a.dtype, a.shape) for k, a in arrays.items()], metadata) as w:
        for k, a in arrays.items():
            w.write(k, a)


# ---------------------------------------------------------------- sharded checkpoints

def is_checkpoint_file(name: str) -> bool:
    """Whether a file name in a model directory is part of a safetensors checkpoint."""
    return name.endswith(".safetensors") or name == INDEX_NAME


def check_shard_name(index_path, shard) -> str:
    """An index may only name files in its own directory: 'model-00001-of-00002.safetensors', never
    '../outside/x.safetensors', a sub-directory or an absolute path."""
    if not isinstance(shard, str) or not shard or shard in (".", "..") or Path(shard).name != shard \
            or "/" in shard or "\\" in shard or "\0" in shard:
        raise SafetensorsError(f"index names shard {shard!r}, which is not a file name in the index's directory "
                               f"{Path(index_path).parent}; refused", index_path)
    return shard


def read_index(path) -> dict:
    """The JSON object of an index file (a HF *.index.json), checked: size, UTF-8, nesting, object."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SafetensorsError("index file not found", path) from None
    except IsADirectoryError:
        raise SafetensorsError("is a directory, not an index file", path) from None
    if len(raw) > MAX_INDEX_BYTES:
        raise SafetensorsError(f"index is {len(raw)} bytes; the limit is {MAX_INDEX_BYTES}", path)
    if raw.count(b"{") + raw.count(b"[") > MAX_INDEX_CONTAINERS:
        raise SafetensorsError(f"index holds more than {MAX_INDEX_CONTAINERS} JSON objects or lists; a "
                               "checkpoint index holds a handful", path)
    try:
        index = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise SafetensorsError(f"index is not valid UTF-8 ({e.reason})", path, offset=e.start) from None
    except json.JSONDecodeError as e:
        raise SafetensorsError(f"index is not valid JSON: {e.msg}", path, offset=e.pos) from None
    except RecursionError:
        raise SafetensorsError("index JSON nests too deeply", path) from None
    if not isinstance(index, dict):
        raise SafetensorsError(f"index is a JSON {type(index).__name__}, expected an object", path)
    if not isinstance(index.get("metadata", {}), (dict, type(None))):
        raise SafetensorsError(f"index 'metadata' must be an object, got {index['metadata']!r:.100}", path)
    return index


def load_index(path) -> dict[str, str]:
    """weight_map {tensor name: shard file name} of a HF index (a directory or the .index.json itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / INDEX_NAME
    return _weight_map(read_index(path), path)


def _weight_map(index: dict, path) -> dict[str, str]:
    """The checked weight_map of an index already read (read_index) from `path`."""
    wm = index.get("weight_map")
    if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
        raise SafetensorsError("index must hold a 'weight_map' of tensor name -> shard file name", path)
    for shard in set(wm.values()):
        check_shard_name(path, shard)
    return wm


class ShardedCheckpoint:
    """Many shards behind one index, read like one SafetensorsFile; shards are opened on first use."""

    def __init__(self, index_path, mmap: bool = True):
        self.index_path = Path(index_path)
        self.directory = self.index_path.parent
        self.mmap = mmap
        index = read_index(self.index_path)  # read and parsed once
        self.weight_map = _weight_map(index, self.index_path)
        index_meta = index.get("metadata") or {}
        self.total_size = index_meta.get("total_size")
        self._index_meta = {k: v for k, v in index_meta.items() if isinstance(v, str)}
        self._shards: dict[str, SafetensorsFile] = {}
        missing = {}
        for key, shard in self.weight_map.items():
            if not (self.directory / shard).is_file():
                missing.setdefault(shard, []).append(key)
        if missing:
            lines = [f"{s} (needed by {len(k)} tensors: {', '.join(k[:3])}{', ...' if len(k) > 3 else ''})"
                     for s, k in missing.items()]
            raise SafetensorsError("missing shard files: " + "; ".join(lines), self.index_path)

    def _shard(self, name: str) -> SafetensorsFile:
        try:
            shard = self.weight_map[name]
        except KeyError:
            raise KeyError(f"{self.index_path}: {_close_keys(name, self.weight_map)}") from None
        if shard not in self._shards:
            self._shards[shard] = SafetensorsFile(self.directory / shard, mmap=self.mmap)
        f = self._shards[shard]
        if name not in f:
            raise SafetensorsError(f"index puts this tensor in {shard}, which does not hold it", self.index_path, name)
        return f
    @property
    def metadata(self) -> dict[str, str]:
        """The first shard's metadata, updated with the string entries of the index's metadata."""
        first = next(iter(self.weight_map), None)
        meta = dict(self._shard(first).metadata) if first is not None else {}
        meta.update(self._index_meta)
        return meta

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def __contains__(self, name) -> bool:
        return name in self.weight_map

    def __len__(self) -> int:
        return len(self.weight_map)

    def shard_files(self) -> list[Path]:
        return [self.directory / s for s in dict.fromkeys(self.weight_map.values())]

    def info(self, name: str):
        return self._shard(name).info(name)

    def get_numpy(self, name: str) -> np.ndarray:
        return self._shard(name).get_numpy(name)

    def close(self) -> None:
        for f in self._shards.values():
            f.close()
        self._shards.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


WEIGHT_PREFIXES = ("model", "diffusion_pytorch_model")  # transformers' and diffusers' weight file names


def checkpoint_names(prefix: str = "model", variant: str | None = None) -> tuple[str, str]:
    """(index name, single-file name) of a HF directory, with a variant as transformers and diffusers
    spell it: model.safetensors.index.fp16.json, diffusion_pytorch_model.fp16.safetensors."""
    v = f".{variant}" if variant else ""
    return f"{prefix}.safetensors.index{v}.json", f"{prefix}{v}.safetensors"


def open_checkpoint(path, mmap: bool = True, variant: str | None = None) -> SafetensorsFile | ShardedCheckpoint:
    """A .safetensors file, an index .json, or a directory holding either: transformers' model.* or
    diffusers' diffusion_pytorch_model.* names (index preferred), or else its one .safetensors file.
    variant (e.g. "fp16") picks model.fp16.safetensors / *.safetensors.index.fp16.json; without one,
    the plain names win over variants, as in transformers and diffusers. mmap=False: copy-on-load (see
    SafetensorsFile)."""
    path = Path(path)
    if path.is_dir():
        for prefix in WEIGHT_PREFIXES:
            index, single = checkpoint_names(prefix, variant)
            if (path / index).is_file():
                return ShardedCheckpoint(path / index, mmap=mmap)
            if (path / single).is_file():
                return SafetensorsFile(path / single, mmap=mmap)
        found = sorted(path.glob("*.safetensors"))
        if variant:
            names = [n for p in WEIGHT_PREFIXES for n in checkpoint_names(p, variant)]
            raise SafetensorsError(f"no {variant!r} variant: none of {', '.join(names)} (.safetensors files here: "
                                   f"{', '.join(p.name for p in found[:8]) or 'none'})", path)
        if len(found) == 1:
            return SafetensorsFile(found[0], mmap=mmap)
        raise SafetensorsError(f"no {INDEX_NAME} or model.safetensors, and {len(found)} other "
                               f".safetensors files ({', '.join(p.name for p in found[:5])})", path)
    if path.suffix == ".json":
        return ShardedCheckpoint(path, mmap=mmap)
    return SafetensorsFile(path, mmap=mmap)


def save_sharded(source, directory, max_shard_size: int, *, get: Callable[[str], np.ndarray] | None = None,
                 metadata: Mapping[str, str] | None = None, prefix: str = "model") -> dict:
    """Write `<prefix>-0000i-of-0000N.safetensors` shards of at most max_shard_size bytes plus the index.

    source: a dict {name: array}, or a list of (name, dtype, shape) specs together with `get(name)`
    returning each array on demand, so the caller never needs every tensor in RAM at once. A tensor
    larger than max_shard_size gets a shard of its own. `metadata` goes into every shard and the index.
    The checkpoint in `directory` is replaced as a whole or not at all: everything is written into a
    staging directory beside it, which then takes its place in one step (engine.io.atomic.replace_dir);
    the directory's other files (config.json, tokenizer files) are kept, earlier checkpoint files
    (shards, index, model.safetensors) go. A killed or failed write leaves the old checkpoint as it was.
    Returns the index dict.
    """
    if isinstance(source, Mapping):
        get = get or source.__getitem__
        specs = [(k, np.asarray(v).dtype, np.shape(v)) for k, v in source.items()]
    elif get is None:
        raise TypeError("save_sharded: a list of specs needs get=callable(name) -> array")
    else:
        specs = source
    if max_shard_size <= 0:
        raise ValueError(f"max_shard_size must be positive, got {max_shard_size}")
    specs = [_as_spec(s) for s in specs]
    groups, size = [[]], 0
    for spec in specs:
        nbytes = math.prod(spec[2]) * DTYPES[spec[1]].itemsize
        if groups[-1] and size + nbytes > max_shard_size:
            groups.append([])
            size = 0
        groups[-1].append(spec)
        size += nbytes
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(directory.parent, directory.name)
    staging = temp_path(directory)
    staging.mkdir()
    try:
        weight_map, total = {}, 0
        for i, group in enumerate(groups, 1):
            fname = f"{prefix}-{i:05d}-of-{len(groups):05d}.safetensors"
            with SafetensorsWriter(staging / fname, group, metadata) as w:
                for name, _, _ in group:
                    w.write(name, get(name))
                    weight_map[name] = fname
                total += w.nbytes - w.header_bytes
        index = {"metadata": {"total_size": total, **(metadata or {})}, "weight_map": weight_map}
        atomic_write_text(staging / f"{prefix}.safetensors.index.json", json.dumps(index, indent=2))
        replace_dir(staging, directory, keep=lambda name: not is_checkpoint_file(name))
    except BaseException:
        remove(staging)
        raise
    return index
