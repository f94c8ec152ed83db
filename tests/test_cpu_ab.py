"""bench.cpu_ab: engine and torch in processes of their own, in turn, on a tiny encoder (TAPER_BENCH_QUICK)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_ab(*args):
    env = dict(os.environ, TAPER_BENCH_QUICK="1")
    return subprocess.run([sys.executable, "-m", "bench.cpu_ab", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cpu_ab_alternates_and_gives_ratios():
    pytest.importorskip("torch", reason="bench.cpu_ab times torch beside the engine: pip install -e '.[test]'")
    out = cpu_ab("bench_encoders.BertBatch.time_forward", "cpu", "float32", "bert:tiny", "4", "--rounds", "2",
                 "--calls", "2")
    assert out.returncode == 0, out.stderr[-2000:]
    rounds = re.findall(r"round (\d) (engine|torch) +median +([\d.]+) ms", out.stdout)
    assert [(r, i) for r, i, _ in rounds] == [("1", "engine"), ("1", "torch"), ("2", "engine"), ("2", "torch")]
    assert all(float(ms) > 0 for _, _, ms in rounds)
    assert re.search(r"engine/torch per round [\d.]+, [\d.]+ \(median [\d.]+\)", out.stdout), out.stdout


def test_cpu_ab_names_a_bad_parameter():
    out = cpu_ab("bench_encoders.BertBatch.time_forward", "cpu", "float32", "bert:nope", "4", "--rounds", "1",
                 "--impl", "engine")
    assert out.returncode == 1 and "model='bert:nope' is not one of the benchmark's values" in out.stderr


def test_setup_cache_writes_outside_the_working_directory(tmp_path, monkeypatch):
    """The detect suite's setup_cache writes a model directory: bench.cpu_ab runs it in a directory of its own."""
    from bench.cpu_ab import _setup_cache
    from suites.bench_detect import YoloDetect
    monkeypatch.chdir(tmp_path)
    path = _setup_cache(YoloDetect())
    assert os.path.isfile(os.path.join(path, "config.json")) and os.getcwd() == str(tmp_path)
    assert not os.listdir(tmp_path)
