"""engine.io.safetensors against the `safetensors` package as the oracle, plus every header defect."""
import json
import mmap
import os
import struct

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from engine.io.safetensors import (ALIASES_KEY, DTYPES, SafetensorsError, SafetensorsWriter, load_file, load_index,
                                   open_checkpoint, restore_aliases, safe_open, save_file, save_sharded)

TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
         "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
         "I16": torch.int16, "I8": torch.int8, "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16,
         "U8": torch.uint8, "BOOL": torch.bool}


def sample(dtype: str, shape=(3, 5), seed=0) -> np.ndarray:
    """Random bytes reinterpreted as `dtype` (bools kept to 0/1), so every bit pattern class shows up."""
    dt = DTYPES[dtype]
    raw = np.random.default_rng(seed).integers(0, 256, size=int(np.prod(shape)) * dt.itemsize, dtype=np.uint8)
    if dtype == "BOOL":
        raw &= 1
    return raw.view(dt).reshape(shape)


def raw_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_engine_file_read_bitwise_by_safetensors_torch(tmp_path, dtype):
    arrays = {"x": sample(dtype), "scalar": sample(dtype, ()), "empty": sample(dtype, (0, 4))}
    save_file(arrays, tmp_path / "a.safetensors", metadata={"format": "pt"})
    back = safetensors.torch.load_file(tmp_path / "a.safetensors")
    assert {k: (raw_bytes(t), tuple(t.shape), t.dtype) for k, t in back.items()} == \
           {k: (a.tobytes(), a.shape, TORCH[dtype]) for k, a in arrays.items()}


@pytest.mark.parametrize("dtype", ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"])
def test_both_ways_with_safetensors_numpy(tmp_path, dtype):
    save_file({"x": sample(dtype)}, tmp_path / "a.safetensors")
    back = safetensors.numpy.load_file(tmp_path / "a.safetensors")["x"]
    assert back.tobytes() == sample(dtype).tobytes() and back.shape == (3, 5)
    safetensors.numpy.save_file({"y": sample(dtype, seed=2)}, tmp_path / "b.safetensors")
    assert load_file(tmp_path / "b.safetensors")["y"].tobytes() == sample(dtype, seed=2).tobytes()


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_safetensors_file_read_bitwise_by_engine(tmp_path, dtype):
    tensors = {"b.w": torch.frombuffer(bytearray(sample(dtype, seed=1).tobytes()), dtype=TORCH[dtype]).reshape(3, 5),
               "a.scalar": torch.zeros((), dtype=TORCH[dtype])}
    safetensors.torch.save_file(tensors, tmp_path / "t.safetensors", metadata={"format": "pt"})
    with safe_open(tmp_path / "t.safetensors") as f:
        assert f.metadata == {"format": "pt"}
        for k, t in tensors.items():
            a = f.get_numpy(k)
            assert (f.info(k)[0], a.dtype, a.shape, a.tobytes()) == (dtype, DTYPES[dtype], tuple(t.shape), raw_bytes(t))


def test_get_numpy_is_a_read_only_view_of_one_mmap(tmp_path):
    save_file({"w": sample("F32", (64, 64))}, tmp_path / "a.safetensors")
    with safe_open(tmp_path / "a.safetensors") as f:
        a, b = f.get_numpy("w"), f.get_numpy("w")
        base = a
        while isinstance(base, np.ndarray):
            base = base.base
        assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)
        assert np.shares_memory(a, b) and not a.flags.writeable
        assert f.info("w")[2] == (f.data_start, f.data_start + 64 * 64 * 4)
    assert a.tobytes() == sample("F32", (64, 64)).tobytes()  # views outlive close()


def test_keys_in_file_order_metadata_and_close_key_suggestions(tmp_path):
    save_file({"z": np.zeros(2, np.float32), "a": np.ones(1, np.int8), "m": np.ones(3, np.bool_)},
              tmp_path / "a.safetensors")
    with safe_open(tmp_path / "a.safetensors") as f:
        assert f.keys() == ["z", "a", "m"] and f.metadata == {}
        with pytest.raises(KeyError, match="'zz' not found.*close keys: z"):
            f.get_numpy("zz")
    assert list(load_file(tmp_path / "a.safetensors")) == ["z", "a", "m"]


