"""reports.gate / `taper gate`: asv's significance rule, A/A passes, a planted 2x slowdown fails,
the confirming re-run (BASE and HEAD interleaved, new samples proven), what is gated, missing
benchmarks, units and zeros, numerical drift in `taper verify` JSON, and the command's exit codes.

Performance data comes from real asv runs of tests/data/asv_tiny (see its harness.py).
"""
import json
import math
import random
import shutil
from pathlib import Path

import pytest

pytest.importorskip("asv")
pytest.importorskip("pandas")

from reports import stats  # noqa: E402
from reports.asvrun import bench_regex  # noqa: E402
from reports.drift import COUNTS, VerifyFileError, compare_verify  # noqa: E402
from reports.gate import GateUsageError, RerunError, load_config, run_gate  # noqa: E402
from reports.results import load_results  # noqa: E402
from taper.cli import main  # noqa: E402
from helpers import asv_tiny_harness as harness  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENGINE_SLOW = {("bench_tiny.Ops.time_matmul", "'engine', 'cpu', 'float32'"),
               ("bench_tiny.Ops.time_matmul", "'engine', 'cpu', 'float16'"),
               ("bench_tiny.Decode.track_ms_per_token", "'engine', 'cpu', 'tiny-llama', 1")}

CONFIG = """
[perf]
impls = {impls}
factor = {factor}
alpha = 0.002
min_samples = 5
confirm = true
rerun_rounds = 2
fail_on_broken = true
fail_on_missing = {missing}
fail_on_nothing_compared = {nothing}
{override}
[drift]
max_abs_factor = 1.5
max_abs_slack = 1e-7
max_rel_factor = 1.5
max_rel_slack = 1e-6
cosine_drop = 1e-6
fail_on_missing_layer = true
"""


def write_config(path, factor=1.3, override="", impls='["engine"]', missing="true",
                 nothing="true"):
    path.write_text(CONFIG.format(factor=factor, override=override, impls=impls,
                                  missing=missing, nothing=nothing))
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

def measure_with(tiny, calls, slowdown):
    """A confirming re-run's measure(): real asv runs of the tiny suite, BASE and HEAD by the same
    harness; slowdown[side] is the engine slowdown that side's code (or the box) shows now."""
    def measure(side, keys, results_dir):
        calls.append((side, Path(results_dir)))
        regex = bench_regex([(b, p) for _, b, p in keys])
        harness().run(tiny["repo"], tiny["home"], results_dir, "tiny-cpu",
                      slowdown=slowdown[side], bench=regex)
    return measure


def test_aa_pair_passes(tiny, config):
    result = run_gate(load_results(tiny["base"]), load_results(tiny["aa"]), config)
    judged = result.judged
    assert len(judged) == 7  # the engine's cpu parameter sets: 3 Decode, 2 x 2 Ops
    assert {c.params.split(",")[0] for c in judged} == {"'engine'"}
    assert len(result.by("not gated")) == 14  # torch's rows (cpu and cuda) are not gated
    assert result.exit_code == 0 and not result.by("regression")
    assert all(c.verdict in ("ok", "improvement", "not significant") for c in judged)
    assert any(c.test.startswith("Mann-Whitney U") for c in judged)
    assert "## Taper gate: PASS" in result.markdown()


def test_planted_2x_slowdown_fails_after_interleaved_rerun(tiny, config):
    calls = []
    result = run_gate(load_results(tiny["base"]), load_results(tiny["slow"]), config,
                      measure=measure_with(tiny, calls, {"base": 1, "head": 2}))
    assert regressions(result) == ENGINE_SLOW and result.exit_code == 1
    assert [side for side, _ in calls] == ["base", "head", "base", "head"]  # A/B/A/B
    assert len({d for _, d in calls}) == 4  # a fresh directory per round and side
    timed = [c for c in result.by("regression") if "time_matmul" in c.benchmark]
    assert all(1.7 < c.change < 2.2 and "Mann-Whitney U" in c.test for c in timed)
    assert all("re-run B/H/B/H" in c.test and "(24/24)" in c.test for c in timed)  # pooled rounds
    assert result.rerun["samples"] == {f"{b}({p})": [24, 24] if "time" in b else [2, 2]
                                       for b, p in ENGINE_SLOW}
    md = result.markdown()
    assert "## Taper gate: FAIL" in md and "### Regressions (3)" in md
    assert "interleaved (2 rounds); 3 confirmed" in md


