"""migration.convert and `taper convert` on real tiny transformers checkpoints, bitwise."""
import argparse
import datetime
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import safetensors.torch
import torch
from huggingface_hub import split_torch_state_dict_into_shards
from transformers import LlamaConfig, LlamaForCausalLM

import migration.convert
from engine.io.safetensors import SafetensorsWriter, aliases, open_checkpoint, restore_aliases
from migration.convert import ConvertError, UnsafeCheckpointError, UnsafePickleWarning, convert, parse_size
from taper.cli import main

TIED = "lm_head.weight"
EMBED = "model.embed_tokens.weight"


def raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def save_bin(state_dict, directory, max_shard_size=None):
    """What transformers 4.x save_pretrained(safe_serialization=False) wrote: pytorch_model*.bin (+ index)."""
    directory.mkdir(exist_ok=True)
    split = split_torch_state_dict_into_shards(state_dict, filename_pattern="pytorch_model{suffix}.bin",
                                               max_shard_size=max_shard_size or "50GB")
    for fname, keys in split.filename_to_tensors.items():
        torch.save({k: state_dict[k] for k in keys}, directory / fname)
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return directory


def read_back(path) -> dict[str, torch.Tensor]:
    """The converted checkpoint through the engine reader, aliases restored, as torch tensors."""
    with open_checkpoint(path) as ck:
        arrays = restore_aliases({k: ck.get_numpy(k) for k in ck.keys()}, ck.metadata)
    return {k: torch.from_numpy(a.reshape(-1).view(np.uint8).copy()) for k, a in arrays.items()}