def test_header_is_8_byte_aligned_and_space_padded(tmp_path):
    save_file({"abc": np.zeros(1, np.float32)}, tmp_path / "a.safetensors")
    data = (tmp_path / "a.safetensors").read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    assert n % 8 == 0 and data[8:8 + n].rstrip(b" ").endswith(b"}") and len(data) == 8 + n + 4


def test_big_endian_input_is_written_little_endian(tmp_path):
    save_file({"x": np.arange(4, dtype=">i4")}, tmp_path / "a.safetensors")
    assert safetensors.numpy.load_file(tmp_path / "a.safetensors")["x"].tolist() == [0, 1, 2, 3]


# ---------------------------------------------------------------- corrupt headers

def file_bytes(header, data=b"", n=None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if n is None else n) + raw + data


W = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
WJ = json.dumps(W)


def h(text: str) -> bytes:
    return text.encode()


def data(contents: bytes, begin: int) -> int:
    """The file offset of byte `begin` of the data section."""
    return 8 + struct.unpack("<Q", contents[:8])[0] + begin


F = file_bytes
DEEP = h('{"w": ' + "[" * 3000 + "]" * 3000 + "}")
CORRUPT = [  # (file contents, tensor named, byte offset named (or the bytes found there), message)
    (b"\x01\x00", None, None, r"2 bytes, too short"),
    (F({"w": W}, b"\0" * 12), "w", ("data", 0), r"data_offsets \[0, 16\] run past the data section of 12 bytes"),
    (F({"w": W}, b"\0" * 16, n=200_000_000), None, 0, r"header length 200000000 exceeds"),
    (F({"w": W}, b"\0" * 16, n=4096), None, 0, r"header length 4096 runs past the end of the file \(\d+ bytes\)"),
    (F(b'{"w": {"dtype": "F32",', b"\0" * 16), "w", ("data", 0), r"expected a key of the entry \(a JSON string\), found the end"),
    (F(b"[1, 2]"), None, b"[1, 2]", r"the header must be a JSON object, found '\[1, 2\]'"),
    (F(h('{"w": ' + WJ + ', "w": ' + WJ + "}"), b"\0" * 16), None, b'"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}',
     r"duplicate key 'w' in the header"),
    (F({"w": W, "v": {**W, "data_offsets": [8, 24]}}, b"\0" * 24), "v", ("data", 8), r"data at \[8, 24\] overlaps tensor 'w', which ends at 16"),
    (F({"w": W, "v": {**W, "data_offsets": [20, 36]}}, b"\0" * 36), "v", ("data", 16),
     r"gap of 4 bytes .* at \[20, 36\] \(previous data ends at 16\)"),
    (F({"w": W}, b"\0" * 20), None, ("data", 16), r"tensors cover 16 bytes but the data section has 20 .* last tensor 'w'"),
    (F({"w": {**W, "data_offsets": [0, 12]}}, b"\0" * 12), "w", ("data", 0), r"data_offsets \[0, 12\] hold 12 bytes but F32 \[2, 2\] needs 16"),
    (F({"w": {**W, "dtype": "F7"}}, b"\0" * 16), "w", b'{"dtype": "F7"', r"unknown dtype 'F7'"),
    (F({"w": {**W, "shape": [2, -2]}}, b"\0" * 16), "w", b"-2]", r"shape entry must be a non-negative integer, found '-2'"),
    (F({"w": {**W, "data_offsets": [16, 0]}}, b"\0" * 16), "w", b'{"dtype"', r"data_offsets must be \[begin, end\]"),
    (F({"w": {"dtype": "F32", "shape": [4]}}, b"\0" * 16), "w", b"}\0", r"entry lacks data_offsets"),
    (F({"w": {**W, "x": 1}}, b"\0" * 16), "w", b'"x"', r"unknown field 'x'"),
    (F({"__metadata__": {"a": 1}}), None, b"1}}", r"__metadata__\['a'\] \(strings only\)"),
    # issue 11: each of these gave TypeError, RecursionError, a ValueError without the file, or passed
    (F({"w": {**W, "dtype": ["F32"]}}, b"\0" * 16), "w", b'["F32"]', r"expected dtype \(a JSON string\), found '\[\"F32\"\]"),
    (F({"w": {**W, "dtype": {"a": 1}}}, b"\0" * 16), "w", b'{"a": 1}', r"expected dtype \(a JSON string\)"),
    (F(DEEP), "w", b"[[[", r"expected the entry \('\{'\), found '\[\[\["),
    (F(h('{"w": {"dtype": "F32", "shape": [' + "9" * 5000 + '], "data_offsets": [0, 0]}}')), "w", b"999",
     r"shape entry 9{30}\.\.\. \(5000 digits\) is too large"),
    (F({"w": {**W, "shape": [0, 2**70], "data_offsets": [0, 0]}}), "w", b"1180", r"shape entry 1180591620717411303424 \(22 digits\) is too large"),
    (F({"w": {**W, "shape": [0, 2**63], "data_offsets": [0, 0]}}), "w", b"9223", r"shape entry 9223372036854775808 \(19 digits\) is too large"),
    (F({"w": {**W, "shape": [1] * 65, "data_offsets": [0, 4]}}, b"\0" * 4), "w", b' 1], "data', r"shape has more than 64 entries"),
    (F({"__metadata__": False, "w": W}, b"\0" * 16), None, b"false", r"expected __metadata__ \('\{'\), found 'false"),
    (F({"w": {**W, "data_offsets": [0, 16.0]}}, b"\0" * 16), "w", b"16.0", r"data_offsets entry must be a non-negative integer, found '16.0'"),
    (F(h('{"\\ud800": ' + WJ + "}"), b"\0" * 16), None, b'"\\ud800"', r"unpaired UTF-16 surrogate"),
    (F(b'{"w": ' + WJ.encode() + b"} x", b"\0" * 16), None, b"x\0", r"unexpected 'x' after the header object"),
    (F(b'{"\xff": ' + WJ.encode() + b"}", b"\0" * 16), None, b"\xff", r"header is not valid UTF-8"),
]


