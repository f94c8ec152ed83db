"""VarBuilder: prefixes, shape checks, dtype casts, zero-copy, sharded checkpoints, strict accounting,
and clear errors for missing files, keys and shapes."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import engine
from engine.io import SafetensorsError, save_file, save_sharded
from engine.nn import Module, ModuleList, StateDictError
from engine.nn.linear import Linear
from engine.nn.varbuilder import VarBuilder
from helpers import DEVICE

ON_CPU = DEVICE.type == "cpu"


def arrays():
    rng = np.random.default_rng(0)
    return {"model.layers.0.proj.weight": rng.standard_normal((4, 3)).astype(np.float32),
            "model.layers.0.proj.bias": rng.standard_normal(4).astype(np.float32),
            "model.layers.1.proj.weight": rng.standard_normal((4, 3)).astype(np.float32),
            "model.layers.1.proj.bias": rng.standard_normal(4).astype(np.float32),
            "model.norm.weight": np.ones(3, np.float32)}


@pytest.fixture
def ckpt(tmp_path):
    save_file(arrays(), tmp_path / "model.safetensors")
    return tmp_path


class Block(Module):
    def __init__(self, vb, bias=True):
        super().__init__()
        self.proj = Linear(3, 4, bias, vb=vb.pp("proj"))


class Tiny(Module):
    def __init__(self, vb, n=2, bias=True):
        super().__init__()
        self.layers = ModuleList(Block(vb.pp(f"model.layers.{i}"), bias) for i in range(n))


def test_get_with_prefixes_and_values(ckpt):
    vb = VarBuilder.from_pretrained(ckpt, device=DEVICE)
    w = vb.pp("model").pp("layers.0").pp("proj").get("weight", (4, 3))
    np.testing.assert_array_equal(w.numpy(), arrays()["model.layers.0.proj.weight"])
    assert vb.pp("model.layers.1").contains("proj.weight") and not vb.contains("nope")
    assert sorted(vb.keys()) == sorted(arrays())


@pytest.mark.skipif(not ON_CPU, reason="zero-copy is a CPU property")
def test_zero_copy_on_cpu_without_cast(ckpt):
    vb = VarBuilder.from_pretrained(ckpt)
    w = vb.get("model.layers.0.proj.weight", (4, 3))
    ckpt_arr = vb._s.source.checkpoint.get_numpy("model.layers.0.proj.weight")
    assert w.data_ptr() == ckpt_arr.ctypes.data  # the mapped file bytes themselves
    assert not w.numpy().flags.writeable


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_dtype_cast_on_load(ckpt, dtype):
    vb = VarBuilder.from_pretrained(ckpt, dtype=getattr(engine, dtype), device=DEVICE)
    w = vb.get("model.layers.0.proj.weight", (4, 3))
    assert w.dtype.name == dtype and w.device == engine.device.parse(DEVICE)
    np_dt = ml_dtypes.bfloat16 if dtype == "bfloat16" else getattr(np, dtype)
    np.testing.assert_array_equal(w.numpy(), arrays()["model.layers.0.proj.weight"].astype(np_dt))


def test_shape_mismatch_names_key_and_both_shapes(ckpt):
    vb = VarBuilder.from_pretrained(ckpt)
    with pytest.raises(StateDictError, match=r"model\.layers\.0\.proj\.weight: checkpoint \(4, 3\) vs model \(3, 4\)"):
        vb.get("model.layers.0.proj.weight", (3, 4))


def test_missing_key_names_key_shape_and_close_matches(ckpt):
    vb = VarBuilder.from_pretrained(ckpt)
    with pytest.raises(StateDictError) as e:
        vb.get("model.layers.0.proj.weights", (4, 3))
    assert "model.layers.0.proj.weights (4, 3)" in str(e.value) and "model.layers.0.proj.weight" in str(e.value)


def test_collect_reports_everything_sorted_with_shapes(ckpt):
    vb = VarBuilder.from_pretrained(ckpt)
    with pytest.raises(StateDictError) as e:
        with vb.collect():
            Tiny(vb, n=3)  # layer 2 is missing; model.norm.weight is unused
            vb.get("model.layers.1.proj.weight", (2, 2))
    lines = str(e.value).splitlines()[1:]
    assert lines == ["  missing    model.layers.2.proj.bias (4,)",
                     "  missing    model.layers.2.proj.weight (4, 3)",
                     "  unexpected model.norm.weight (3,)",
                     "  shape      model.layers.1.proj.weight: checkpoint (4, 3) vs model (2, 2)"]


def test_clean_build_and_unused_accounting(ckpt):
    vb = VarBuilder.from_pretrained(ckpt)
    with vb.collect():
        m = Tiny(vb)
        vb.get("model.norm.weight", (3,))
    assert vb.unused_keys() == []
    assert sorted(m.state_dict()) == ["layers.0.proj.bias", "layers.0.proj.weight", "layers.1.proj.bias",
                                      "layers.1.proj.weight"]
    vb2 = VarBuilder.from_pretrained(ckpt)
    Tiny(vb2, bias=False)
    assert vb2.unused_keys() == ["model.layers.0.proj.bias", "model.layers.1.proj.bias", "model.norm.weight"]
    vb2.ignore(r"\.bias$")
    vb2.skip("model.norm.weight")
    vb2.check()


def test_sharded_checkpoint(tmp_path):
    save_sharded(arrays(), tmp_path, max_shard_size=60)
    assert len(list(tmp_path.glob("model-*.safetensors"))) >= 2
    vb = VarBuilder.from_pretrained(tmp_path, device=DEVICE)
    with vb.collect():
        Tiny(vb)
        vb.get("model.norm.weight", (3,))
    np.testing.assert_array_equal(vb.get("model.layers.1.proj.weight", (4, 3)).numpy(),
                                  arrays()["model.layers.1.proj.weight"])


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nothing_here"):
        VarBuilder.from_pretrained(tmp_path / "nothing_here")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"no model.safetensors .*\(found: config.json\)"):
        VarBuilder.from_pretrained(tmp_path)
    shard_dir = tmp_path / "sharded"
    save_sharded(arrays(), shard_dir, max_shard_size=60)
    victim = sorted(shard_dir.glob("model-*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(SafetensorsError, match=f"missing shard files: {victim.name}"):
        VarBuilder.from_pretrained(shard_dir)


@pytest.mark.parametrize("damage,message", [
    (lambda b: b[:-3], "run past the data section"),
    (lambda b: b[:8] + b"[" + b[9:], "the header must be a JSON object"),
    (lambda b: b"\xff" * 8 + b[8:], "exceeds the 100000000-byte limit"),
])
def test_a_damaged_file_is_a_safetensors_error_not_file_not_found(tmp_path, damage, message):
    save_file(arrays(), tmp_path / "model.safetensors")
    path = tmp_path / "model.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(SafetensorsError, match=message) as e:
        VarBuilder.from_pretrained(tmp_path)
    assert e.value.path == str(path) and not isinstance(e.value, FileNotFoundError)


def test_copy_on_load_reads_the_same_weights_into_memory(ckpt):
    vb = VarBuilder.from_pretrained(ckpt, device=DEVICE, mmap=False)
    w = vb.get("model.layers.1.proj.weight", (4, 3))
    np.testing.assert_array_equal(w.numpy(), arrays()["model.layers.1.proj.weight"])
    assert vb._s.source.checkpoint.copy_on_load


def test_from_tensors_and_random():
    vb = VarBuilder.from_tensors({"a.weight": np.ones((2, 2), np.float32)}, dtype=engine.float16, device=DEVICE)
    assert vb.pp("a").get("weight", (2, 2)).dtype is engine.float16
    r = VarBuilder.random(seed=3, device=DEVICE)
    w1 = r.get("x.weight", (64, 32)).numpy()
    assert w1.shape == (64, 32) and 0.015 < w1.std() < 0.025
    assert (r.get("norm.weight", (8,)).numpy() == 1).all() and (r.get("x.bias", (8,)).numpy() == 0).all()
    np.testing.assert_array_equal(VarBuilder.random(seed=3).get("x.weight", (64, 32)).numpy(), w1)
    r.check()
