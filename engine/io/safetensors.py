"""Read and write the safetensors format on numpy arrays, with the header validated before any use.

File layout (https://github.com/huggingface/safetensors): 8 bytes little-endian header length N,
N bytes of JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}
padded with spaces, then the data section. Offsets are relative to the data section; the tensors
must tile it exactly, without gaps or overlaps. All data is little-endian (this module assumes a
little-endian host, as numpy, torch and safetensors do in practice).

Reading maps the file once and hands out read-only zero-copy views over that mapping, so a 13 GB
checkpoint costs no RAM until its pages are touched. Writing streams tensor by tensor into a temp
file that is renamed into place only when everything was written, so a failed write never leaves a
truncated file behind. Sharded checkpoints follow the Hugging Face index format.

This module imports numpy and ml_dtypes only (engine rule: never torch).
"""
from __future__ import annotations

import difflib
import json
import math
import mmap
import os
import secrets
import struct
from pathlib import Path
from typing import Callable, Iterable, Mapping

import ml_dtypes
import numpy as np

MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces
INDEX_NAME = "model.safetensors.index.json"
ALIASES_KEY = "taper.aliases"  # metadata key: JSON {alias name: name of the tensor actually stored}

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {dt: name for name, dt in DTYPES.items()}


class SafetensorsError(ValueError):
    """A malformed safetensors file or a misuse of the writer; the message names file, key and numbers."""


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


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise SafetensorsError(f"duplicate key {k!r} in header")
        out[k] = v
    return out


