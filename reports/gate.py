"""The regression gate: is HEAD slower than BASE, or numerically worse, beyond gate.toml's limits?

For each benchmark and parameter set measured on both sides (the newest commit of each machine;
machines are matched by name, or the single machine of each side is paired):

1. change = HEAD/BASE (BASE/HEAD for rates such as tokens/s), so above 1 means HEAD is worse;
2. significance by asv's own rule (reports.stats.is_different): the Mann-Whitney U test on the raw
   samples when both sides have at least min_samples, else non-overlapping 99% CIs; a value
   without statistics (track_ benchmarks, or a single repeat) is judged by the factor alone, as
   `asv compare` does;
3. a suspect is change > factor and significant; suspects are measured once more through the
   `rerun` hook, and only those still suspect on the fresh numbers are regressions.

A benchmark that ran on BASE and fails on HEAD is "broken" (fails with fail_on_broken). Numerical
drift comes from reports.drift. Exit code: 0 pass, 1 regression, broken or drift, 2 usage error.
"""
from __future__ import annotations

import fnmatch
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import stats
from .compare import to_markdown
from .drift import DRIFT_KEYS, Drift
from .results import latest
from .units import higher_is_better, human

PERF_KEYS = {"factor", "alpha", "min_samples", "confirm", "fail_on_broken"}
OVERRIDE_KEYS = {"match", "factor", "alpha", "min_samples", "ignore"}
KEY = ["machine", "benchmark", "params_repr"]


class GateUsageError(ValueError):
    """Bad configuration or inputs (exit code 2); the message names the file or argument."""


def _check_table(path, where, table, required, allowed):
    if not isinstance(table, dict):
        raise GateUsageError(f"{path}: [{where}] should be a table")
    unknown = set(table) - allowed
    if unknown:
        raise GateUsageError(f"{path}: unknown keys {sorted(unknown)} in [{where}]; "
                             f"allowed: {sorted(allowed)}")
    missing = required - set(table)
    if missing:
        raise GateUsageError(f"{path}: missing keys {sorted(missing)} in [{where}]")


