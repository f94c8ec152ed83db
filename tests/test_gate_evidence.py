"""scripts/gate_evidence.py in its tiny mode: real asv runs, the real gate and config, 2 A/A pairs
and one pair with a planted 25% slowdown; the output files have the documented structure."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("asv")
pytest.importorskip("pandas")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gate_evidence.py"
PLANTED = "bench_evidence.Planted.time_compute"


def test_tiny_evidence_run(tmp_path):
    out = tmp_path / "gate"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--aa-pairs", "2", "--planted-pairs", "1", "--levels",
         "1.25", "--targets", "compute", "--only-evidence-bench", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "gate_evidence.json").read_text())
    assert {"generated", "command", "machine", "config", "suite", "timing", "load", "summary",
            "pairs"} <= set(data)
    perf = data["config"]["perf"]
    assert {"factor", "alpha", "min_samples", "confirm", "fail_on_broken"} <= set(perf)
    assert data["machine"]["num_cpu"] >= 1 and data["timing"]["asv_runs"] >= 4

    aa = [p for p in data["pairs"] if p["scenario"] == "aa"]
    assert len(aa) == 2 and data["summary"]["aa"]["pairs"] == 2
    for p in aa:  # same code on both sides: the gate passes
        assert p["exit_code"] == 0 and p["regressions"] == []
        names = {c["benchmark"] for c in p["comparisons"]}
        assert names == {PLANTED, "bench_evidence.Planted.time_sleep"}
        for c in p["comparisons"]:
            assert c["verdict"] in ("ok", "improvement", "not significant")
            assert c["test"].startswith("Mann-Whitney U")
            assert len(c["samples_ms_base"]) == len(c["samples_ms_head"]) == 24
    assert data["summary"]["aa"]["false_positive_rate"] == 0

    planted = [p for p in data["pairs"] if p["scenario"] == "compute@1.25"]
    assert len(planted) == 1
    (row,) = [c for c in planted[0]["comparisons"] if c["benchmark"] == PLANTED]
    assert row["change"] > 1.0  # 25% more work measures slower (detection is the full run's job)
    r = data["summary"]["planted"]["compute"]["1.25"]
    assert r["pairs"] == 1 and r["detected"] in (0, 1) and r["planted_slowdown"] == 1.25
    if row["suspect"]:  # a suspect was re-measured once by asv
        assert len(planted[0]["reruns"]) == 1 and "; re-run: " in row["test"]

    md = (out / "README.md").read_text()
    assert md.startswith("# Gate evidence") and "## Figures" in md and "## Reading" in md
    assert f"factor = {perf['factor']}" in md and "A/A false positives 0/2" in md
