"""What a dashboard shows first: headline figures per model and device, a verdict per suite,
regressions since the previous commit, and notes on figures that contradict each other.

Everything here works on the wide table of reports.compare (one row per benchmark and parameter
set, every implementation side by side) or on the raw results frame.
"""
from __future__ import annotations

import fnmatch
import math
from pathlib import Path

import pandas as pd

from . import roles
from .units import known

# The headline metric of a model row: the first pattern (fnmatch on the benchmark name) that fits.
HEADLINES = [("*.Decode.track_tokens_per_s", "decode tokens/s"),
             ("*.Decode.track_ms_per_token", "decode tokens/s"),
             ("*.track_tokens_per_s", "tokens/s")]
# Test-size model presets: their speed says little about real models, and the dashboard says so.
TINY_MODELS = ["*:tiny", "tiny-*"]
# Benchmarks that time the same work in two ways (fnmatch patterns of one benchmark class): their
# ratios for one parameter set should agree, and the dashboard notes when they point opposite ways.
SAME_WORK = [("*.Decode.time_decode_step", "*.Decode.track_ms_per_token")]
DISAGREE = 1.2  # they disagree when one says >1.2x and the other <1/1.2x


def is_tiny(model) -> bool:
    return isinstance(model, str) and any(fnmatch.fnmatchcase(model, p) for p in TINY_MODELS)


def _rank(benchmark: str) -> int | None:
    for i, (pattern, _) in enumerate(HEADLINES):
        if fnmatch.fnmatchcase(benchmark, pattern):
            return i
    return None


def headline(benchmark: str) -> str | None:
    i = _rank(benchmark)
    return None if i is None else HEADLINES[i][1]


def models(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of the wide table that are a model's headline metric: per machine, suite and
    parameter set (model, device, dtype, ...) the benchmark of the first HEADLINES pattern."""
    if "model" not in table.columns:
        return table.iloc[0:0]
    rows = table[(table["model"] != "") & table["benchmark"].map(_rank).notna()]
    rows = rows.assign(metric=rows["benchmark"].map(headline), rank=rows["benchmark"].map(_rank))
    group = ["machine", "suite"] + params_of(rows)
    rows = rows.sort_values("rank", kind="stable").drop_duplicates(group, keep="first")
    return rows.drop(columns="rank").sort_index().reset_index(drop=True)


WIDE_COLS = ("machine", "commit", "env", "benchmark", "suite", "name", "kind", "unit", "impls",
             "value", "n", "ci", "ratios", "best", "ratio", "ratio_lo", "ratio_hi", "quick",
             "metric", "rank")


def params_of(table: pd.DataFrame) -> list[str]:
    """The parameter columns of a wide table (impl is folded into its dicts)."""
    return [c for c in table.columns if c not in WIDE_COLS]


def geomean(values) -> float:
    v = [x for x in values if isinstance(x, float) and math.isfinite(x) and x > 0]
    return math.exp(sum(map(math.log, v)) / len(v)) if v else math.nan


def suites(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (machine, suite, device): rows compared with the best other, the candidate's
    wins and losses (beyond 5%), the geometric mean ratio, and how many rows are single-sample."""
    out = []
    device = table["device"] if "device" in table.columns else pd.Series([""] * len(table))
    for (machine, suite, dev), g in table.groupby([table["machine"], table["suite"], device],
                                                  sort=True):
        r = g["ratio"].dropna()
        out.append({"machine": machine, "suite": suite, "device": dev, "rows": len(g),
                    "compared": len(r), "wins": int((r > 1.05).sum()),
                    "losses": int((r < 1 / 1.05).sum()), "geomean": geomean(list(r)),
                    "quick": int(g["quick"].sum())})
    return pd.DataFrame(out, columns=["machine", "suite", "device", "rows", "compared", "wins",
                                      "losses", "geomean", "quick"])


def disagreements(table: pd.DataFrame) -> list[str]:
    """SAME_WORK pairs whose ratios for one machine and parameter set point opposite ways."""
    params = params_of(table)
    notes = []
    for pat_a, pat_b in SAME_WORK:
        a_rows = table[table["benchmark"].map(lambda b: fnmatch.fnmatchcase(b, pat_a))]
        b_rows = table[table["benchmark"].map(lambda b: fnmatch.fnmatchcase(b, pat_b))]
        both = a_rows.merge(b_rows, on=["machine", "suite"] + params, suffixes=("_a", "_b"))
        for _, r in both.iterrows():
            ra, rb = r["ratio_a"], r["ratio_b"]
            if not (max(ra, rb) > DISAGREE and min(ra, rb) < 1 / DISAGREE):
                continue
            case = ", ".join(str(r[p]) for p in params if r[p] != "")
            n = max(max(r["n_a"].values()), max(r["n_b"].values()))
            notes.append(
                f"{r['machine']}: {r['name_a']} says {ra:.2f}x and {r['name_b']} says {rb:.2f}x "
                f"for the same case ({case}). Both time one decode step of the same model "
                f"against {r['best_a']}, so they should agree; "
                + ("with one sample each, at least one caught a warm-up or a busy moment: trust "
                   "neither until re-measured with samples." if n <= 1 else
                   "the difference is larger than their samples explain: look at both."))
    return notes


def regressions(results: pd.DataFrame, candidate: str = roles.CANDIDATE) -> dict:
    """{machine: (previous commit, newest commit, [Comparison])}: the gate's rule between the two
    newest commits of each machine (no re-run: a dashboard only reads results)."""
    from .gate import compare_runs, load_config

    perf = load_config(Path(__file__).parent / "gate.toml")["perf"] | {"impls": [candidate]}
    out = {}
    ok = results[results["unit"].map(known)]
    for machine, rows in ok.groupby("machine"):
        commits = rows.sort_values("date").drop_duplicates("commit", keep="last")["commit"]
        if len(commits) < 2:
            continue
        prev, new = commits.iloc[-2], commits.iloc[-1]
        found, _ = compare_runs(rows[rows["commit"] == prev], rows[rows["commit"] == new], perf)
        out[machine] = (prev, new, [c for c in found if c.verdict == "regression"])
    return out