def load_config(path) -> dict:
    """Read and check gate.toml: [perf] (+ [[perf.override]]) and [drift] (+ [[drift.override]])."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            conf = tomllib.load(f)
    except OSError as e:
        raise GateUsageError(f"{path}: cannot read gate config ({e.strerror})") from e
    except tomllib.TOMLDecodeError as e:
        raise GateUsageError(f"{path}: not valid TOML ({e})") from e
    for section, keys in (("perf", PERF_KEYS), ("drift", DRIFT_KEYS)):
        table = conf.get(section)
        _check_table(path, section, table, keys, keys | {"override"})
        over_keys = OVERRIDE_KEYS if section == "perf" else DRIFT_KEYS | {"match"}
        for i, over in enumerate(table.get("override", [])):
            _check_table(path, f"{section}.override #{i + 1}", over, {"match"}, over_keys)
    unknown = set(conf) - {"perf", "drift"}
    if unknown:
        raise GateUsageError(f"{path}: unknown sections {sorted(unknown)}")
    return conf


def settings_for(perf: dict, benchmark: str) -> dict:
    """The [perf] settings with the first matching [[perf.override]] applied."""
    out = {k: perf[k] for k in PERF_KEYS} | {"ignore": False}
    for over in perf.get("override", []):
        if fnmatch.fnmatchcase(benchmark, over["match"]):
            return out | {k: v for k, v in over.items() if k != "match"}
    return out


@dataclass
class Comparison:
    machine: str
    benchmark: str
    params: str
    unit: str
    base: float
    head: float
    change: float  # above 1: HEAD worse
    verdict: str  # regression, unconfirmed, improvement, not significant, ok, broken, ...
    test: str
    factor: float = math.nan


def _stats(row, side) -> dict | None:
    lo, hi, rep = row[f"ci_lo_{side}"], row[f"ci_hi_{side}"], row[f"repeat_{side}"]
    if any(isinstance(x, float) and math.isnan(x) for x in (lo, hi)):
        return None
    return {"ci_99_a": lo, "ci_99_b": hi, "repeat": rep}


def _samples(row, side, min_samples):
    s = row[f"samples_{side}"]
    if not isinstance(s, list):
        return None
    s = [x for x in s if x is not None and not math.isnan(x)]
    return s if len(s) >= min_samples else None


def judge(row, s) -> tuple[str, float, str]:
    """(verdict, change, test description) for one merged base/head row."""
    base, head, unit = row["value_base"], row["value_head"], row["unit_head"]
    change = base / head if higher_is_better(unit) else head / base
    sa, sb = _stats(row, "base"), _stats(row, "head")
    if sa is None or sb is None or sa["repeat"] == 1 or sb["repeat"] == 1:
        significant, test = True, "factor only (no statistics)"
    else:
        xa, xb = _samples(row, "base", s["min_samples"]), _samples(row, "head", s["min_samples"])
        significant = bool(stats.is_different(xa, xb, sa, sb, s["alpha"]))
        if xa and xb and 1 / math.comb(len(xa) + len(xb), min(len(xa), len(xb))) < s["alpha"]:
            test = f"Mann-Whitney U p={stats.mann_whitney_u(xa, xb)[1]:.2g} ({len(xa)}/{len(xb)})"
        else:
            test = "99% CIs " + ("apart" if significant else "overlap")
    if change > s["factor"] and significant:
        return "regression", change, test
    if change < 1 / s["factor"] and significant:
        return "improvement", change, test
    if change > s["factor"]:
        return "not significant", change, test
    return "ok", change, test


def _align(base: pd.DataFrame, head: pd.DataFrame):
    """Newest commit per machine on each side, merged on (machine, benchmark, params)."""
    base, head = latest(base), latest(head)
    common = set(base["machine"]) & set(head["machine"])
    note = ""
    if common:
        base, head = base[base["machine"].isin(common)], head[head["machine"].isin(common)]
    elif base["machine"].nunique() == 1 and head["machine"].nunique() == 1:
        note = (f"BASE machine {base['machine'].iloc[0]!r} compared with HEAD machine "
                f"{head['machine'].iloc[0]!r}")
        head = head.assign(machine=base["machine"].iloc[0])
    else:
        raise GateUsageError(f"BASE machines {sorted(set(base['machine']))} and HEAD machines "
                             f"{sorted(set(head['machine']))} have none in common")
    for name, side in (("BASE", base), ("HEAD", head)):
        if side.duplicated(KEY).any():
            envs = ", ".join(sorted(set(side["env"])))
            note += f"{'; ' if note else ''}{name} has several asv environments ({envs}): the " \
                    "newest measurement of each benchmark is used"
    base, head = (side.sort_values("started_at").drop_duplicates(KEY, keep="last")
                  for side in (base, head))
    merged = base.merge(head, on=KEY, how="outer", suffixes=("_base", "_head"), indicator=True)
    return merged, note, base, head


def compare_runs(base: pd.DataFrame, head: pd.DataFrame, perf: dict):
    """All comparisons between two results frames; returns (list of Comparison, note)."""
    merged, note, _, _ = _align(base, head)
    out = []
    for _, row in merged.iterrows():
        s = settings_for(perf, row["benchmark"])
        unit = row["unit_head"] if isinstance(row.get("unit_head"), str) else row["unit_base"]
        c = Comparison(row["machine"], row["benchmark"], row["params_repr"], unit,
                       row.get("value_base", math.nan), row.get("value_head", math.nan),
                       math.nan, "", "", s["factor"])
        if s["ignore"]:
            c.verdict = "ignored"
        elif row["_merge"] == "right_only":
            c.verdict = "new on head"
        elif row["_merge"] == "left_only":
            c.verdict = "missing on head"
        elif row["status_base"] != "ok":
            c.verdict = f"{row['status_base']} on base"
        elif row["status_head"] == "failed":
            c.verdict = "broken"
        elif row["status_head"] != "ok":
            c.verdict = "skipped on head"
        else:
            c.verdict, c.change, c.test = judge(row, s)
        out.append(c)
    return out, note


@dataclass
class GateResult:
    comparisons: list
    drift: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    fail_on_broken: bool = True
    labels: tuple = ("BASE", "HEAD")

    def by(self, *verdicts):
        return [c for c in self.comparisons if c.verdict in verdicts]

    @property
    def failed(self) -> bool:
        broken = self.by("broken") if self.fail_on_broken else []
        return bool(self.by("regression") or broken or self.drift)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def markdown(self) -> str:
        """A summary fit for a pull-request comment."""
        judged = [c for c in self.comparisons if not math.isnan(c.change)]
        lines = [f"## Taper gate: {'FAIL' if self.failed else 'PASS'}", "",
                 f"{self.labels[0]} vs {self.labels[1]}: {len(judged)} benchmark results compared "
                 f"(significance by {stats.IMPLEMENTATION}).", ""]
        lines += [f"- {n}" for n in self.notes] + ([""] if self.notes else [])
        sections = [("Regressions", ("regression",)), ("Broken on HEAD", ("broken",)),
                    ("Slower but not confirmed by the re-run", ("unconfirmed",)),
                    ("Slower but not significant", ("not significant",)),
                    ("Improvements", ("improvement",))]
        for title, verdicts in sections:
            rows = self.by(*verdicts)
            if rows:
                lines += [f"### {title} ({len(rows)})", "", to_markdown(_table(rows)), ""]
        if self.drift:
            lines += [f"### Numerical drift ({len(self.drift)})", "", to_markdown(pd.DataFrame(
                [{"report": d.report, "layer": d.layer, "metric": d.metric, "base": d.base,
                  "head": d.head, "limit": d.limit} for d in self.drift])), ""]
        other = [c for c in self.comparisons if math.isnan(c.change) and c.verdict not in
                 ("broken", "ignored")]
        if other:
            lines += [f"{len(other)} results not compared: " + ", ".join(
                f"{v} {sum(c.verdict == v for c in other)}" for v in dict.fromkeys(
                    c.verdict for c in other)) + ".", ""]
        if judged:
            lines += ["<details><summary>All comparisons</summary>", "",
                      to_markdown(_table(judged)), "", "</details>", ""]
        return "\n".join(lines)


def _change(change: float) -> str:
    if math.isnan(change):
        return "—"
    if change >= 1.005:
        return f"{change:.2f}x worse"
    return f"{1 / change:.2f}x better" if change <= 1 / 1.005 else "same"


def _table(rows) -> pd.DataFrame:
    return pd.DataFrame([{
        "machine": c.machine, "benchmark": c.benchmark, "params": c.params,
        "base": human(c.base, c.unit), "head": human(c.head, c.unit),
        "change": _change(c.change), "limit": f"{c.factor:.2f}x", "test": c.test,
        "verdict": c.verdict} for c in rows])


def run_gate(base: pd.DataFrame, head: pd.DataFrame, config: dict, *, rerun=None,
             drift: list[Drift] = (), labels=("BASE", "HEAD")) -> GateResult:
    """Judge HEAD against BASE; `rerun(suspects)` re-measures suspects and returns fresh HEAD
    results (a frame like load_results'); suspects is a list of (machine, benchmark, params)."""
    perf = config["perf"]
    comparisons, note = compare_runs(base, head, perf)
    result = GateResult(comparisons, list(drift), [note] if note else [],
                        perf["fail_on_broken"], labels)
    suspects = [c for c in comparisons if c.verdict == "regression"
                and settings_for(perf, c.benchmark)["confirm"]]
    if suspects and rerun is not None:
        fresh = rerun([(c.machine, c.benchmark, c.params) for c in suspects])
        again, _ = compare_runs(base, fresh, perf)
        again = {(c.machine, c.benchmark, c.params): c for c in again}
        for c in suspects:
            new = again.get((c.machine, c.benchmark, c.params))
            if new is None or new.verdict != "regression":
                c.verdict = "unconfirmed"
                c.test += "; re-run: " + (f"{new.change:.2f}x, {new.verdict}" if new else "absent")
            else:
                c.test += f"; re-run: {new.change:.2f}x, {new.test}"
        result.notes.append(f"{len(suspects)} suspects re-run once; "
                            f"{len(result.by('regression'))} confirmed")
    elif suspects:
        result.notes.append(f"{len(suspects)} suspects were not re-run (re-run disabled)")
    return result
