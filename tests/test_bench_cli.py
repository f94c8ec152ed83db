"""`taper bench` end to end: asv (when importable) and the fallback runner write results that
reports.results loads, and the printed table pairs engine and torch with a ratio."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from reports.compare import compare
from reports.results import load_results
from bench.run import selection_regex

ROOT = Path(__file__).resolve().parents[1]
REGEX = r"Softmax\.time_softmax\('(engine|torch)', 'cpu', 'float32'"


def _bench(tmp_path, *extra, timeout=240):
    env = dict(os.environ, HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))  # asv's machine file goes here
    (tmp_path / "home").mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "taper.cli", "bench", "--quick", "--tiny", "--bench", REGEX,
           "--results", str(tmp_path / "results"), "--machine", "testbox", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _check(tmp_path, proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ops.Softmax: engine vs torch (testbox)" in proc.stdout, proc.stdout
    assert re.search(r"\d+\.\d\dx", proc.stdout), proc.stdout  # the speedup column
    assert re.search(r"µs|ms", proc.stdout)
    df = load_results(tmp_path / "results")
    ok = df[(df["status"] == "ok") & (df["benchmark"] == "bench_ops.Softmax.time_softmax")]
    assert set(ok["impl"]) == {"engine", "torch"} and set(ok["device"]) == {"cpu"}
    table = compare(ok)
    assert len(table) == 2 and table["ratio"].map(math.isfinite).all()
    sidecar = json.loads((tmp_path / "results" / "testbox" / "taper-env.json").read_text())
    assert set(sidecar) == {"card", "driver", "clocks", "cpu"} and sidecar["cpu"]
    return df


def test_fallback_runner_end_to_end(tmp_path):
    proc = _bench(tmp_path, "--runner", "fallback")
    df = _check(tmp_path, proc)
    assert "[   1/4]" in proc.stderr  # progress
    assert (df[df["status"] == "ok"]["samples"].map(len) == 1).all()
    files = list((tmp_path / "results" / "testbox").glob("*-existing-py_*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["version"] == 2 and data["params"]["machine"] == "testbox"
    # not-selected combinations are recorded as skipped (NaN), as asv does
    assert (df["status"] == "skipped").any() and not (df["status"] == "failed").any()


@pytest.mark.skipif(not __import__("importlib").util.find_spec("asv"), reason="asv is not installed (pip install -e '.[test]' brings it)")
def test_asv_runner_end_to_end_and_mixed_results(tmp_path):
    proc = _bench(tmp_path, "--runner", "asv")
    assert "asv run" in proc.stderr or "run -E existing" in proc.stderr, proc.stderr[-2000:]
    _check(tmp_path, proc)
    assert json.loads((tmp_path / "home" / ".asv-machine.json").read_text())["testbox"]["machine"] == "testbox"
    # the fallback runner adds to the same results directory, and both load together
    proc = _bench(tmp_path, "--runner", "fallback")
    assert proc.returncode == 0, proc.stderr[-2000:]
    df = load_results(tmp_path / "results")
    assert len(set(df["env"])) >= 1 and (df["status"] == "ok").sum() >= 4


def _ns(**kw):
    base = dict(bench=None, suite=None, impl=None, device=None, dtype=None, model=None)
    base.update(kw)
    return Namespace(**base)


def test_selection_regex():
    label = "bench_ops.Matmul.time_matmul('engine', 'cpu', 'float32', '1x64@64x64')"
    other = "bench_llm.Decode.time_decode_step('torch', 'cuda', 'float16', 'llama:tiny')"
    rx = re.compile(selection_regex(_ns()))
    assert rx.search(label) and rx.search(other) and not rx.search("gpu_decode.time_engine")
    rx = re.compile(selection_regex(_ns(suite=["ops"], device=["cpu"])))
    assert rx.search(label) and not rx.search(other)
    rx = re.compile(selection_regex(_ns(impl=["torch"], dtype=["float16"], model=["llama:tiny"])))
    assert rx.search(other) and not rx.search(label)
    rx = re.compile(selection_regex(_ns(bench=["^bench_ops", "Decode"], impl=["engine", "torch"])))
    assert rx.search(label) and rx.search(other)
    with pytest.raises(ValueError, match="unknown suite"):
        selection_regex(_ns(suite=["nope"]))


def test_envinfo_without_gpu():
    from bench.probes import UtilizationSampler, capture, describe
    info = capture()
    assert set(info) == {"card", "driver", "clocks", "cpu"}
    d = describe()
    assert d["num_cpu"] and d["python"]
    with UtilizationSampler(interval_s=0.01) as u:
        pass
    assert u.mean is None or 0 <= u.mean <= 100
    if u.mean is None:
        assert u.error or not u.samples
