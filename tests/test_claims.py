"""`taper claims --quick` gives every claim a verdict or a reason; the verdict rule itself."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reports.claims import BY_KEY, CLAIMS, TOLERANCE, Measurement, evaluate, table, verdict

ROOT = Path(__file__).resolve().parents[1]
VERDICTS = ("holds", "does not hold")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("claims") / "claims.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "taper.cli", "claims", "--quick", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return proc, json.loads(out.read_text()) if out.exists() else None


def test_quick_claims_every_claim_gets_a_verdict_or_a_reason(quick_run):
    proc, data = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = data["claims"]
    assert [r["key"] for r in rows] == [c.key for c in CLAIMS]
    for r in rows:
        v = r["verdict"]
        if v in VERDICTS:
            assert r["engine"] > 0 and r["torch"] > 0 and r["measured_change"] is not None, r
            assert r["workload"] and r["device"], r
        else:
            assert v.startswith("not measurable here (") and v.endswith(")") and len(v) > 30, r
            assert r["reason"], r
    # the table names each claim, what was claimed, what was measured and the verdict
    for r in rows:
        assert r["claim"] in proc.stdout and r["verdict"][:20] in proc.stdout
    assert "verdict rule" in proc.stdout
    assert data["environment"]["num_cpu"] and data["quick"] is True


def test_quick_claims_measure_the_cpu_claims_here(quick_run):
    _, data = quick_run
    rows = {r["key"]: r for r in data["claims"]}
    for key in ("load", "memory", "cpu_inference", "alloc"):
        assert rows[key]["verdict"] in VERDICTS, rows[key]
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        for key in ("llama7b", "gpu_util"):
            assert "GPU" in rows[key]["reason"], rows[key]


def test_verdict_rule():
    load = BY_KEY["load"]  # claimed -65.6%: lower is better
    edge = 1 + load.claimed_change * (1 - TOLERANCE)
    assert verdict(load, Measurement("load", 1.0, 3.2))["verdict"] == "holds"
    assert verdict(load, Measurement("load", edge * 1.01, 1.0))["verdict"] == "does not hold"
    assert verdict(load, Measurement("load", edge * 0.99, 1.0))["verdict"] == "holds"
    assert verdict(load, Measurement("load", 2.0, 1.0))["verdict"] == "does not hold"  # the other way
    tps = BY_KEY["llama7b"]  # claimed 22.7 vs 18.2: higher is better
    assert verdict(tps, Measurement("llama7b", 22.7, 18.2))["verdict"] == "holds"
    assert verdict(tps, Measurement("llama7b", 18.2, 18.2))["verdict"] == "does not hold"
    r = verdict(tps, Measurement("llama7b", reason="needs a GPU"))
    assert r["verdict"] == "not measurable here (needs a GPU)" and r["measured_change"] is None
    assert verdict(tps, Measurement("llama7b", None, 3.0))["verdict"].startswith("not measurable here")


def test_evaluate_fills_unmeasured_claims_and_renders():
    rows = evaluate([Measurement("alloc", 4e6, 1e6, "cpu", "small tensors")])
    assert len(rows) == len(CLAIMS)
    alloc = next(r for r in rows if r["key"] == "alloc")
    assert alloc["verdict"] == "holds" and alloc["measured"].endswith("(+300.0%)")
    assert all(r["verdict"].startswith("not measurable here (not measured") for r in rows if r["key"] != "alloc")
    md = table(rows, markdown=True)
    assert md.count("\n") == len(CLAIMS) + 1 and "| claim |" in md


def test_claims_decode_warms_the_timed_shape(monkeypatch):
    """The models workload warms up at the shape it times: one decoder (one capture) serves the
    warm-up, the timed prefill and every timed step."""
    import engine.generation
    import impls
    from bench.claims import _decode_models

    built = []

    class Counted(engine.generation.Decoder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)
    monkeypatch.setattr(engine.generation, "Decoder", Counted)
    monkeypatch.setenv("TAPER_ENGINE_CAPTURE", "0")  # the planned step (the cpu's default is plain)
    build, prefill, tok, step, crop = _decode_models(impls.get("engine"), {"model": "llama:tiny", "prompt_len": 8,
                                                                           "new_tokens": 4})
    assert len(built) == 1 and built[0].step_fn.calls >= 3  # captured (planned on the cpu) before timing
    assert built[0].count == 1 and built[0].max_len == 8 + 4 + 1  # the timed prefill ran at the timed shape
    step(tok)
    crop()
    for _ in range(4):
        assert step(tok) == tok
    assert len(built) == 1 and built[0].count == 5
