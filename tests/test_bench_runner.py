"""The benchmark runner (bench/) survives misbehaving benchmarks and never loses results.

tests/data/bench_faults is a tiny asv project whose benchmarks raise, hang inside one C call, are
SIGKILLed (as by the OOM killer) and skip; `taper bench` runs it through bench.run.main(root=...),
with both runners. The fault-injection test kills whole runs at seeded random moments.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.asv import check_results_dir
from bench.run import main
from engine.io.atomic import atomic_write_bytes
from reports.results import ResultsError, load_results
from taper.commands.bench import add_arguments

ROOT = Path(__file__).resolve().parents[1]
FAULTS = ROOT / "tests" / "data" / "bench_faults"
HAS_ASV = all(__import__("importlib").util.find_spec(m) for m in ("asv", "asv_runner"))
RUNNERS = ["fallback", pytest.param("asv", marks=pytest.mark.skipif(not HAS_ASV, reason="asv is not installed (pip install -e '.[test]' brings it)"))]
MODES = "bench_faults.Faults.time_mode"


def git(repo, *args):
    subprocess.run(["git", "-c", "user.email=t@taper", "-c", "user.name=t", *args], cwd=repo, check=True,
                   capture_output=True)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A git checkout of the fault suite; HOME (asv's machine file) and the runner's env kept here."""
    path = tmp_path / "repo"
    shutil.copytree(FAULTS, path)
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "faults")
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TAPER_BENCH_QUICK", "")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    yield path
    _kill_servers_of(path)