@pytest.mark.parametrize("contents,tensor,offset,message", CORRUPT, ids=[m[:30] for *_, m in CORRUPT])
def test_corrupt_file_raises_naming_file_tensor_and_offset(tmp_path, contents, tensor, offset, message):
    if isinstance(offset, bytes):
        offset = contents.index(offset)
    elif isinstance(offset, tuple):
        offset = data(contents, offset[1])
    path = tmp_path / "bad.safetensors"
    path.write_bytes(contents)
    with pytest.raises(SafetensorsError, match=message) as e:
        safe_open(path)
    assert (e.value.path, e.value.tensor, e.value.offset) == (str(path), tensor, offset), str(e.value)
    assert str(e.value).startswith(f"{path}, " if tensor or offset is not None else f"{path}: ")
    assert isinstance(e.value, ValueError)


def test_header_parser_accepts_what_the_format_allows(tmp_path):
    """Whitespace around the object, trailing padding, null metadata, an empty file, unicode names."""
    for header in [b'  {"w": ' + WJ.encode() + b'}\n  ', b'{"__metadata__": null, "w": ' + WJ.encode() + b"}",
                   b'{"\\u00e9": ' + WJ.encode() + b"}"]:
        (tmp_path / "ok.safetensors").write_bytes(file_bytes(header, np.arange(4, dtype=np.float32).tobytes()))
        with safe_open(tmp_path / "ok.safetensors") as f:
            assert f.get_numpy(f.keys()[0]).tolist() == [[0, 1], [2, 3]] and f.metadata == {}
    (tmp_path / "empty.safetensors").write_bytes(file_bytes(b"{}"))
    assert load_file(tmp_path / "empty.safetensors") == {}


