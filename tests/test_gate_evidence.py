"""scripts/gate_evidence.py in its tiny mode: real asv runs, the real gate and config, one A/A pair,
one pair with a planted 3x sleep, planted numerical drift in two weights; the output files have the
documented structure.

This test checks the mechanism only (what was measured, from which code, judged how, written where),
never how fast anything ran: timing belongs to the evidence run itself (measurements/gate/).
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("asv")
pytest.importorskip("pandas")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gate_evidence.py"
PLANTED = "bench_evidence.Planted.time_sleep"
VERDICTS = {"ok", "improvement", "not significant", "regression", "unconfirmed"}


@pytest.fixture(scope="module")
def evidence(tmp_path_factory):
    out = tmp_path_factory.mktemp("gate")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--aa-pairs", "1", "--planted-pairs", "1", "--levels", "3",
         "--targets", "sleep", "--only-evidence-bench", "--drift-weights", "2", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out, json.loads((out / "gate_evidence.json").read_text())


def test_structure_and_config(evidence):
    _, data = evidence
    assert {"generated", "command", "machine", "config", "suite", "timing", "load", "summary",
            "pairs", "drift"} <= set(data)
    assert set(data["config"]["perf"]) >= {"impls", "factor", "alpha", "min_samples", "confirm",
                                           "rerun_rounds", "fail_on_missing"}
    assert data["machine"]["num_cpu"] >= 1 and data["timing"]["asv_runs"] >= 4
    assert [p["scenario"] for p in data["pairs"]].count("aa") == 1


def test_each_side_measures_its_own_code(evidence):
    _, data = evidence
    for p in data["pairs"]:
        planted = 3.0 if p["scenario"] == "sleep@3.00" else 1.0
        assert p["planted"] == {"COMPUTE": 1.0, "SLEEP": planted}  # read back from HEAD's commit
        assert sorted(p["order"]) == ["base", "head"]
        for c in p["comparisons"]:
            assert c["verdict"] in VERDICTS and c["samples"] == [24, 24]
            assert c["test"].startswith("Mann-Whitney U")  # 24 a side: asv's U test applies
            assert len(c["samples_ms_base"]) == len(c["samples_ms_head"]) == 24
        assert (p["exit_code"] == 1) == bool(p["regressions"]) == bool(p["reasons"])


def test_rerun_measures_both_sides_interleaved_into_fresh_directories(evidence):
    _, data = evidence
    for p in data["pairs"]:
        suspects = [c for c in p["comparisons"] if c["suspect"]]
        calls = p["rerun"]["calls"]
        if not suspects:  # nothing to confirm: nothing re-measured
            assert calls == []
            continue
        assert [c["side"] for c in calls] == ["base", "head", "base", "head"]
        assert len({c["fresh_dir"] for c in calls}) == 4
        assert all(v == [48, 48] for v in p["rerun"]["samples"].values())  # two rounds pooled
        assert all("re-run B/H/B/H" in c["test"] for c in suspects)


def test_summary_counts_the_pairs(evidence):
    _, data = evidence
    s = data["summary"]
    aa = [p for p in data["pairs"] if p["scenario"] == "aa"]
    assert s["aa"]["failed_pairs"] == sum(p["exit_code"] != 0 for p in aa)
    r = s["planted"]["sleep"]["3.00"]
    planted = [p for p in data["pairs"] if p["scenario"] == "sleep@3.00"]
    assert r["pairs"] == 1 and r["planted_slowdown"] == 3.0
    assert r["detected"] == sum(any(c["verdict"] == "regression" and c["benchmark"] == PLANTED
                                    for c in p["comparisons"]) for p in planted)


def test_planted_drift_is_judged_by_the_gate(evidence):
    _, data = evidence
    drift = data["drift"]  # deterministic numerics: exact facts, no timing
    assert drift["weights"] == ["model.embed_tokens.weight",
                                "model.layers.0.self_attn.q_proj.weight"]
    assert drift["summary"]["aa"] == {"pairs": 3, "failed": 0}
    assert drift["summary"]["rel1e-3"]["detected"] == 2
    (nan_q,) = [r for r in drift["planted"]["nan"] if "q_proj" in r["weight"]]
    assert nan_q["detected"] and {f[1] for f in nan_q["findings"]} >= {"max_abs", "max_rel"}


def test_readme(evidence):
    out, data = evidence
    md = (out / "README.md").read_text()
    assert md.startswith("# Gate evidence") and "## Figures" in md and "## Reading" in md
    assert "## Numerical drift" in md and "shared with other agents" in md
    assert f"factor = {data['config']['perf']['factor']}" in md
