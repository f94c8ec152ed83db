"""The numerical-drift half of scripts/gate_evidence.py: planted faults in one layer of an engine
model, judged by the real drift check of the gate (reports.drift with gate.toml's [drift]).

A tiny transformers Llama (random weights, seeded) is ported to the engine (migration.port_hf) and
verified against transformers (migration.verify_hf, the code behind `taper verify`); the parity
report is written as `taper verify --json` writes it. BASE is the faithful port. Each HEAD plants
one fault in the engine copy only, in one weight at a time (every weight of the model in turn):

- ``rel1e-3``: the weight multiplied by 1 + 1e-3, a 1e-3 relative error in that layer's output;
- ``nan``: one element of the weight set to NaN.

A/A: the faithful port verified again in a fresh port, compared with BASE. Everything here is
deterministic on a CPU (no timing), so each figure is a count, not a rate under noise.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

CONFIG = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
PLANTS = {"rel1e-3": "weight x (1 + 1e-3)", "nan": "one weight element set to NaN"}


def _reference():
    import torch
    import transformers

    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).eval()


def _report(tm, plant=None) -> dict:
    """One `taper verify` parity report (as its JSON) of a fresh port, with `plant` applied."""
    import numpy as np

    import engine
    from migration.port import port_hf
    from migration.verify import verify_hf

    em = port_hf(tm).model
    if plant:
        name, kind = plant
        p = dict(em.named_parameters())[name]
        a = p.numpy().copy()
        if kind == "rel1e-3":
            a = a * np.float32(1 + 1e-3)
        else:
            a.flat[a.size // 2] = np.nan
        p.copy_(engine.tensor(a, dtype=p.dtype))
    rep = verify_hf(tm, engine_model=em, batch=1, seq_len=8)
    return json.loads(rep.to_json())


def weight_names(limit=None) -> list[str]:
    from migration.port import port_hf

    names = [n for n, _ in port_hf(_reference()).model.named_parameters()]
    return names[:limit] if limit else names


def run(config: dict, kinds=tuple(PLANTS), limit=None, aa_pairs: int = 3) -> dict:
    """Plant each kind in each weight (the first `limit` weights); judge with config["drift"]."""
    from reports.drift import compare_verify

    t0 = time.perf_counter()
    tm = _reference()
    names = weight_names(limit)
    tol = config["drift"]
    with tempfile.TemporaryDirectory(prefix="taper-drift-evidence-") as tmp:
        base = Path(tmp) / "base.json"
        base.write_text(json.dumps(_report(tm)))

        def judge(plant, label):
            head = Path(tmp) / f"{label}.json"
            head.write_text(json.dumps(_report(tm, plant)))
            found = compare_verify(base, head, tol)
            return {"plant": label, "weight": plant[0] if plant else None,
                    "kind": plant[1] if plant else "aa", "detected": bool(found),
                    "findings": [[d.layer, d.metric, d.base, d.head, d.limit]
                                 for d in found[:6]], "n_findings": len(found)}

        aa = [judge(None, f"aa{i}") for i in range(aa_pairs)]
        planted = {k: [judge((n, k), f"{k}-{n}") for n in names] for k in kinds}
        base_layers = json.loads(base.read_text())["layers"]
    out = {"model": "transformers LlamaForCausalLM " + json.dumps(CONFIG),
           "plants": {k: PLANTS[k] for k in kinds}, "weights": names,
           "base_max_rel": max(x["max_rel"] for x in base_layers if x["max_rel"] is not None),
           "aa": aa, "planted": planted, "seconds": round(time.perf_counter() - t0, 1)}
    out["summary"] = {
        "aa": {"pairs": len(aa), "failed": sum(r["detected"] for r in aa)},
        **{k: {"plants": len(v), "detected": sum(r["detected"] for r in v),
               "missed": [r["weight"] for r in v if not r["detected"]],
               "caught_by": sorted({f[1] for r in v for f in r["findings"]})}
           for k, v in planted.items()}}
    return out


def readme_lines(drift: dict) -> list[str]:
    s = drift["summary"]
    lines = ["## Numerical drift", "",
             f"Model: {drift['model']}, ported to the engine and verified against transformers "
             "(`migration.verify_hf`, what `taper verify --json` writes). BASE: the faithful "
             f"port (largest per-layer max_rel {drift['base_max_rel']:.2g}). Each HEAD plants "
             "one fault in one engine "
             "weight; every weight of the model is planted in turn. Judged by "
             "`reports.drift.compare_verify` with the [drift] tolerances of the config. "
             f"Deterministic on the CPU; {drift['seconds']:.0f} s.",
             "", "| scenario | plants | drift found | missed | caught by |", "|---|---|---|---|---|",
             f"| A/A (the faithful port verified again) | {s['aa']['pairs']} | "
             f"{s['aa']['failed']} (false positives) | | |"]
    for kind, what in drift["plants"].items():
        r = s[kind]
        lines.append(f"| {what} | {r['plants']} | {r['detected']}/{r['plants']} | "
                     f"{', '.join(r['missed']) or 'none'} | {', '.join(r['caught_by'])} |")
    return lines + [""]
