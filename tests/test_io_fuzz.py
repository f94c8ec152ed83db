"""Fuzz engine.io's safetensors reader against the `safetensors` package's own reader (the oracle).

Files come from the reference writer (safetensors.torch.save), then are damaged: bytes of the header
flipped, the file cut short, the header length changed, a field of one entry replaced by another JSON
value, bytes appended. The properties, on every file:
- the engine raises SafetensorsError and nothing else (no TypeError, RecursionError, numpy errors);
- whatever the engine accepts, the reference accepts too, with the same names, dtypes, shapes,
  bytes and metadata (the engine is never more lenient);
- whatever the reference accepts and the engine refuses is one of the engine's documented stricter
  rules (engine/io/safetensors_header.py).
Bounded: a fixed number of examples, derandomised, so the test is fast and repeatable.
"""
from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

safetensors = pytest.importorskip("safetensors")
torch = pytest.importorskip("torch")
from safetensors.torch import save as reference_save  # noqa: E402

from engine.io.safetensors import DTYPES, SafetensorsError, safe_open  # noqa: E402

TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
         "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
         "I16": torch.int16, "I8": torch.int8, "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16,
         "U8": torch.uint8, "BOOL": torch.bool}
STRICTER = ("duplicate key", "unknown field", "unknown dtype", "has more than 64 entries", "is too large")
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2, 2**70) | st.floats(allow_nan=False) |
                           st.text(max_size=6), lambda c: st.lists(c, max_size=3) |
                           st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=6)


@st.composite
def tensors(draw):
    out = {}
    for i in range(draw(st.integers(0, 4))):
        dtype = draw(st.sampled_from(sorted(DTYPES)))
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        n = 1
        for d in shape:
            n *= d
        raw = draw(st.binary(min_size=n * DTYPES[dtype].itemsize, max_size=n * DTYPES[dtype].itemsize))
        t = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        if dtype == "BOOL":
            t = t & 1
        out[draw(st.text(min_size=1, max_size=5)) + f"#{i}"] = t.view(TORCH[dtype]).reshape(shape)
    return out


def header_span(blob: bytes) -> tuple[int, int]:
    n = struct.unpack("<Q", blob[:8])[0]
    return 8, 8 + n


@st.composite
def damaged(draw):
    # not metadata={}: safetensors 0.8.0's writer then writes `{},"__metadata__":{}}` for no tensors
    meta = draw(st.none() | st.dictionaries(st.text(max_size=4), st.text(max_size=4), min_size=1, max_size=2))
    blob = bytearray(reference_save(draw(tensors()), metadata=meta))
    kind = draw(st.sampled_from(["none", "flip", "truncate", "length", "field", "append"]))
    lo, hi = header_span(blob)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(lo, hi - 1))
            blob[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        blob = blob[:draw(st.integers(0, len(blob) - 1))]
    elif kind == "length":
        blob[:8] = struct.pack("<Q", max(0, hi - 8 + draw(st.integers(-16, 16))))
    elif kind == "field":
        header = json.loads(bytes(blob[lo:hi]))
        names = [k for k in header if k != "__metadata__"]
        if names:
            entry = header[draw(st.sampled_from(names))]
            entry[draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))] = draw(JSON_VALUES)
        else:
            header["__metadata__"] = draw(JSON_VALUES)
        raw = json.dumps(header).encode()
        blob = bytearray(struct.pack("<Q", len(raw)) + raw + blob[hi:])
    elif kind == "append":
        blob += draw(st.binary(min_size=1, max_size=8))
    return bytes(blob)


def read_engine(path):
    with safe_open(path) as f:
        return {k: (f.info(k)[0], tuple(f.info(k)[1]), f.get_numpy(k).tobytes()) for k in f.keys()}, f.metadata


def read_reference(path):
    names = {v: k for k, v in TORCH.items()}
    with safetensors.safe_open(path, framework="pt") as f:
        out = {}
        for k in f.keys():
            t = f.get_tensor(k)
            out[k] = (names.get(t.dtype), tuple(t.shape), t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return out, f.metadata() or {}


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(blob=damaged())
def test_engine_reader_agrees_with_the_reference_reader(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("fuzz") / "f.safetensors"
    path.write_bytes(blob)
    try:
        ref = read_reference(path)
    except Exception as e:  # noqa: BLE001 - any refusal of the reference
        ref = e
    try:
        got = read_engine(path)
    except SafetensorsError as e:
        assert e.path == str(path)
        if not isinstance(ref, Exception):  # refused what the reference reads: only by a documented rule
            assert any(s in e.reason for s in STRICTER), (e, ref)
        return
    assert not isinstance(ref, Exception), f"engine accepted what the reference refuses ({ref})"
    assert got == ref


def test_undamaged_files_read_the_same():
    """The same property without damage, on one file of every dtype."""
    blob = reference_save({k: torch.zeros(2, 3, dtype=t) for k, t in TORCH.items()}, metadata={"a": "b"})
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/all.safetensors"
        with open(path, "wb") as f:
            f.write(blob)
        assert read_engine(path) == read_reference(path)
