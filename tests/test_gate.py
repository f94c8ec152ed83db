"""reports.gate / `taper gate`: asv's significance rule, A/A passes, a planted 2x slowdown fails,
the confirming re-run, numerical drift in `taper verify` JSON, and the command's exit codes.

Performance data comes from real asv runs of tests/data/asv_tiny (see its harness.py).
"""
import json
import math
import random
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("asv")
pytest.importorskip("pandas")

from reports import stats  # noqa: E402
from bench.asv import bench_regex  # noqa: E402
from reports.drift import VerifyFileError, compare_verify  # noqa: E402
from reports.gate import GateUsageError, load_config, run_gate  # noqa: E402
from reports.results import load_results  # noqa: E402
from taper.cli import main  # noqa: E402
from helpers import asv_tiny_harness as harness  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENGINE_SLOW = {("bench_tiny.Ops.time_matmul", "'engine', 'cpu', 'float32'"),
               ("bench_tiny.Ops.time_matmul", "'engine', 'cpu', 'float16'"),
               ("bench_tiny.Decode.track_ms_per_token", "'engine', 'cpu', 'tiny-llama', 1")}

CONFIG = """
[perf]
factor = {factor}
alpha = 0.002
min_samples = 5
confirm = true
fail_on_broken = true
{override}
[drift]
max_abs_factor = 1.5
max_abs_slack = 1e-7
max_rel_factor = 1.5
max_rel_slack = 1e-6
cosine_drop = 1e-6
fail_on_missing_layer = true
"""


def write_config(path, factor=1.3, override=""):
    path.write_text(CONFIG.format(factor=factor, override=override))
    return path


@pytest.fixture
def config(tmp_path):
    return load_config(write_config(tmp_path / "gate.toml"))


def regressions(result):
    return {(c.benchmark, c.params) for c in result.by("regression")}


# --- asv's significance rule -------------------------------------------------------------------

def test_mann_whitney_known_values():
    u, p = stats.mann_whitney_u([1, 2, 3, 4, 5], [6, 7, 8, 9, 10], method="exact")
    assert u == 0 and math.isclose(p, 2 / 252)  # one of C(10,5) orderings, two-sided
    u, p = stats.mann_whitney_u([1, 2, 4], [3, 5, 6], method="exact")
    assert u == 1 and math.isclose(p, 0.2)  # P(U <= 1) = 2/20, doubled
    assert stats.mann_whitney_u([1, 1, 1], [1, 1, 1])[1] == 1.0  # all ties: nothing to see
    x, y = list(range(30)), [v + 100 for v in range(30)]
    u, p = stats.mann_whitney_u(x, y)  # normal approximation above 20 samples a side
    z = (0 - 450) / math.sqrt(30 * 30 * 61 / 12)
    assert u == 0 and math.isclose(p, math.erfc(-z / math.sqrt(2)))


def test_copy_of_asv_rule_matches_asv():
    from asv._stats import is_different, mann_whitney_u

    rng = random.Random(1)
    for _ in range(200):
        x = [rng.choice(range(6)) + rng.random() * rng.randint(0, 1)
             for _ in range(rng.randint(1, 24))]
        y = [rng.choice(range(6)) for _ in range(rng.randint(1, 24))]
        assert stats.mann_whitney_u(x, y) == mann_whitney_u(x, y)
        sa, sb = {"ci_99_a": min(x), "ci_99_b": max(x)}, {"ci_99_a": min(y), "ci_99_b": max(y)}
        assert stats.is_different_fallback(x, y, sa, sb) == is_different(x, y, sa, sb)
    # Too few samples to ever reach p < 0.002: the CI rule decides.
    apart = {"ci_99_a": 1.0, "ci_99_b": 2.0}, {"ci_99_a": 3.0, "ci_99_b": 4.0}
    assert stats.is_different_fallback([1.5], [3.5], *apart)
    assert not stats.is_different_fallback([1.5], [3.5], apart[0], {"ci_99_a": 1.9, "ci_99_b": 4})


# --- the gate on real asv results --------------------------------------------------------------

def test_aa_pair_passes(tiny, config):
    result = run_gate(load_results(tiny["base"]), load_results(tiny["aa"]), config)
    judged = [c for c in result.comparisons if not math.isnan(c.change)]
    assert len(judged) == 14  # the cpu parameter sets: 2 x 3 Decode, 4 x 2 Ops
    assert result.exit_code == 0 and not result.by("regression")
    assert all(c.verdict in ("ok", "improvement", "not significant") for c in judged)
    assert any(c.test.startswith("Mann-Whitney U") for c in judged)
    assert "## Taper gate: PASS" in result.markdown()