def _kill_servers_of(path):
    """asv's fork server runs in a process group of its own, so a SIGKILL of the runner's group
    leaves it waiting on its socket; the tests that kill runs end those servers here."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"run_server" in args and any(str(path).encode() in a for a in args):
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except OSError:
                pass


def bench(repo, *argv):
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--quick", "--machine", "box", "--results", str(repo / "results"), *argv])
    return main(args, root=repo)


def statuses(results) -> dict:
    df = load_results(results)
    return {f"{b}({p})": (s, v) for b, p, s, v in zip(df["benchmark"], df["params_repr"], df["status"], df["value"])}


@pytest.mark.parametrize("runner", RUNNERS)
def test_every_fault_is_a_failure_in_the_table_and_the_run_goes_on(repo, runner, capsys):
    assert bench(repo, "--runner", runner) == 1  # benchmarks failed: not a success
    out, err = capsys.readouterr()
    got = statuses(repo / "results")
    assert {k: s for k, (s, _) in got.items() if k.startswith(MODES)} == {
        f"{MODES}('ok')": "ok", f"{MODES}('raises')": "failed", f"{MODES}('hangs_in_c')": "failed",
        f"{MODES}('killed')": "failed", f"{MODES}('skip')": "skipped"}
    assert [got[f"bench_faults.Values.track_value({i})"] for i in range(6)] == [("ok", 42.0 + i) for i in range(6)]
    assert "FAILED (3 parameter sets, box)" in out
    for mode in ("raises", "hangs_in_c", "killed"):
        assert f"'{mode}'" in out.split("FAILED")[1]
    if runner == "fallback":  # the reasons themselves; asv's are in its log
        for why in ("ValueError: failed on purpose", "timed out after", "killed by SIGKILL"):
            assert why in out, out
        assert err.count("bench_faults.") >= 11 and "[  11/11]" in err
    else:
        assert "[   2/2] bench_faults.Values.track_value  ok" in err  # one line per benchmark, not per row
        assert "1 environments" in (repo / "results" / "taper-asv.log").read_text()
        assert len(list((repo / "results" / "box").glob("*-existing-*.json"))) == 1


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_damaged_results_file_is_reported_and_left_alone(repo, runner, capsys):
    damaged = repo / "results" / "box" / "0123abcd-existing-py_x.json"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b'{"results": {"bench_faults.Values.track_value": [[42.0')
    assert bench(repo, "--runner", runner, "--bench", "Values") == 2
    err = capsys.readouterr().err
    assert str(damaged) in err and "damaged" in err, err
    assert damaged.read_bytes() == b'{"results": {"bench_faults.Values.track_value": [[42.0'
    assert sorted(p.name for p in (repo / "results" / "box").iterdir()) == [damaged.name]


def test_damaged_file_message_names_the_file(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "r.json").write_text("{nope")
    with pytest.raises(ResultsError, match=r"left as they are: .*m/r\.json"):
        check_results_dir(tmp_path)


def test_cuda_without_a_gpu_says_so_and_fails(tmp_path, capsys):
    from bench.probes import cuda_status
    if cuda_status()[0]:
        pytest.skip("checks the error a machine without CUDA gets; this machine has a usable CUDA device")
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert main(p.parse_args(["--device", "cuda", "--results", str(tmp_path / "r")])) == 2
    assert "--device cuda: no usable CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=r"cannot write .*results\.json: No space left"):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


RUN = """import argparse, sys
from pathlib import Path
from bench.run import main
from taper.commands.bench import add_arguments
p = argparse.ArgumentParser(); add_arguments(p)
sys.exit(main(p.parse_args(sys.argv[2:]), root=Path(sys.argv[1])))
"""


@pytest.mark.parametrize("runner", RUNNERS)
def test_runs_killed_at_random_moments_lose_nothing(repo, runner):
    """A complete run, then runs with other values SIGKILLed at seeded random moments: every file
    still parses, every value is one some run measured, and a last run completes over the debris."""
    rng = random.Random(11)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TAPER_FAULT_SLEEP="0.15")
    cmd = [sys.executable, "-c", RUN, str(repo), "--quick", "--machine", "box", "--runner", runner,
           "--results", str(repo / "results"), "--bench", "Values", "--no-table"]
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    seen = {i: {42.0 + i} for i in range(6)}
    for k in range(1, 4):
        proc = subprocess.Popen(cmd, env=dict(env, TAPER_FAULT_VALUE=str(100 * k)), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(0.3, 2.5))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for i in seen:
            seen[i].add(100.0 * k + i)
        check_results_dir(repo / "results")  # every JSON file parses
        for i in range(6):
            status, value = statuses(repo / "results")[f"bench_faults.Values.track_value({i})"]
            assert status == "ok" and value in seen[i], (k, i, status, value)
    assert subprocess.run(cmd, env=dict(env, TAPER_FAULT_VALUE="7"), capture_output=True).returncode == 0
    assert [statuses(repo / "results")[f"bench_faults.Values.track_value({i})"] for i in range(6)] == \
        [("ok", 7.0 + i) for i in range(6)]
    leftovers = [p for p in (repo / "results").rglob("*") if p.name.endswith(".tmp")]
    leftovers += list(repo.glob(".results.taper-staging-*"))
    assert not leftovers, leftovers
    assert json.loads((repo / "results" / "benchmarks.json").read_text())["version"] == 2


def test_copy_bandwidth_probe():
    from bench.probes import copy_gb_per_s, cuda_status
    assert copy_gb_per_s("cpu") is None
    if cuda_status()[0] and __import__("importlib").util.find_spec("cupy"):
        assert copy_gb_per_s("cuda") > 10  # GB/s; any GPU copies faster than this


def test_merge_results_fills_each_combination_from_the_run_that_measured_it(tmp_path):
    """bench.merge_results: two runs of one benchmark over disjoint combinations -> one file, relabelled."""
    import json
    from bench.merge_results import main, merge
    cols = ["result", "params", "version", "started_at", "duration", "stats_q_25"]
    doc = lambda r, q: {"commit_hash": "a" * 40, "version": 2, "result_columns": cols, "durations": {},  # noqa: E731
                        "results": {"b.T.time_x": [r, [["'engine'", "'torch'"]], "v", 1, 2.0, q]}}
    a, b = doc([1.0, None], [0.9, None]), doc([None, 2.0], None)
    merged, clashes = merge([a, b], "c" * 40)
    assert merged["results"]["b.T.time_x"][0] == [1.0, 2.0] and merged["commit_hash"] == "c" * 40
    assert merged["results"]["b.T.time_x"][5] == [0.9, None] and clashes == []
    assert merge([a, doc([3.0, None], None)])[1] == ["b.T.time_x combination 0"]
    for i, d in enumerate((a, b)):
        (tmp_path / f"{i}.json").write_text(json.dumps(d))
    assert main([str(tmp_path / "m.json"), str(tmp_path / "0.json"), str(tmp_path / "1.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["results"]["b.T.time_x"][0] == [1.0, 2.0]
    (tmp_path / "bad.json").write_text("{")
    assert main([str(tmp_path / "m.json"), str(tmp_path / "bad.json")]) == 2
    assert main([str(tmp_path / "m.json"), str(tmp_path / "0.json"), "--commit", "xyz"]) == 2
