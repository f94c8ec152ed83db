"""The safetensors header, read by a parser that knows its schema, and validated before any use.

File layout (https://github.com/huggingface/safetensors): 8 bytes little-endian header length N,
N bytes of JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}
or null} (trailing spaces allowed), then the data section. Offsets are relative to the data section;
the tensors must tile it exactly, without gaps or overlaps.

The header is parsed by the small schema-driven parser below rather than json.loads: a hostile
header can then cost no more memory than its valid entries (a 30 MB header of `[{},{},...]` is
refused at its first byte instead of building millions of dicts), cannot nest (so no RecursionError),
and every value has the type it must have before it is used (no TypeError on a list dtype, no
ValueError from a 5000-digit integer).

Every problem raises SafetensorsError, with the file, the tensor (when one is concerned) and the
byte offset in the file. Where the reference reader (the `safetensors` package) accepts more, this
one is stricter, on purpose: a duplicate name or an unknown field in an entry, a dtype the engine
does not know, more than 64 dimensions or a dimension of 2**63 or more (numpy's limits) are refused.
"""
from __future__ import annotations

import json.decoder
import math
import re

import ml_dtypes
import numpy as np

MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces
MAX_DIMS = 64  # numpy's limit
MAX_DIM = 2**63 - 1  # numpy's intp
MAX_U64 = 2**64 - 1

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype(np.bool_),
}


