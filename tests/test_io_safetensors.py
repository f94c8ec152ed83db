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
CORRUPT = [  # (file contents, what the message must say)
    (b"\x01\x00", r"2 bytes, too short"),
    (file_bytes({"w": W}, b"\0" * 12), r"'w': data_offsets \[0, 16\] run past the data section of 12 bytes"),
    (file_bytes({"w": W}, b"\0" * 16, n=200_000_000), r"header length 200000000 exceeds"),
    (file_bytes({"w": W}, b"\0" * 16, n=4096), r"header length 4096 runs past the end of the file \(\d+ bytes\)"),
    (file_bytes(b'{"w": {"dtype": "F32",', b"\0" * 16), r"not valid UTF-8 JSON"),
    (file_bytes(b"[1, 2]"), r"header is a JSON list"),
    (file_bytes(b'{"w": {}, "w": {}}'), r"duplicate key 'w'"),
    (file_bytes({"w": W, "v": {**W, "data_offsets": [8, 24]}}, b"\0" * 24),
     r"'v' at \[8, 24\] overlaps tensor 'w' which ends at 16"),
    (file_bytes({"w": W, "v": {**W, "data_offsets": [20, 36]}}, b"\0" * 36),
     r"gap of 4 bytes .* before tensor 'v' at \[20, 36\] \(previous data ends at 16\)"),
    (file_bytes({"w": W}, b"\0" * 20), r"tensors cover 16 bytes but the data section has 20 .* last tensor 'w'"),
    (file_bytes({"w": {**W, "data_offsets": [0, 12]}}, b"\0" * 12), r"'w': data_offsets \[0, 12\] hold 12 bytes but F32 \[2, 2\] needs 16"),
    (file_bytes({"w": {**W, "dtype": "F7"}}, b"\0" * 16), r"'w': unknown dtype 'F7'"),
    (file_bytes({"w": {**W, "shape": [2, -2]}}, b"\0" * 16), r"'w': shape must be a list of ints >= 0"),
    (file_bytes({"w": {**W, "data_offsets": [16, 0]}}, b"\0" * 16), r"'w': data_offsets must be \[begin, end\]"),
    (file_bytes({"w": {"dtype": "F32", "shape": [4]}}, b"\0" * 16), r"'w': entry must have exactly"),
    (file_bytes({"__metadata__": {"a": 1}}), r"__metadata__ must map strings to strings"),
]


@pytest.mark.parametrize("contents,message", CORRUPT, ids=[m[:30] for _, m in CORRUPT])
def test_corrupt_file_raises_with_file_key_and_numbers(tmp_path, contents, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(contents)
    with pytest.raises(SafetensorsError, match=message) as e:
        safe_open(path)
    assert str(path) in str(e.value) and isinstance(e.value, ValueError)


def test_truncated_real_file(tmp_path):
    path = tmp_path / "a.safetensors"
    save_file({"a": np.zeros(4, np.float32), "b": np.zeros(8, np.float32)}, path)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(SafetensorsError, match=r"'b': data_offsets \[16, 48\] run past the data section of 43"):
        safe_open(path)


# ---------------------------------------------------------------- streaming writer

def test_writer_streams_in_spec_order_and_checks_each_tensor(tmp_path):
    path = tmp_path / "s.safetensors"
    with SafetensorsWriter(path, [("a", "BF16", (2, 3)), ("b", np.int32, (4,))], {"k": "v"}) as w:
        with pytest.raises(SafetensorsError, match="expected tensor 'a'"):
            w.write("b", np.zeros(4, np.int32))
        with pytest.raises(SafetensorsError, match=r"'a' is F32 \(2, 3\), spec says BF16 \(2, 3\)"):
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


def test_open_checkpoint_single_file_and_directory(tmp_path):
    save_file({"a": np.ones(2, np.float32)}, tmp_path / "model.safetensors")
    for p in (tmp_path, tmp_path / "model.safetensors"):
        with open_checkpoint(p) as ck:
            assert ck.get_numpy("a").tolist() == [1, 1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SafetensorsError, match="no model.safetensors.index.json or model.safetensors, and 0"):
        open_checkpoint(tmp_path / "empty")
