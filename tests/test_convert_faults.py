"""`taper convert` against hostile pickles, full disks, killed runs, earlier outputs and odd destinations
(issue 11: each case here once hung, crashed, lost or mixed data). Real files and processes only:
the full disk is a real write failure (RLIMIT_FSIZE), the kills are real SIGKILLs at seeded random
moments."""
from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.io.safetensors import open_checkpoint, restore_aliases
from migration.convert import ConvertError, convert
from taper.cli import main

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")


def cli(*args, timeout=120, **kw):
    return subprocess.run([sys.executable, "-m", "taper.cli", "convert", *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=timeout, **kw)


def read(path) -> dict:
    with open_checkpoint(path) as ck:
        return {k: np.array(v) for k, v in restore_aliases({k: ck.get_numpy(k) for k in ck.keys()}, ck.metadata).items()}


def state(value: float, n: int = 24, size: int = 4096) -> dict:
    return {f"layers.{i}.weight": torch.full((size,), value + i) for i in range(n)}


def billion_laughs(depth: int = 40) -> dict:
    d = {"w": torch.ones(1)}
    for _ in range(depth):
        d = {"a": d, "b": d}  # 2 KB pickled (memoised), 2**40 key paths when walked
    return d


def test_a_billion_laughs_pickle_is_refused_at_once(tmp_path):
    torch.save(billion_laughs(), tmp_path / "laughs.pt")
    assert (tmp_path / "laughs.pt").stat().st_size < 10_000
    proc = cli(tmp_path / "laughs.pt", tmp_path / "o.safetensors", "--quiet", timeout=60)
    assert proc.returncode == 2 and "billion laughs" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "o.safetensors").exists()


def test_a_state_dict_nested_3000_deep_converts(tmp_path):
    d = {"w": torch.arange(3.0)}
    for _ in range(3000):
        d = {"a": d}
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # torch.save's pickler recurses; the reader must not
    try:
        torch.save(d, tmp_path / "deep.pt")
    finally:
        sys.setrecursionlimit(limit)
    report = convert(tmp_path / "deep.pt", tmp_path / "deep.safetensors", progress=False)
    assert report.verified and report.tensors == ["a." * 3000 + "w"]
    assert read(tmp_path / "deep.safetensors")["a." * 3000 + "w"].tolist() == [0, 1, 2]


class Sleeper:
    def __reduce__(self):
        return time.sleep, (3600,)


def test_unsafe_pickle_warns_and_is_killed_after_its_timeout(tmp_path):
    torch.save({"w": torch.ones(2), "x": Sleeper()}, tmp_path / "slow.pt")
    proc = cli(tmp_path / "slow.pt", tmp_path / "o.safetensors", "--unsafe-pickle", "--unsafe-timeout", "1", "--quiet",
               timeout=60)  # the payload sleeps an hour
    assert proc.returncode == 2, proc.stderr
    assert "taper convert: WARNING: " in proc.stderr and "slow.pt: --unsafe-pickle: running the code" in proc.stderr
    assert "did not finish in 1 s; it was killed" in proc.stderr and "Traceback" not in proc.stderr


def _limit_file_size(nbytes):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return limit


@pytest.mark.parametrize("shards", [False, True])
def test_a_full_disk_names_the_file_keeps_the_old_output_and_leaves_no_temp(tmp_path, shards):
    torch.save(state(1.0), tmp_path / "old.pt")
    torch.save(state(2.0), tmp_path / "new.pt")
    dst = tmp_path / "out" if shards else tmp_path / "out.safetensors"
    extra = ["--shard-size", "150kB"] if shards else []
    convert(tmp_path / "old.pt", dst, shard_size="150kB" if shards else None, progress=False)
    before = read(dst)
    proc = cli(tmp_path / "new.pt", dst, "--quiet", "--overwrite", *extra, preexec_fn=_limit_file_size(100_000))
    assert proc.returncode == 2 and f"cannot write {dst}: File too large" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "earlier" in proc.stderr
    assert {k: v.tolist() for k, v in read(dst).items()} == {k: v.tolist() for k, v in before.items()}
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".tmp", ".unverified"))]


def test_a_directory_keeps_config_and_tokenizer_files_and_port_accepts_it(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=64)
    src = tmp_path / "hf"
    model = LlamaForCausalLM(cfg)
    model.config.save_pretrained(src)
    model.generation_config.save_pretrained(src)
    torch.save(model.state_dict(), src / "pytorch_model.bin")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (src / name).write_text("{}")
    out = tmp_path / "not" / "yet" / "there"  # a destination directory that does not exist: created
    convert(src, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
         "tokenizer.json", "tokenizer_config.json"])
    assert main(["port", str(out)]) == 0