def test_planted_2x_slowdown_fails_after_confirming_rerun(tiny, config, tmp_path):
    head = tmp_path / "head"
    shutil.copytree(tiny["slow"], head)
    calls = []

    def rerun(suspects):  # a real re-measurement, still with the slowdown
        calls.append(suspects)
        regex = bench_regex([(b, p) for _, b, p in suspects])
        harness().run(tiny["repo"], tiny["home"], head, "tiny-cpu", slowdown=2, bench=regex)
        return load_results(head)

    result = run_gate(load_results(tiny["base"]), load_results(head), config, rerun=rerun)
    assert regressions(result) == ENGINE_SLOW
    assert len(calls) == 1 and {(b, p) for _, b, p in calls[0]} == ENGINE_SLOW
    assert result.exit_code == 1
    timed = [c for c in result.by("regression") if "time_matmul" in c.benchmark]
    assert all(1.7 < c.change < 2.2 and "Mann-Whitney U" in c.test for c in timed)
    torch = [c for c in result.comparisons if "'torch'" in c.params and not math.isnan(c.change)]
    assert torch and all(c.verdict != "regression" for c in torch)
    md = result.markdown()
    assert "## Taper gate: FAIL" in md and "### Regressions (3)" in md
    assert "re-run:" in md and "bench_tiny.Ops.time_matmul" in md


def test_rerun_that_measures_no_slowdown_clears_the_suspects(tiny, config, tmp_path):
    head = tmp_path / "head"
    shutil.copytree(tiny["slow"], head)

    def rerun(suspects):  # the slowdown was a fluke: the re-run is at normal speed
        regex = bench_regex([(b, p) for _, b, p in suspects])
        harness().run(tiny["repo"], tiny["home"], head, "tiny-cpu", slowdown=1, bench=regex)
        return load_results(head)

    result = run_gate(load_results(tiny["base"]), load_results(head), config, rerun=rerun)
    assert not result.by("regression") and result.exit_code == 0
    assert {(c.benchmark, c.params) for c in result.by("unconfirmed")} == ENGINE_SLOW
    assert "not confirmed by the re-run" in result.markdown()


def test_per_benchmark_override_and_unconfirmed_without_hook(tiny, tmp_path):
    override = '[[perf.override]]\nmatch = "*.time_matmul"\nfactor = 3.0\n'
    config = load_config(write_config(tmp_path / "g.toml", override=override))
    result = run_gate(load_results(tiny["base"]), load_results(tiny["slow"]), config)
    assert regressions(result) == {k for k in ENGINE_SLOW if "track" in k[0]}
    assert "re-run disabled" in result.markdown()


def test_config_errors_name_the_file(tmp_path):
    assert load_config(ROOT / "reports" / "gate.toml")["perf"]["alpha"] == 0.002
    bad = tmp_path / "bad.toml"
    bad.write_text(CONFIG.format(factor=1.1, override="").replace("alpha = 0.002\n", ""))
    with pytest.raises(GateUsageError, match=r"bad.toml: missing keys \['alpha'\] in \[perf\]"):
        load_config(bad)
    bad.write_text(CONFIG.format(factor=1.1, override="fudge = 2\n"))
    with pytest.raises(GateUsageError, match=r"unknown keys \['fudge'\] in \[perf\]"):
        load_config(bad)
    bad.write_text("[perf\n")
    with pytest.raises(GateUsageError, match="bad.toml: not valid TOML"):
        load_config(bad)


# --- numerical drift ---------------------------------------------------------------------------

def verify_json(path, layers, passed=True):
    path.write_text(json.dumps({"layers": layers, "summary": {"passed": passed}}))
    return path


def layers(scale=1.0, cosine=0.9999999, passed=True):
    return [{"name": f"model.layers.{i}.mlp", "max_abs": 1e-5 * scale * (i + 1),
             "max_rel": 1e-4 * scale, "cosine": cosine, "passed": passed} for i in range(3)]


def test_drift_is_caught_and_tolerance_respected(config, tmp_path):
    tol = config["drift"]
    base = verify_json(tmp_path / "base.json", layers())
    assert compare_verify(base, verify_json(tmp_path / "same.json", layers(1.2)), tol) == []
    worse = compare_verify(base, verify_json(tmp_path / "worse.json", layers(10.0)), tol)
    assert {(d.layer, d.metric) for d in worse} == {
        (f"model.layers.{i}.mlp", m) for i in range(3) for m in ("max_abs", "max_rel")}
    cos = compare_verify(base, verify_json(tmp_path / "cos.json", layers(cosine=0.999)), tol)
    assert {d.metric for d in cos} == {"cosine"}
    flip = compare_verify(base, verify_json(tmp_path / "f.json", layers(passed=False), False), tol)
    assert {(d.layer, d.metric) for d in flip} >= {("<summary>", "passed")}
    gone = compare_verify(base, verify_json(tmp_path / "g.json", layers()[:2]), tol)
    assert [(d.layer, d.metric) for d in gone] == [("model.layers.2.mlp", "layer")]
    (tmp_path / "broken.json").write_text('{"layers": [{"max_abs": 1}]}')
    with pytest.raises(VerifyFileError, match=r"broken.json: layers\[0\] has no string 'name'"):
        compare_verify(base, tmp_path / "broken.json", tol)