def test_load_change_between_the_sides_does_not_confirm_itself(tiny, config):
    # The first HEAD run was slow; re-measured, BASE's code is as slow as HEAD's now (the box got
    # slower): measuring HEAD alone again would "confirm" it, A/B/A/B does not.
    result = run_gate(load_results(tiny["base"]), load_results(tiny["slow"]), config,
                      measure=measure_with(tiny, [], {"base": 2, "head": 2}))
    assert not result.by("regression") and result.exit_code == 0
    assert {(c.benchmark, c.params) for c in result.by("unconfirmed")} == ENGINE_SLOW
    assert "not confirmed by the re-run" in result.markdown()


def test_one_unlucky_round_does_not_confirm(tiny, config):
    # Round 1's HEAD run met a busy box (2x), round 2 did not: the pooled samples may still look
    # slower, but a regression must show in every round on its own.
    slow = iter([1, 2, 1, 1])

    def measure(side, keys, results_dir):
        regex = bench_regex([(b, p) for _, b, p in keys])
        harness().run(tiny["repo"], tiny["home"], results_dir, "tiny-cpu", slowdown=next(slow),
                      bench=regex)

    result = run_gate(load_results(tiny["base"]), load_results(tiny["slow"]), config,
                      measure=measure)
    assert not result.by("regression") and result.exit_code == 0
    matmul = [c for c in result.by("unconfirmed") if "time_matmul" in c.benchmark]
    rounds = result.rerun["round_changes"][f"{matmul[0].benchmark}({matmul[0].params})"]
    assert rounds[0] > 1.7 and rounds[1] < 1.3


@pytest.mark.parametrize("writes", ["nothing", "elsewhere", "old results"])
def test_rerun_that_measures_nothing_new_is_an_error(tiny, config, tmp_path, writes):
    def measure(side, keys, results_dir):
        if writes == "elsewhere":  # e.g. {results} taken as a path relative to another folder
            shutil.copytree(tiny["slow"], tmp_path / "elsewhere", dirs_exist_ok=True)
        elif writes == "old results":  # the first run's files: no new samples
            shutil.copytree(tiny[side if side == "base" else "slow"], results_dir,
                            dirs_exist_ok=True)

    with pytest.raises(RerunError, match=r"round 1 of 2, BASE.*(wrote no asv results|no new "
                                         r"result for bench_tiny)"):
        run_gate(load_results(tiny["base"]), load_results(tiny["slow"]), config, measure=measure)


def test_per_benchmark_override_and_unconfirmed_without_hook(tiny, tmp_path):
    override = '[[perf.override]]\nmatch = "*.time_matmul"\nfactor = 3.0\n'
    config = load_config(write_config(tmp_path / "g.toml", override=override))
    result = run_gate(load_results(tiny["base"]), load_results(tiny["slow"]), config)
    assert regressions(result) == {k for k in ENGINE_SLOW if "track" in k[0]}
    assert "not re-measured (re-run disabled)" in result.markdown()


def test_only_the_gated_implementations_fail_the_gate(tiny, tmp_path):
    base = load_results(tiny["base"])
    head = load_results(tiny["aa"])
    torch_rows = head["impl"] == "torch"
    head.loc[torch_rows, "value"] *= 3  # torch (not under test) became 3x slower
    head.loc[torch_rows, "samples"] = head.loc[torch_rows, "samples"].map(
        lambda s: [3 * x for x in s] if isinstance(s, list) else s)
    engine_only = load_config(write_config(tmp_path / "a.toml"))
    result = run_gate(base, head, engine_only)
    assert result.exit_code == 0 and len(result.by("not gated")) == 14
    every = load_config(write_config(tmp_path / "b.toml", impls='["*"]'))
    assert {c.params.split(",")[0] for c in run_gate(base, head, every).by("regression")} == \
        {"'torch'"}