def test_a_hostile_header_costs_no_more_memory_than_its_size(tmp_path):
    """30 MB of `[{},{},...]` once cost 753 MB before it was refused; now it is refused at its first byte."""
    import tracemalloc
    header = b"[" + b"{}," * 10_000_000 + b"{}]"
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(file_bytes(header))
    tracemalloc.start()
    try:
        with pytest.raises(SafetensorsError, match="must be a JSON object") as e:
            safe_open(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert e.value.offset == 8 and peak < 2.5 * len(header), peak


def test_truncated_real_file(tmp_path):
    path = tmp_path / "a.safetensors"
    save_file({"a": np.zeros(4, np.float32), "b": np.zeros(8, np.float32)}, path)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(SafetensorsError, match=r"data_offsets \[16, 48\] run past the data section of 43") as e:
        safe_open(path)
    assert e.value.tensor == "b"


def test_a_file_truncated_while_open_raises_instead_of_sigbus(tmp_path):
    """mmap: views are checked against the file's current size; copy-on-load reads and checks."""
    path = tmp_path / "a.safetensors"
    save_file({"a": np.arange(1024, dtype=np.float32), "b": np.arange(1024, dtype=np.float32)}, path)
    for mmap_mode in (True, False):
        with safe_open(path, mmap=mmap_mode) as f:
            begin = f.info("b")[2][0]
            kept = f.get_numpy("a").copy()
            os.truncate(path, begin + 100)
            with pytest.raises(SafetensorsError, match="file") as e:
                f.get_numpy("b")
            assert (e.value.tensor, e.value.offset) == ("b", begin)
            assert kept[-1] == 1023
        save_file({"a": np.arange(1024, dtype=np.float32), "b": np.arange(1024, dtype=np.float32)}, path)


def test_copy_on_load_gives_writable_copies_that_outlive_the_file(tmp_path):
    path = tmp_path / "a.safetensors"
    save_file({"a": sample("BF16", (4, 4))}, path)
    arrays = load_file(path, mmap=False)
    os.truncate(path, 0)  # a server swapping files: the copies do not care
    assert arrays["a"].flags.writeable and arrays["a"].tobytes() == sample("BF16", (4, 4)).tobytes()


# ---------------------------------------------------------------- streaming writer

def test_writer_streams_in_spec_order_and_checks_each_tensor(tmp_path):
    path = tmp_path / "s.safetensors"
    with SafetensorsWriter(path, [("a", "BF16", (2, 3)), ("b", np.int32, (4,))], {"k": "v"}) as w:
        with pytest.raises(SafetensorsError, match="expected tensor 'a'"):
            w.write("b", np.zeros(4, np.int32))
        with pytest.raises(SafetensorsError, match=r"tensor 'a': is F32 \(2, 3\), spec says BF16 \(2, 3\)"):
            w.write("a", np.zeros((2, 3), np.float32))
        w.write("a", np.ones((3, 2), ml_dtypes.bfloat16).T)  # non-contiguous: made contiguous
        assert not path.exists()  # nothing in place until close
        w.write("b", np.arange(4, dtype=np.int32))
    out = safetensors.torch.load_file(path)
    assert out["a"].dtype == torch.bfloat16 and out["a"].shape == (2, 3) and out["b"].tolist() == [0, 1, 2, 3]


def test_writer_closed_early_or_failing_leaves_no_file(tmp_path):
    w = SafetensorsWriter(tmp_path / "a.safetensors", [("a", "F32", (1,)), ("b", "F32", (1,))])
    w.write("a", np.zeros(1, np.float32))
    with pytest.raises(SafetensorsError, match=r"after 1 of 2 tensors; missing \['b'\]"):
        w.close()
    with pytest.raises(RuntimeError):
        with SafetensorsWriter(tmp_path / "b.safetensors", [("a", "F32", (1,))]):
            raise RuntimeError("source failed")
    assert os.listdir(tmp_path) == []


def test_aliases_recorded_in_metadata_are_restored(tmp_path):
    save_file({"emb": np.arange(4, dtype=np.float32)}, tmp_path / "a.safetensors",
              metadata={ALIASES_KEY: json.dumps({"lm_head": "emb"})})
    with safe_open(tmp_path / "a.safetensors") as f:
        t = restore_aliases({k: f.get_numpy(k) for k in f.keys()}, f.metadata)
    assert t["lm_head"] is t["emb"]


# ---------------------------------------------------------------- sharded checkpoints

def test_save_sharded_round_trip_and_hf_index_format(tmp_path):
    arrays = {f"layer.{i}.w": sample(dt, (8, 8), seed=i) for i, dt in enumerate(["F32", "BF16", "F16", "I8", "F32"])}
    index = save_sharded(arrays, tmp_path, max_shard_size=300, metadata={"format": "pt"})
    shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert shards == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in arrays.values())
    assert json.loads((tmp_path / "model.safetensors.index.json").read_text()) == index
    assert load_index(tmp_path) == index["weight_map"] == load_index(tmp_path / "model.safetensors.index.json")
    with open_checkpoint(tmp_path) as ck:
        assert ck.keys() == list(arrays) and ck.metadata["format"] == "pt"
        assert all(ck.get_numpy(k).tobytes() == a.tobytes() and ck.info(k)[1] == a.shape for k, a in arrays.items())
    oracle = {k: v for s in shards for k, v in safetensors.torch.load_file(tmp_path / s).items()}
    assert {k: raw_bytes(v) for k, v in oracle.items()} == {k: a.tobytes() for k, a in arrays.items()}