def test_drift_fails_the_gate_even_when_perf_passes(tiny, config, tmp_path):
    base = verify_json(tmp_path / "base.json", layers())
    drift = compare_verify(base, verify_json(tmp_path / "head.json", layers(4.0)), config["drift"])
    result = run_gate(load_results(tiny["base"]), load_results(tiny["aa"]), config, drift=drift)
    assert not result.by("regression") and result.exit_code == 1
    assert "### Numerical drift (6)" in result.markdown()


# --- the command -------------------------------------------------------------------------------

@pytest.fixture
def cli_env(tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tiny["home"]))  # the asv machine file knowing tiny-cpu
    monkeypatch.delenv("TAPER_TINY_SLOWDOWN", raising=False)
    return write_config(tmp_path / "gate.toml")


def test_cli_directories(tiny, cli_env, tmp_path, capsys):
    cfg = ["--config", str(cli_env)]
    assert main(["gate", str(tiny["base"]), str(tiny["aa"]), *cfg]) == 0
    out = tmp_path / "pr.md"
    assert main(["gate", str(tiny["base"]), str(tiny["slow"]), *cfg, "--no-rerun",
                 "--markdown", str(out)]) == 1
    assert out.read_text().startswith("## Taper gate: FAIL")
    # --rerun-cmd gets the regex of exactly the suspects; re-measuring nothing confirms them.
    log = tmp_path / "bench.txt"
    assert main(["gate", str(tiny["base"]), str(tiny["slow"]), *cfg,
                 "--rerun-cmd", f"echo {{bench}} > {log}"]) == 1
    assert log.read_text().strip() == bench_regex(sorted(ENGINE_SLOW))
    capsys.readouterr()
    assert main(["gate", str(tmp_path / "nowhere"), str(tiny["aa"]), *cfg]) == 2
    assert "'" + str(tmp_path / "nowhere") + "' is neither a results directory nor a git ref" \
        in capsys.readouterr().err
    assert main(["gate", str(tiny["base"]), str(tiny["aa"]), "--config", str(tmp_path)]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main(["gate", str(tiny["base"]), str(tiny["aa"]), *cfg, "--verify", str(bad),
                 str(bad)]) == 2
    assert "bad.json: not valid JSON" in capsys.readouterr().err


def test_cli_default_config_is_the_shipped_gate_toml(tiny, cli_env, tmp_path, monkeypatch,
                                                     capsys):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # no ./gate.toml here: reports/gate.toml is used
    assert main(["gate", str(tiny["base"]), str(tiny["slow"]), "--no-rerun"]) == 1
    out = capsys.readouterr().out
    assert "| 1.10x |" in out  # the shipped factor
    assert "ignored" not in out and "track_roofline" not in out.split("<details>")[0]


def test_cli_default_rerun_in_this_checkout(tiny, cli_env, tmp_path, monkeypatch):
    head = tmp_path / "head"
    shutil.copytree(tiny["slow"], head)
    monkeypatch.setenv("TAPER_TINY_SLOWDOWN", "2")  # the checkout is still slow: confirmed
    args = ["gate", str(tiny["base"]), str(head), "--config", str(cli_env), "--repo",
            str(tiny["repo"]), "--asv-config", "asv.conf.json"]
    assert main(args) == 1
    shutil.rmtree(head)
    shutil.copytree(tiny["slow"], head)
    monkeypatch.setenv("TAPER_TINY_SLOWDOWN", "1")  # a fluke: the re-run clears it
    assert main(args) == 0


def test_cli_git_refs_run_asv_in_worktrees(tiny, cli_env, tmp_path, capsys):
    repo = tmp_path / "repo"
    shutil.copytree(tiny["repo"], repo)
    harness().commit_slowdown(repo, 2)
    base = verify_json(tmp_path / "base.json", layers())
    head = verify_json(tmp_path / "head.json", layers(1.1))
    args = ["gate", "HEAD~1", "HEAD", "--config", str(cli_env), "--repo", str(repo),
            "--bench", "time_matmul", "--machine", "tiny-cpu", "--verify", str(base), str(head)]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "### Regressions (2)" in out and "Numerical drift" not in out
    assert "'engine', 'cpu', 'float32'" in out and "re-run: " in out
    assert harness().head(repo) in out or harness().head(repo)[:10] in out
    worktrees = harness().subprocess.run(["git", "worktree", "list"], cwd=repo, text=True,
                                         capture_output=True).stdout
    assert len(worktrees.strip().splitlines()) == 1  # the temporary worktrees are gone