def test_nothing_compared_and_missing_benchmarks_fail(tiny, tmp_path, config):
    base, head = load_results(tiny["base"]), load_results(tiny["aa"])
    renamed = head.assign(benchmark="bench_other." + head["benchmark"])
    result = run_gate(base, renamed, config)
    assert result.judged == [] and result.exit_code == 1
    assert "0 benchmark results compared" in result.markdown()
    assert "nothing compared: BASE and HEAD share no measured benchmark of engine" in \
        result.markdown()
    gone = head[~((head["impl"] == "engine") & (head["name"] == "Ops.time_matmul"))]
    result = run_gate(base, gone, config)
    assert len(result.by("missing on head")) == 2 and result.exit_code == 1
    assert "### Missing on HEAD (measured on BASE) (2)" in result.markdown()
    skipped = head.copy()
    rows = (skipped["impl"] == "engine") & (skipped["name"] == "Ops.time_matmul")
    skipped.loc[rows, ["status", "value"]] = ["skipped", math.nan]
    assert len(run_gate(base, skipped, config).by("missing on head")) == 2
    told = load_config(write_config(tmp_path / "t.toml", missing="false", nothing="false"))
    assert run_gate(base, gone, told).exit_code == 0
    assert run_gate(base, renamed, told).exit_code == 0


def track_frames(tiny, unit, base_value, head_value):
    """Real rows of a track_ benchmark, with its unit and values set as a suite might record."""
    frames = []
    for value in (base_value, head_value):
        df = load_results(tiny["base"])
        df = df[(df["name"] == "Decode.track_ms_per_token") & (df["impl"] == "engine")
                & (df["status"] == "ok")].copy()
        frames.append(df.assign(unit=unit, value=float(value)))
    return frames


@pytest.mark.parametrize("unit, base_value, head_value, verdict", [
    ("utilization_percent", 92, 40, "regression"),      # utilisation fell: worse, not better
    ("utilization_percent", 40, 92, "improvement"),
    ("ms_per_token", 0.0, 0.0, "ok"),                    # a zero BASE: no ZeroDivisionError
    ("ms_per_token", 0.0, 5.0, "regression"),            # from 0 ms to 5 ms: infinitely worse
    ("tokens_per_s", 50.0, 0.0, "regression"),           # tokens/s falling to 0
    ("tokens_per_s", 0.0, 50.0, "improvement"),
    ("bytes", 100.0, -1.0, "invalid value"),             # a negative byte count cannot be judged
    ("seconds", 1.0, math.inf, "regression"),
])
def test_direction_and_zeros(tiny, config, unit, base_value, head_value, verdict):
    base, head = track_frames(tiny, unit, base_value, head_value)
    (c,) = run_gate(base, head, config).judged
    assert c.verdict == verdict
    assert run_gate(base, head, config).failed == (verdict in ("regression", "invalid value"))


def test_unit_without_direction_is_an_error(tiny, config):
    base, head = track_frames(tiny, "percent", 92, 40)
    with pytest.raises(GateUsageError, match=r"unit 'percent' of bench_tiny.Decode.track_ms_per_"
                                             r"token has no direction .*reports/units.py"):
        run_gate(base, head, config)


def test_config_errors_name_the_file(tmp_path):
    assert load_config(ROOT / "reports" / "gate.toml")["perf"]["impls"] == ["engine"]
    bad = tmp_path / "bad.toml"
    bad.write_text(CONFIG.format(factor=1.1, override="", impls='["engine"]', missing="true",
                                 nothing="true").replace("alpha = 0.002\n", ""))
    with pytest.raises(GateUsageError, match=r"bad.toml: missing keys \['alpha'\] in \[perf\]"):
        load_config(bad)
    bad.write_text("[perf\n")
    with pytest.raises(GateUsageError, match="bad.toml: not valid TOML"):
        load_config(bad)
    with pytest.raises(GateUsageError, match="is a directory, not a gate config file"):
        load_config(tmp_path)