def _parse_header(path: str, file_size: int) -> tuple[dict, dict, int]:
    """Validate the header; returns ({name: (dtype, shape, (begin, end) absolute)}, metadata, data_start)."""
    where = f"{path}:"
    if file_size < 8:
        raise SafetensorsError(f"{where} file is {file_size} bytes, too short for the 8-byte header length")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER_BYTES:
            raise SafetensorsError(f"{where} header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
        if 8 + n > file_size:
            raise SafetensorsError(f"{where} header length {n} runs past the end of the file ({file_size} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{where} header ({n} bytes) is not valid UTF-8 JSON: {e}") from None
    except SafetensorsError as e:
        raise SafetensorsError(f"{where} {e}") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{where} header is a JSON {type(header).__name__}, expected an object")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError(f"{where} __metadata__ must map strings to strings, got {metadata!r:.200}")

    data_start, data_size = 8 + n, file_size - 8 - n
    entries = {}
    for key, e in header.items():
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise SafetensorsError(f"{where} tensor {key!r}: entry must have exactly dtype, shape, "
                                   f"data_offsets; got {e!r:.200}")
        dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
        if dtype not in DTYPES:
            raise SafetensorsError(f"{where} tensor {key!r}: unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise SafetensorsError(f"{where} tensor {key!r}: shape must be a list of ints >= 0, got {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise SafetensorsError(f"{where} tensor {key!r}: data_offsets must be [begin, end] with "
                                   f"0 <= begin <= end, got {offsets!r}")
        begin, end = offsets
        if end > data_size:
            raise SafetensorsError(f"{where} tensor {key!r}: data_offsets [{begin}, {end}] run past the data "
                                   f"section of {data_size} bytes (file size {file_size})")
        expected = math.prod(shape) * DTYPES[dtype].itemsize
        if end - begin != expected:
            raise SafetensorsError(f"{where} tensor {key!r}: data_offsets [{begin}, {end}] hold {end - begin} "
                                   f"bytes but {dtype} {shape} needs {expected}")
        entries[key] = (dtype, tuple(shape), (begin, end))

    # The tensors must tile the data section exactly: sorted by offset, each starts where the last ended.
    ordered = sorted(entries.items(), key=lambda kv: kv[1][2])
    pos, prev = 0, None
    for key, (_, _, (begin, end)) in ordered:
        if begin < pos:
            raise SafetensorsError(f"{where} tensor {key!r} at [{begin}, {end}] overlaps tensor {prev!r} "
                                   f"which ends at {pos}")
        if begin > pos:
            raise SafetensorsError(f"{where} gap of {begin - pos} bytes in the data section before tensor "
                                   f"{key!r} at [{begin}, {end}] (previous data ends at {pos})")
        pos, prev = end, key
    if pos != data_size:
        raise SafetensorsError(f"{where} tensors cover {pos} bytes but the data section has {data_size} "
                               f"(file size {file_size}, header {n}); last tensor {prev!r}")
    absolute = {k: (d, s, (b + data_start, e + data_start)) for k, (d, s, (b, e)) in ordered}
    return absolute, metadata, data_start


class SafetensorsFile:
    """One validated safetensors file, mapped once; tensors come out as read-only zero-copy numpy views."""

    def __init__(self, path):
        self.path = str(path)
        size = os.path.getsize(self.path)
        self._entries, self.metadata, self.data_start = _parse_header(self.path, size)
        self._mmap = None
        if size:
            with open(self.path, "rb") as f:  # mmap keeps its own handle on the file
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

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

    def get_numpy(self, name: str) -> np.ndarray:
        """A read-only view of tensor `name` straight over the file mapping (no copy)."""
        dtype, shape, (begin, end) = self.info(name)
        if self._mmap is None:
            raise SafetensorsError(f"{self.path}: file is closed")
        dt = DTYPES[dtype]
        return np.frombuffer(self._mmap, dtype=dt, count=(end - begin) // dt.itemsize, offset=begin).reshape(shape)

    def close(self) -> None:
        """Drop the mapping. Arrays handed out earlier stay valid: they keep the mapping alive."""
        mm, self._mmap = self._mmap, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:  # views still alive; the mapping goes when the last one does
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"SafetensorsFile({self.path!r}, {len(self)} tensors)"


def safe_open(path) -> SafetensorsFile:
    """Open and validate one safetensors file."""
    return SafetensorsFile(path)


def load_file(path) -> dict[str, np.ndarray]:
    """All tensors of a file as read-only mmap-backed arrays, in file order."""
    with safe_open(path) as f:
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


def _open_temp(final: Path, mode: str):
    """A new temp file beside `final` (same filesystem, so os.replace is atomic), honouring the umask."""
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    return os.fdopen(fd, mode), tmp


def _as_spec(spec) -> tuple[str, str, tuple[int, ...]]:
    name, dtype, shape = spec
    return str(name), dtype_to_str(dtype), tuple(int(d) for d in shape)


class SafetensorsWriter:
    """Stream tensors into a safetensors file: header first, then `write(name, array)` in spec order.

    specs: [(name, dtype, shape)], dtype a safetensors name ('BF16') or a numpy dtype. Data goes to a
    temp file beside `path`, renamed into place by a successful close(); on error nothing is left.
    """

    def __init__(self, path, specs, metadata: Mapping[str, str] | None = None):
        self.path = str(path)
        self.specs = [_as_spec(s) for s in specs]
        names = [s[0] for s in self.specs]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise SafetensorsError(f"{self.path}: duplicate tensor names {dup}")
        if metadata and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise SafetensorsError(f"{self.path}: metadata must map str to str, got {dict(metadata)!r:.200}")
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
        self._f, self._tmp = _open_temp(Path(self.path), "wb")
        self._next = 0
        try:
            self._f.write(struct.pack("<Q", len(raw)) + raw)
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, array) -> None:
        """Append the next tensor; its name, dtype and shape must match the next spec."""
        if self._f is None:
            raise SafetensorsError(f"{self.path}: writer is closed")
        if self._next >= len(self.specs):
            raise SafetensorsError(f"{self.path}: all {len(self.specs)} tensors already written; got {name!r}")
        want, dtype, shape = self.specs[self._next]
        if name != want:
            raise SafetensorsError(f"{self.path}: expected tensor {want!r} (#{self._next}), got {name!r}")
        array = np.asarray(array)
        if dtype_to_str(array.dtype) != dtype or array.shape != shape:
            raise SafetensorsError(f"{self.path}: tensor {name!r} is {dtype_to_str(array.dtype)} "
                                   f"{array.shape}, spec says {dtype} {shape}")
        array = np.ascontiguousarray(array, dtype=DTYPES[dtype])  # also fixes big-endian input
        self._f.write(array.reshape(-1).view(np.uint8))
        self._next += 1

    def close(self) -> None:
        """Check every tensor was written, then move the file into place."""
        if self._f is None:
            return
        if self._next != len(self.specs):
            missing = [s[0] for s in self.specs[self._next:]]
            self.abort()
            raise SafetensorsError(f"{self.path}: closed after {self._next} of {len(self.specs)} tensors; "
                                   f"missing {missing[:5]}")
        self._f.close()
        self._f = None
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Discard the partial file."""
        if self._f is not None:
            self._f.close()
            self._f = None
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

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

def load_index(path) -> dict[str, str]:
    """weight_map {tensor name: shard file name} of a HF index (a directory or the .index.json itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / INDEX_NAME
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise SafetensorsError(f"{path}: index file not found") from None
    except json.JSONDecodeError as e:
        raise SafetensorsError(f"{path}: index is not valid JSON: {e}") from None
    wm = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
        raise SafetensorsError(f"{path}: index must hold a 'weight_map' of tensor name -> shard file name")
    return wm


class ShardedCheckpoint:
    """Many shards behind one index, read like one SafetensorsFile; shards are opened on first use."""

    def __init__(self, index_path):
        self.index_path = Path(index_path)
        self.directory = self.index_path.parent
        self.weight_map = load_index(self.index_path)
        index_meta = json.loads(self.index_path.read_text()).get("metadata") or {}
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
            raise SafetensorsError(f"{self.index_path}: missing shard files: " + "; ".join(lines))

    def _shard(self, name: str) -> SafetensorsFile:
        try:
            shard = self.weight_map[name]
        except KeyError:
            raise KeyError(f"{self.index_path}: {_close_keys(name, self.weight_map)}") from None
        if shard not in self._shards:
            self._shards[shard] = SafetensorsFile(self.directory / shard)
        f = self._shards[shard]
        if name not in f:
            raise SafetensorsError(f"{self.index_path}: index puts {name!r} in {shard}, which does not hold it")
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


def open_checkpoint(path) -> SafetensorsFile | ShardedCheckpoint:
    """A .safetensors file, an index .json, or a directory holding either (index preferred)."""
    path = Path(path)
    if path.is_dir():
        if (path / INDEX_NAME).is_file():
            return ShardedCheckpoint(path / INDEX_NAME)
        if (path / "model.safetensors").is_file():
            return SafetensorsFile(path / "model.safetensors")
        found = sorted(path.glob("*.safetensors"))
        if len(found) == 1:
            return SafetensorsFile(found[0])
        raise SafetensorsError(f"{path}: no {INDEX_NAME} or model.safetensors, and {len(found)} other "
                               f".safetensors files ({', '.join(p.name for p in found[:5])})")
    if path.suffix == ".json":
        return ShardedCheckpoint(path)
    return SafetensorsFile(path)


def save_sharded(source, directory, max_shard_size: int, *, get: Callable[[str], np.ndarray] | None = None,
                 metadata: Mapping[str, str] | None = None, prefix: str = "model") -> dict:
    """Write `<prefix>-0000i-of-0000N.safetensors` shards of at most max_shard_size bytes plus the index.

    source: a dict {name: array}, or a list of (name, dtype, shape) specs together with `get(name)`
    returning each array on demand, so the caller never needs every tensor in RAM at once. A tensor
    larger than max_shard_size gets a shard of its own. `metadata` goes into every shard and the index.
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
    directory.mkdir(parents=True, exist_ok=True)
    weight_map, total = {}, 0
    for i, group in enumerate(groups, 1):
        fname = f"{prefix}-{i:05d}-of-{len(groups):05d}.safetensors"
        with SafetensorsWriter(directory / fname, group, metadata) as w:
            for name, _, _ in group:
                w.write(name, get(name))
                weight_map[name] = fname
            total += w.nbytes - w.header_bytes
    index = {"metadata": {"total_size": total, **(metadata or {})}, "weight_map": weight_map}
    final = directory / f"{prefix}.safetensors.index.json"
    f, tmp = _open_temp(final, "w")
    with f:
        json.dump(index, f, indent=2)
    os.replace(tmp, final)
    return index