class SafetensorsError(ValueError):
    """A malformed or changed safetensors file or index, or a misuse of the writer.

    `path`, `tensor` and `offset` (a byte offset in the file) are set where known, and the message
    names them: "<path>, tensor 'w', at byte 57: unknown dtype 'F7'; known: ..."."""

    def __init__(self, message: str, path=None, tensor: str | None = None, offset: int | None = None):
        self.path, self.tensor, self.offset, self.reason = path, tensor, offset, message
        where = [str(path)] if path is not None else []
        if tensor is not None:
            where.append(f"tensor {tensor!r}")
        if offset is not None:
            where.append(f"at byte {offset}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"(-?)(\d+)(\.\d*)?([eE][-+]?\d+)?")
_ENTRY_FIELDS = ("dtype", "shape", "data_offsets")


class _Parser:
    """A cursor over the header text; every failure raises SafetensorsError with the byte offset."""

    def __init__(self, path, text: str):
        self.path, self.text, self.pos = path, text, 0
        self.tensor, self.key_pos = None, 0

    def fail(self, message, pos=None):
        pos = self.pos if pos is None else pos
        offset = 8 + len(self.text[:pos].encode("utf-8", "surrogatepass"))
        raise SafetensorsError(message, self.path, self.tensor, offset)

    def ws(self):
        self.pos = _WS.match(self.text, self.pos).end()

    def peek(self) -> str:
        self.ws()
        return self.text[self.pos:self.pos + 1]

    def expect(self, ch: str, what: str):
        if self.peek() != ch:
            self.fail(f"expected {what} ({ch!r}), found {self.found()}")
        self.pos += 1

    def found(self) -> str:
        got = self.text[self.pos:self.pos + 20]
        return repr(got) if got else "the end of the header"

    def string(self, what: str) -> str:
        if self.peek() != '"':
            self.fail(f"expected {what} (a JSON string), found {self.found()}")
        start = self.pos
        try:
            s, self.pos = json.decoder.scanstring(self.text, self.pos + 1, True)
        except json.JSONDecodeError as e:
            self.fail(f"bad JSON string: {e.msg}", e.pos)
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            self.fail(f"{what} holds an unpaired UTF-16 surrogate escape", start)
        return s

    def uint(self, what: str, limit: int) -> int:
        self.ws()
        m = _NUMBER.match(self.text, self.pos)
        if not m:
            self.fail(f"{what} must be a non-negative integer, found {self.found()}")
        sign, digits, frac, exp = m.groups()
        if sign or frac is not None or exp is not None or (len(digits) > 1 and digits[0] == "0"):
            self.fail(f"{what} must be a non-negative integer, found {m.group(0)[:30]!r}")
        if len(digits) > len(str(limit)) or int(digits) > limit:  # no int() of 5000 digits
            self.fail(f"{what} {digits[:30]}{'...' if len(digits) > 30 else ''} ({len(digits)} digits) is too large "
                      f"(limit {limit})")
        value = int(digits)
        self.pos = m.end()
        return value

    def uint_list(self, what: str, limit: int, max_len: int) -> list:
        self.expect("[", f"{what} (a list)")
        out = []
        if self.peek() == "]":
            self.pos += 1
            return out
        while True:
            if len(out) == max_len:
                self.fail(f"{what} has more than {max_len} entries")
            out.append(self.uint(f"{what} entry", limit))
            if self.peek() == "]":
                self.pos += 1
                return out
            self.expect(",", f"',' or ']' in {what}")

    def members(self, what: str, value):
        """Parse an object, calling value(key) for each member; duplicate keys are refused."""
        self.expect("{", what)
        seen = set()
        if self.peek() == "}":
            self.pos += 1
            return
        while True:
            self.ws()
            key_pos = self.key_pos = self.pos
            key = self.string(f"a key of {what}")
            if key in seen:
                self.fail(f"duplicate key {key!r} in {what}", key_pos)
            seen.add(key)
            self.expect(":", "':'")
            value(key)
            if self.peek() == "}":
                self.pos += 1
                return
            self.expect(",", f"',' or '}}' in {what}")


def parse_header(path, raw: bytes) -> tuple[dict, dict]:
    """({name: (dtype, shape, (begin, end) relative), header byte offset}, metadata) of the header
    bytes `raw`; entries are in header order. SafetensorsError on any deviation from the schema."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SafetensorsError(f"header is not valid UTF-8 ({e.reason})", path, offset=8 + e.start) from None
    p = _Parser(path, text)
    entries, where, metadata = {}, {}, {}
    mark = [0, 0]  # (character, byte) position last converted: entries come in order, so O(header)
    ascii_only = text.isascii()

    def byte_offset(pos: int) -> int:
        if not ascii_only:
            mark[1] += len(text[mark[0]:pos].encode("utf-8"))
            mark[0] = pos
            return 8 + mark[1]
        return 8 + pos

    def entry(key):
        if key == "__metadata__":
            p.ws()
            if text.startswith("null", p.pos):
                p.pos += 4
                return
            p.members("__metadata__", lambda k: metadata.__setitem__(k, p.string(f"the value of __metadata__[{k!r}] (strings only)")))
            return
        p.ws()
        p.tensor, where[key] = key, byte_offset(p.pos)
        fields = {}

        def field(name):
            if name == "dtype":
                fields[name] = p.string("dtype")
            elif name == "shape":
                fields[name] = p.uint_list("shape", MAX_DIM, MAX_DIMS)
            elif name == "data_offsets":
                fields[name] = p.uint_list("data_offsets", MAX_U64, 2)
            else:
                p.fail(f"unknown field {name!r}; an entry has exactly {', '.join(_ENTRY_FIELDS)}", p.key_pos)
        p.members("the entry", field)
        missing = [f for f in _ENTRY_FIELDS if f not in fields]
        if missing:
            p.fail(f"entry lacks {', '.join(missing)}; an entry has exactly {', '.join(_ENTRY_FIELDS)}")
        entries[key] = (fields["dtype"], tuple(fields["shape"]), tuple(fields["data_offsets"]))
        p.tensor = None

    if p.peek() != "{":
        p.fail(f"the header must be a JSON object, found {text[p.pos:p.pos + 20]!r}")
    p.members("the header", entry)
    p.ws()
    if p.pos != len(text):
        p.fail(f"unexpected {text[p.pos:p.pos + 20]!r} after the header object")
    return {k: (*v, where[k]) for k, v in entries.items()}, metadata


def validate(path, entries: dict, data_start: int, file_size: int) -> dict:
    """Check dtypes, sizes and that the tensors tile the data section exactly; returns
    {name: (dtype, shape, (begin, end) absolute)} in data-offset order."""
    data_size = file_size - data_start
    for key, (dtype, shape, offsets, at) in entries.items():
        if dtype not in DTYPES:
            raise SafetensorsError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}", path, key, at)
        if len(offsets) != 2 or offsets[0] > offsets[1]:
            raise SafetensorsError(f"data_offsets must be [begin, end] with begin <= end, got {list(offsets)}",
                                   path, key, at)
        begin, end = offsets
        if end > data_size:
            raise SafetensorsError(f"data_offsets [{begin}, {end}] run past the data section of {data_size} bytes "
                                   f"(file size {file_size})", path, key, data_start + begin)
        expected = math.prod(shape) * DTYPES[dtype].itemsize
        if end - begin != expected:
            raise SafetensorsError(f"data_offsets [{begin}, {end}] hold {end - begin} bytes but {dtype} "
                                   f"{list(shape)} needs {expected}", path, key, data_start + begin)
    ordered = sorted(entries.items(), key=lambda kv: kv[1][2])
    pos, prev = 0, None
    for key, (_, _, (begin, end), _) in ordered:
        if begin < pos:
            raise SafetensorsError(f"data at [{begin}, {end}] overlaps tensor {prev!r}, which ends at {pos}",
                                   path, key, data_start + begin)
        if begin > pos:
            raise SafetensorsError(f"gap of {begin - pos} bytes in the data section before this tensor's data at "
                                   f"[{begin}, {end}] (previous data ends at {pos})", path, key, data_start + pos)
        pos, prev = end, key
    if pos != data_size:
        raise SafetensorsError(f"tensors cover {pos} bytes but the data section has {data_size} (file size "
                               f"{file_size}, header {data_start - 8}); last tensor {prev!r}", path, None,
                               data_start + pos)
    return {k: (d, s, (b + data_start, e + data_start)) for k, (d, s, (b, e), _) in ordered}