@pytest.mark.parametrize("edit, message", [
    ({"factor": '"1.1"'}, r"\[perf\] factor = '1.1' should be a number$"),
    ({"factor": "0.9"}, r"factor = 0.9 should be a number in \[1, inf\)"),
    ({"factor": "nan"}, r"factor = nan should be a number"),
    ({"alpha": "1"}, r"alpha = 1 should be a number in \(0, 1\)"),
    ({"min_samples": "2.5"}, r"min_samples = 2.5 should be an integer >= 2"),
    ({"rerun_rounds": "0"}, r"rerun_rounds = 0 should be an integer >= 1"),
    ({"confirm": '"yes"'}, r"confirm = 'yes' should be true or false"),
    ({"impls": '"engine"'}, r"impls = 'engine' should be a non-empty list of strings"),
    ({"impls": "[]"}, r"impls = \[\] should be a non-empty list of strings"),
    ({"fudge": "2"}, r"unknown keys \['fudge'\] in \[perf\]"),
    ({"override": '[{match = "x", factor = "2"}]'},
     r"\[perf.override #1\] factor = '2' should be a number"),
    ({"override": '[{factor = 2.0}]'}, r"missing keys \['match'\] in \[perf.override #1\]"),
    ({"max_abs_factor": '"1.5"'}, r"\[drift\] max_abs_factor = '1.5' should be a number"),
    ({"fail_on_missing_layer": "1"}, r"fail_on_missing_layer = 1 should be true or false"),
])
def test_every_config_value_is_checked_with_a_one_line_error(tmp_path, edit, message):
    import tomllib

    conf = tomllib.loads(write_config(tmp_path / "ok.toml").read_text())
    (key, value), = edit.items()
    section = "drift" if key in conf["drift"] else "perf"
    lines = []
    for name, table in conf.items():
        lines.append(f"[{name}]")
        table = dict(table)
        table.pop(key, None)
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
        if name == section:
            lines.append(f"{key} = {value}")
    bad = tmp_path / "bad.toml"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(GateUsageError, match=message) as err:
        load_config(bad)
    assert str(err.value).startswith(f"{bad}: ") and "\n" not in str(err.value)


# --- numerical drift ---------------------------------------------------------------------------

def verify_json(path, layers, passed=True):
    path.write_text(json.dumps({"layers": layers, "summary": {"passed": passed}}))
    return path


def layers(scale=1.0, cosine=0.9999999, passed=True):
    return [{"name": f"model.layers.{i}.mlp", "max_abs": 1e-5 * scale * (i + 1),
             "max_rel": 1e-4 * scale, "cosine": cosine, "nan": 0, "inf": 0, "passed": passed}
            for i in range(3)]


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