def test_save_sharded_streams_from_specs_and_a_callable(tmp_path):
    calls = []

    def get(name):
        calls.append(name)
        return np.full((100,), len(calls), np.float32)
    save_sharded([(f"t{i}", "F32", (100,)) for i in range(3)], tmp_path, 10, get=get)  # each tensor > max: own shard
    assert calls == ["t0", "t1", "t2"] and len(list(tmp_path.glob("model-*-of-00003.safetensors"))) == 3
    with open_checkpoint(tmp_path / "model.safetensors.index.json") as ck:
        assert [ck.get_numpy(k)[0] for k in ck.keys()] == [1, 2, 3]


def test_reads_sharded_checkpoint_written_by_huggingface_hub(tmp_path):
    from huggingface_hub import save_torch_state_dict
    sd = {f"w{i}": torch.randn(16, 16).to(torch.bfloat16) for i in range(4)}
    save_torch_state_dict(sd, tmp_path, max_shard_size=1100)
    with open_checkpoint(tmp_path) as ck:
        assert len(ck.shard_files()) > 1 and sorted(ck.keys()) == sorted(sd)
        assert all(ck.get_numpy(k).tobytes() == raw_bytes(t) for k, t in sd.items())


def test_missing_shard_names_the_shard_and_its_keys(tmp_path):
    save_sharded({"a": np.zeros(10, np.float32), "b": np.zeros(10, np.float32)}, tmp_path, 40)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(SafetensorsError, match=r"missing shard files: model-00002-of-00002.safetensors "
                                               r"\(needed by 1 tensors: b\)"):
        open_checkpoint(tmp_path)


BAD_INDEX = [  # (index file contents, message); each gave AttributeError, UnicodeDecodeError or followed the path
    (b'{"metadata": [1], "weight_map": {"a": "model.safetensors"}}', r"index 'metadata' must be an object"),
    (b'{"weight_map": {"a": "model.safetensors"}, "x": "\xff"}', r"index is not valid UTF-8"),
    (b'{"weight_map": {"a": "../outside/x.safetensors"}}', r"names shard '../outside/x.safetensors', which is not a file name"),
    (b'{"weight_map": {"a": "/etc/x.safetensors"}}', r"names shard '/etc/x.safetensors'"),
    (b'{"weight_map": {"a": ".."}}', r"names shard '..'"),
    (b'{"weight_map": ' + b"[" * 20000 + b"]" * 20000 + b"}", r"more than 10000 JSON objects or lists"),
    (b'{"weight_map": ' + b"[" * 5000 + b"]" * 5000 + b"}", r"index must hold a 'weight_map'|nests too deeply"),
    (b'{"weight_map": {"a": 3}}', r"index must hold a 'weight_map' of tensor name -> shard file name"),
    (b'[]', r"index is a JSON list, expected an object"),
]


@pytest.mark.parametrize("contents,message", BAD_INDEX, ids=[m[:30] for _, m in BAD_INDEX])
def test_bad_index_files_name_the_index(tmp_path, contents, message):
    (tmp_path / "outside").mkdir()
    save_file({"a": np.zeros(2, np.float32)}, tmp_path / "outside" / "x.safetensors")
    (tmp_path / "m").mkdir()
    save_file({"a": np.zeros(2, np.float32)}, tmp_path / "m" / "model.safetensors")
    index = tmp_path / "m" / "model.safetensors.index.json"
    index.write_bytes(contents)
    with pytest.raises(SafetensorsError, match=message) as e:
        open_checkpoint(tmp_path / "m")
    assert e.value.path == index