def test_an_existing_output_is_refused_then_replaced_as_a_whole(tmp_path, capsys):
    torch.save(state(1.0, n=3), tmp_path / "a.pt")
    torch.save(state(5.0, n=2), tmp_path / "b.pt")
    out = tmp_path / "out"
    convert(tmp_path / "a.pt", out, shard_size="20kB", progress=False)
    (out / "README.md").write_text("mine")
    assert main(["convert", str(tmp_path / "b.pt"), str(out), "--quiet"]) == 2
    assert "already holds a checkpoint (model-00001-of-" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "b.pt"), str(out), "--quiet", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model.safetensors"]  # old shards and index gone
    assert sorted(read(out)) == ["layers.0.weight", "layers.1.weight"] and read(out)["layers.1.weight"][0] == 6.0
    assert main(["convert", str(tmp_path / "b.pt"), str(tmp_path / "f.safetensors"), "--quiet"]) == 0
    assert main(["convert", str(tmp_path / "a.pt"), str(tmp_path / "f.safetensors"), "--quiet"]) == 2


def test_an_index_cannot_lead_outside_its_directory(tmp_path):
    (tmp_path / "outside").mkdir()
    torch.save({"w": torch.ones(2)}, tmp_path / "outside" / "x.bin")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"w": "../outside/x.bin"}}))
    with pytest.raises(ConvertError, match=r"names shard '../outside/x.bin', which is not a file name"):
        convert(tmp_path / "m", tmp_path / "o.safetensors", progress=False)
    (tmp_path / "m" / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"w": 3}}))
    with pytest.raises(ConvertError, match=r"index must hold a 'weight_map' of tensor name -> shard file name"):
        convert(tmp_path / "m", tmp_path / "o.safetensors", progress=False)
    (tmp_path / "m" / "pytorch_model.bin.index.json").write_text('{"weight_map": ' + "[" * 20000 + "]" * 20000 + "}")
    with pytest.raises(ConvertError, match=r"more than 10000 JSON objects or lists"):  # read_index's limits
        convert(tmp_path / "m", tmp_path / "o.safetensors", progress=False)


def test_temps_of_killed_runs_are_removed_by_the_next_run(tmp_path):
    torch.save(state(1.0, n=2), tmp_path / "a.pt")
    dead = 2**22 + 12345  # above pid_max's default: no such process
    stale = [tmp_path / f".o.safetensors.{dead}.0123abcd.tmp", tmp_path / f".out.{dead}.89abcdef.tmp"]
    stale[0].write_bytes(b"\0" * 100)
    stale[1].mkdir()
    (stale[1] / "model.safetensors").write_bytes(b"\0" * 100)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"taper-convert-{dead}-xyz"
    work.mkdir(exist_ok=True)
    convert(tmp_path / "a.pt", tmp_path / "o.safetensors", progress=False)
    assert not any(p.exists() for p in stale + [work])


def test_conversions_killed_at_random_moments_lose_and_mix_nothing(tmp_path):
    """A sharded checkpoint from source A, then conversions of source B over it (--overwrite) killed
    with SIGKILL at seeded random moments once they have started writing: the directory always loads
    as all of A or all of B, never a mix, and the next conversion cleans up after the killed ones."""
    rng = random.Random(7)
    torch.save(state(1.0, n=96, size=32768), tmp_path / "a.pt")
    torch.save(state(1000.0, n=96, size=32768), tmp_path / "b.pt")
    out = tmp_path / "out"
    convert(tmp_path / "a.pt", out, shard_size="1MB", progress=False)
    (out / "config.json").write_text("{}")
    whole = [{k: v.tolist() for k, v in read(out).items()}, {k: v.tolist() for k, v in state(1000.0, 96, 32768).items()}]
    cmd = [sys.executable, "-m", "taper.cli", "convert", str(tmp_path / "b.pt"), str(out), "--shard-size", "1MB",
           "--quiet", "--overwrite"]
    for _ in range(3):
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while proc.poll() is None and not list(tmp_path.glob(f".out.{proc.pid}.*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.002)  # until it starts writing its staging directory (after its imports)
        time.sleep(rng.uniform(0.0, 0.3))  # writing, verifying and committing 12 MB take about 0.15 s here
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        assert {k: v.tolist() for k, v in read(out).items()} in whole, "a mixed or damaged checkpoint"
        assert (out / "config.json").exists()
    convert(tmp_path / "b.pt", out, shard_size="1MB", progress=False, overwrite=True)
    assert {k: v.tolist() for k, v in read(out).items()} == whole[1]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