@pytest.mark.parametrize("metric, value", [
    ("max_abs", None), ("max_rel", None), ("cosine", None),   # how taper verify writes inf / NaN
    ("max_abs", math.inf), ("max_rel", math.nan), ("cosine", math.nan),
    ("nan", 4), ("inf", 1),                                    # non-finite values in the output
])
def test_non_finite_errors_fail(config, tmp_path, metric, value):
    base = verify_json(tmp_path / "base.json", layers())
    bad = layers()
    bad[1][metric] = value
    head = tmp_path / "head.json"
    head.write_text(json.dumps({"layers": bad, "summary": {"passed": True}}))  # NaN, Infinity
    found = compare_verify(base, head, config["drift"])
    assert [(d.layer, d.metric) for d in found] == [("model.layers.1.mlp", metric)]
    base_bad = verify_json(tmp_path / "bb.json", bad)  # already non-finite on BASE: still fails
    assert [d.metric for d in compare_verify(base_bad, head, config["drift"])
            if d.layer == "model.layers.1.mlp"] == ([metric] if metric not in COUNTS else [])


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
    # --rerun-cmd gets the regex of exactly the suspects; one that measures nothing is refused
    # (it used to "confirm" them with the first run's numbers).
    log = tmp_path / "bench.txt"
    capsys.readouterr()
    assert main(["gate", str(tiny["base"]), str(tiny["slow"]), *cfg, "--repo", str(tiny["repo"]),
                 "--rerun-cmd", f"printf '%s\\n' {{side}} {{commit}} {{bench}} {{results}} >> {log}"]) == 2
    side, commit, regex, results = log.read_text().splitlines()
    assert (side, commit, regex) == ("base", tiny["commit"], bench_regex(sorted(ENGINE_SLOW)))
    assert Path(results).is_absolute() and not Path(results).exists()  # fresh, then removed
    assert "round 1 of 2, BASE" in capsys.readouterr().err
    assert main(["gate", str(tmp_path / "nowhere"), str(tiny["aa"]), *cfg,
                 "--repo", str(tiny["repo"])]) == 2
    assert "'" + str(tmp_path / "nowhere") + "' is neither a results directory nor a git ref" \
        in capsys.readouterr().err
    assert main(["gate", str(tiny["base"]), str(tiny["aa"]), "--config", str(tmp_path)]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main(["gate", str(tiny["base"]), str(tiny["aa"]), *cfg, "--verify", str(bad),
                 str(bad)]) == 2
    assert "bad.json: not valid JSON" in capsys.readouterr().err


def test_cli_outside_a_git_checkout_says_what_to_do(tiny, cli_env, tmp_path, monkeypatch,
                                                    capsys):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert main(["gate", "main", "HEAD", "--config", str(cli_env)]) == 2
    err = capsys.readouterr().err
    assert "BASE 'main' is not a results directory, and" in err
    assert "is not inside a git checkout: run taper gate from your repository's checkout" in err
    assert len(err.strip().splitlines()) == 1
    # Results directories from elsewhere: a re-run cannot find their code here either.
    assert main(["gate", str(tiny["base"]), str(tiny["slow"]), "--config", str(cli_env)]) == 2
    err = capsys.readouterr().err
    assert f"measured at commit {tiny['commit'][:10]}" in err and "--no-rerun" in err


def test_cli_default_config_is_the_shipped_gate_toml(tiny, cli_env, tmp_path, monkeypatch,
                                                     capsys):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # no ./gate.toml here: reports/gate.toml is used
    assert main(["gate", str(tiny["base"]), str(tiny["slow"]), "--no-rerun"]) == 1
    out = capsys.readouterr().out
    assert "| 1.10x |" in out  # the shipped factor
    assert "track_roofline" not in out.split("<details>")[0]  # ignored by the shipped override


def test_cli_default_rerun_checks_out_each_sides_commit(tiny, cli_env, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(tiny["repo"], repo)
    harness().commit_slowdown(repo, 2)  # HEAD's code is 2x slower; BASE's is tiny["commit"]
    head = harness().run(repo, tiny["home"], tmp_path / "head", "tiny-cpu",
                         bench="time_matmul")
    args = ["gate", str(tiny["base"]), str(head), "--config", str(cli_env), "--repo",
            str(repo), "--machine", "tiny-cpu"]
    assert main(args + ["--markdown", str(tmp_path / "pr.md")]) == 1
    md = (tmp_path / "pr.md").read_text()
    assert "### Regressions (2)" in md and "re-run B/H/B/H" in md and "(24/24)" in md
    assert "Missing on HEAD" in md  # HEAD measured time_matmul only: the rest went missing


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
    assert "'engine', 'cpu', 'float32'" in out and "re-run B/H/B/H" in out
    assert harness().head(repo) in out or harness().head(repo)[:10] in out
    worktrees = harness().subprocess.run(["git", "worktree", "list"], cwd=repo, text=True,
                                         capture_output=True).stdout
    assert len(worktrees.strip().splitlines()) == 1  # the temporary worktrees are gone