def assert_bitwise(out, expected: dict[str, torch.Tensor]):
    got = read_back(out)
    assert sorted(got) == sorted(expected)
    assert all(got[k].numpy().tobytes() == raw(t) for k, t in expected.items())


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny tied-embedding Llama, its state dict, and a directory holding config.json + pytorch_model.bin."""
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    directory = tmp_path_factory.mktemp("llama")
    model.config.save_pretrained(directory)
    save_bin(model.state_dict(), directory)
    return model, model.state_dict(), directory


def test_llama_bin_round_trips_bitwise_and_loads_in_transformers(llama, tmp_path):
    model, sd, src = llama
    out = tmp_path / "out"
    out.mkdir()
    report = convert(src, out, progress=False)
    assert report.aliases == {TIED: EMBED} and report.verified and report.skipped == []
    assert len(report.tensors) == len(sd) - 1 and report.bytes_out < report.bytes_in
    assert_bitwise(out / "model.safetensors", sd)
    assert safetensors.torch.load_file(out / "model.safetensors").keys() == set(sd) - {TIED}
    shutil.copy(src / "config.json", out)
    again = LlamaForCausalLM.from_pretrained(out).eval()
    ids = torch.arange(12).reshape(2, 6)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_sharded_source_to_sharded_output(llama, tmp_path):
    _, sd, _ = llama
    src = save_bin(sd, tmp_path / "src", max_shard_size=100_000)
    assert len(list(src.glob("pytorch_model-*.bin"))) == 4
    report = convert(src / "pytorch_model.bin.index.json", tmp_path / "out", shard_size="120kB", progress=False)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(report.files) == len(set(index["weight_map"].values())) > 1
    assert json.loads(index["metadata"]["taper.aliases"]) == {TIED: EMBED}
    assert_bitwise(tmp_path / "out", sd)


def test_nested_wrappers_module_prefix_and_skipped_entries(tmp_path):
    sd = {"module.encoder.w": torch.randn(3, 4), "module.encoder.b": torch.arange(3)}
    torch.save({"epoch": 7, "optimizer": {"lr": 0.1}, "model": {"state_dict": sd, "arch": "toy"}}, tmp_path / "c.ckpt")
    report = convert(tmp_path / "c.ckpt", tmp_path / "o.safetensors", progress=False)
    assert report.tensors == ["encoder.w", "encoder.b"]
    assert report.skipped == [("epoch", "int 7"), ("optimizer", "dict of 1 entries"), ("arch", "str 'toy'")]
    assert_bitwise(tmp_path / "o.safetensors", {k[len("module."):]: v for k, v in sd.items()})
    assert "skipped non-tensor entries: epoch (int 7)" in str(report)


def test_bf16_fp8_and_int_sources_kept_exactly(tmp_path):
    sd = {"w": torch.randn(8, 8).bfloat16(), "q": torch.randn(4, 4).to(torch.float8_e4m3fn),
          "ids": torch.arange(5), "mask": torch.tensor([True, False]), "nan": torch.tensor([float("nan"), -0.0])}
    torch.save(sd, tmp_path / "m.pt")
    convert(tmp_path / "m.pt", tmp_path / "m.safetensors", progress=False)
    assert_bitwise(tmp_path / "m.safetensors", sd)
    assert safetensors.torch.load_file(tmp_path / "m.safetensors")["w"].dtype == torch.bfloat16


def test_dtype_cast_touches_only_floating_tensors(tmp_path):
    sd = {"w": torch.randn(8, 8), "ids": torch.arange(5), "q": torch.ones(2).to(torch.float8_e5m2)}
    torch.save(sd, tmp_path / "m.pt")
    report = convert(tmp_path / "m.pt", tmp_path / "m.safetensors", dtype="float16", progress=False)
    assert report.verified and report.dtype == "float16"
    assert_bitwise(tmp_path / "m.safetensors", {**sd, "w": sd["w"].half()})
    with open_checkpoint(tmp_path / "m.safetensors") as ck:
        assert [ck.info(k)[0] for k in ck.keys()] == ["F16", "I64", "F8_E5M2"]


def test_non_contiguous_and_partial_views_are_written_compactly(tmp_path):
    big = torch.randn(100, 6)
    sd = {"t": big.T, "row": big[3], "same_storage_other_view": big[:2]}
    torch.save(sd, tmp_path / "v.pt")
    report = convert(tmp_path / "v.pt", tmp_path / "v.safetensors", progress=False)
    assert report.aliases == {} and report.bytes_out < report.bytes_in  # torch.save kept the whole storage once
    assert_bitwise(tmp_path / "v.safetensors", sd)
    assert safetensors.torch.load_file(tmp_path / "v.safetensors")["t"].shape == (6, 100)


class Shell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Exec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def zip_save(obj, path):
    torch.save(obj, path)


def legacy_save(obj, path):
    torch.save(obj, path, _use_new_zipfile_serialization=False)


def plain_pickle(obj, path):
    path.write_bytes(pickle.dumps(obj))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("payload,global_name", [(Shell, "posix.system"), (Exec, "builtins.exec")])
@pytest.mark.parametrize("save", [zip_save, legacy_save, plain_pickle])
def test_malicious_pickle_is_refused_without_running(tmp_path, payload, global_name, save):
    marker = tmp_path / "pwned"
    save({"w": torch.ones(2), "x": payload(marker)}, tmp_path / "evil.bin")
    with pytest.raises(UnsafeCheckpointError, match=rf"evil.bin: refused to unpickle: it needs .*{global_name}.*"
                                                    r"--unsafe-pickle"):
        convert(tmp_path / "evil.bin", tmp_path / "o.safetensors", progress=False)
    assert not marker.exists() and not (tmp_path / "o.safetensors").exists()


def test_unsafe_pickle_of_trusted_checkpoint_runs_in_a_subprocess(llama, tmp_path):
    _, sd, _ = llama
    # a date pickles as a call of datetime.date: a stub refuses to be called, so the safe reader refuses
    torch.save({"model": sd, "when": datetime.date(2024, 1, 2), "step": 3}, tmp_path / "train.pt")
    with pytest.raises(UnsafeCheckpointError, match="it needs datetime.date .*it calls datetime.date, which would run"):
        convert(tmp_path / "train.pt", tmp_path / "o.safetensors", progress=False)
    with pytest.warns(UnsafePickleWarning, match="train.pt: --unsafe-pickle: running the code in this pickle"):
        report = convert(tmp_path / "train.pt", tmp_path / "o.safetensors", unsafe_pickle=True, progress=False)
    assert report.skipped == [("when", "datetime.date datetime.date(2024, 1, 2)"), ("step", "int 3")]
    assert report.aliases == {TIED: EMBED}  # storage sharing survives the trip through the subprocess
    assert_bitwise(tmp_path / "o.safetensors", sd)


def test_unknown_classes_are_read_as_stubs_without_running_code(llama, tmp_path):
    _, sd, _ = llama
    torch.save({"model": sd, "args": argparse.Namespace(lr=0.1), "step": 3}, tmp_path / "train.pt")
    report = convert(tmp_path / "train.pt", tmp_path / "o.safetensors", progress=False)
    assert report.stubbed == ["argparse.Namespace"]
    assert report.skipped == [("args", "argparse.Namespace (stub: not imported, no code run)"), ("step", "int 3")]
    assert "these globals were not imported but stubbed" in str(report) and report.aliases == {TIED: EMBED}
    assert_bitwise(tmp_path / "o.safetensors", sd)


def test_whole_pickled_module_gives_its_state_dict(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.SiLU(), torch.nn.Linear(3, 2))
    net[1].register_buffer("scratch", torch.ones(4), persistent=False)  # not in the state dict: not converted
    torch.save({"model": net, "ema": None}, tmp_path / "layer.pt")
    report = convert(tmp_path / "layer.pt", tmp_path / "o.safetensors", progress=False)
    assert "torch.nn.modules.container.Sequential" in report.stubbed and report.skipped == [("ema", "NoneType None")]
    assert_bitwise(tmp_path / "o.safetensors", net.state_dict())
    with pytest.warns(UnsafePickleWarning):
        convert(tmp_path / "layer.pt", tmp_path / "o2.safetensors", unsafe_pickle=True, progress=False)
    assert_bitwise(tmp_path / "o2.safetensors", net.state_dict())


class Cyclic(torch.nn.Module):
    pass


def test_stubbed_module_cycle_is_refused(tmp_path):
    a = Cyclic()
    a.b = Cyclic()
    a.b._modules["a"] = a  # a module tree that is not a tree
    torch.save(a, tmp_path / "cyc.pt")
    with pytest.raises(ConvertError, match="cyc.pt: the pickled modules form a cycle through 'a'"):
        convert(tmp_path / "cyc.pt", tmp_path / "o.safetensors", progress=False)


@pytest.mark.parametrize("text,size", [("2GB", 2 * 10**9), ("500MB", 5 * 10**8), ("1.5GiB", 3 * 2**29),
                                       ("4096", 4096), ("64kb", 64000)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("src,message", [
    ("missing.pt", "no such file"),
    ("no_tensors.pt", r"no tensors found; skipped entries: \[\('epoch', 'int 1'\)\]"),
    (".", r"expected pytorch_model.bin.index.json, .* one .pt/.pth/.bin/.ckpt file; found \['a.pt', 'no_tensors.pt'\]"),
])
def test_bad_sources_name_the_problem(tmp_path, src, message):
    torch.save({"epoch": 1}, tmp_path / "no_tensors.pt")
    torch.save({"w": torch.ones(1)}, tmp_path / "a.pt")
    with pytest.raises(ConvertError, match=message):
        convert(tmp_path / src, tmp_path / "o.safetensors", progress=False)


def test_cli_exit_codes(llama, tmp_path, capsys):
    _, _, src = llama
    assert main(["convert", str(src), str(tmp_path / "a.safetensors"), "--dtype", "bfloat16"]) == 0
    assert "verified: every tensor bitwise equal" in capsys.readouterr().out
    assert main(["convert", str(src), str(tmp_path / "shards"), "--shard-size", "100kB", "--quiet"]) == 0
    assert (tmp_path / "shards" / "model.safetensors.index.json").exists() and capsys.readouterr().out == ""
    torch.save({"w": torch.ones(1), "x": Shell(tmp_path / "pwned")}, tmp_path / "evil.pt")
    assert main(["convert", str(tmp_path / "evil.pt"), str(tmp_path / "e.safetensors"), "--quiet"]) == 2
    assert "posix.system" in capsys.readouterr().err and not (tmp_path / "pwned").exists()
    assert main(["convert", str(tmp_path / "nope.pt"), str(tmp_path / "e.safetensors")]) == 2
    with pytest.raises(SystemExit) as e:
        main(["convert", str(src), str(tmp_path / "x"), "--shard-size", "lots"])
    assert e.value.code == 2 and "cannot read size 'lots'" in capsys.readouterr().err


def test_cli_reports_verification_failure(llama, tmp_path, capsys, monkeypatch):
    """Fault injection: a writer that flips one bit on its way to disk must be caught (exit code 1)."""
    class BitFlippingWriter(SafetensorsWriter):
        def write(self, name, array):
            if name == "model.norm.weight":
                array = array.copy()
                array.reshape(-1).view(np.uint8)[0] ^= 1
            super().write(name, array)
    monkeypatch.setattr(migration.convert, "SafetensorsWriter", BitFlippingWriter)
    assert main(["convert", str(llama[2]), str(tmp_path / "a.safetensors"), "--quiet"]) == 1
    assert "model.norm.weight: bytes differ from the source" in capsys.readouterr().err
    assert main(["convert", str(llama[2]), str(tmp_path / "b.safetensors"), "--quiet", "--no-verify"]) == 0
    with open_checkpoint(tmp_path / "b.safetensors") as ck:
        assert aliases(ck.metadata) == {TIED: EMBED}