def test_a_sharded_checkpoint_reads_its_index_once(tmp_path, monkeypatch):
    import engine.io.safetensors as st
    save_sharded({"a": np.zeros(10, np.float32), "b": np.ones(10, np.float32)}, tmp_path, 40)
    reads = []
    real = st.read_index
    monkeypatch.setattr(st, "read_index", lambda path: reads.append(path) or real(path))
    with open_checkpoint(tmp_path) as ck:
        assert sorted(ck.keys()) == ["a", "b"] and ck.get_numpy("b")[0] == 1
    assert len(reads) == 1


def test_a_sharded_write_replaces_the_checkpoint_as_a_whole(tmp_path, monkeypatch):
    """Killed (here: failing) half-way through the second write, the first checkpoint stays whole;
    the directory's other files are kept, and a finished write leaves no old shard behind."""
    old = {f"t{i}": np.full(10, i, np.float32) for i in range(6)}
    save_sharded(old, tmp_path / "ck", 40)
    (tmp_path / "ck" / "config.json").write_text("{}")
    calls = []

    def get(name):
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        calls.append(name)
        return np.full(10, 100, np.float32)
    with pytest.raises(OSError, match="No space left"):
        save_sharded([(k, "F32", (10,)) for k in old], tmp_path / "ck", 40, get=get)
    with open_checkpoint(tmp_path / "ck") as ck:
        assert {k: ck.get_numpy(k)[0] for k in ck.keys()} == {k: a[0] for k, a in old.items()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no staging left
    save_sharded({"only": np.zeros(3, np.float32)}, tmp_path / "ck", 1000)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model-00001-of-00001.safetensors",
                                                                   "model.safetensors.index.json"]


def test_open_checkpoint_single_file_and_directory(tmp_path):
    save_file({"a": np.ones(2, np.float32)}, tmp_path / "model.safetensors")
    for p in (tmp_path, tmp_path / "model.safetensors"):
        with open_checkpoint(p) as ck:
            assert ck.get_numpy("a").tolist() == [1, 1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SafetensorsError, match="no model.safetensors.index.json or model.safetensors, and 0"):
        open_checkpoint(tmp_path / "empty")


def test_load_to_device_copy_on_load_and_a_truncated_file(tmp_path, monkeypatch):
    import engine.io.device_load as dl
    arrays = {"a": sample("F32", (4, 5)), "b": sample("BF16", (3,), seed=1)}
    save_sharded(arrays, tmp_path, max_shard_size=40)
    for mmap_mode in (True, False):
        got = dl.load_to_device(tmp_path, "cpu", mmap=mmap_mode)
        assert {k: t.numpy().tobytes() for k, t in got.items()} == {k: a.tobytes() for k, a in arrays.items()}
    shard = tmp_path / "model-00002-of-00002.safetensors"
    with safe_open(shard) as f:
        begin = f.info("b")[2][0]
    check = dl._check_covers

    def shrink_first(path, items):  # the file shrinks between the header read and the load
        os.truncate(path, begin + 1) if path == str(shard) else None
        check(path, items)
    monkeypatch.setattr(dl, "_check_covers", shrink_first)
    with pytest.raises(SafetensorsError, match="is now .* bytes") as e:
        dl.load_to_device(tmp_path, "cpu")
    assert (e.value.path, e.value.tensor, e.value.offset) == (str(shard), "b", begin)


def test_a_new_writer_removes_the_temps_of_killed_writers(tmp_path):
    dead = 2**22 + 4321  # above the default pid_max: no such process
    stale = tmp_path / f".a.safetensors.{dead}.0badc0de.tmp"
    stale.write_bytes(b"\0" * 4096)
    alive = tmp_path / f".a.safetensors.{os.getpid()}.00c0ffee.tmp"  # this process: not stale
    alive.write_bytes(b"")
    save_file({"x": np.ones(2, np.float32)}, tmp_path / "a.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.safetensors", alive.name])
