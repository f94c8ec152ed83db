"""The regression gate: is HEAD slower than BASE, or numerically worse, beyond gate.toml's limits?

For each benchmark and parameter set of a gated implementation ([perf] impls; rows without an
``impl`` parameter are always gated) measured on both sides (the newest commit of each machine;
machines are matched by name, or the single machine of each side is paired):

1. change = how many times worse HEAD is (reports.units.worse_by: the direction comes from the
   unit, a unit without one is an error; zeros are handled);
2. significance by asv's own rule (reports.stats.is_different): the Mann-Whitney U test on the raw
   samples when both sides have at least min_samples and enough of them for p to reach alpha,
   else non-overlapping 99% CIs; a value without statistics (track_ benchmarks, a single repeat)
   is judged by the factor alone, as `asv compare` does;
3. a suspect is change > factor and significant. With confirm, suspects are measured again,
   BASE and HEAD interleaved (A/B/A/B for rerun_rounds = 2) by the same `measure` callback, each
   round into a fresh empty directory that must then hold a new result (started after the round
   began) of every suspect; the rounds' samples are pooled per side and judged again. Only a
   suspect still a regression on the fresh, pooled numbers, and slower than the factor in every
   round on its own (HEAD against the BASE run just before it), fails the gate: the box's load
   changes from one run to the next, and one unlucky run must not confirm a regression.

The gate fails on a regression, on a benchmark that ran on BASE and fails on HEAD (fail_on_broken),
on one that ran on BASE and is missing or skipped on HEAD (fail_on_missing), on a value that cannot
be judged (negative or NaN), when nothing at all was compared (fail_on_nothing_compared), and on
numerical drift (reports.drift). Exit code: 0 pass, 1 fail, 2 usage error.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import stats
from .compare import to_markdown
from .drift import Drift
from .gateconfig import PERF_KEYS, GateUsageError, first_match, load_config  # noqa: F401
from .results import ResultsError, latest, load_results
from .units import UnitError, direction, human, worse_by

KEY = ["machine", "benchmark", "params_repr"]
FAILING = ("regression", "broken", "missing on head", "invalid value")


class RerunError(RuntimeError):
    """The confirming re-run did not produce new measurements; the message says which and where."""


def settings_for(perf: dict, benchmark: str) -> dict:
    """The [perf] settings with the first matching [[perf.override]] applied."""
    out = {k: perf[k] for k in PERF_KEYS} | {"ignore": False}
    return out | first_match(perf.get("override", []), benchmark)


def is_gated(impl, patterns) -> bool:
    """Rows without an impl parameter are gated; others when their impl matches a pattern."""
    import fnmatch

    if impl is None or (isinstance(impl, float) and math.isnan(impl)) or impl == "":
        return True
    return any(fnmatch.fnmatchcase(str(impl), p) for p in patterns)


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
    samples: tuple = (0, 0)  # samples on (BASE, HEAD)
    rounds: list = field(default_factory=list)  # the re-run's change in each B/H round


def _samples(row, side, min_samples):
    s = row.get(f"samples_{side}")
    if not isinstance(s, list):
        return None
    s = [x for x in s if x is not None and not math.isnan(x)]
    return s if len(s) >= min_samples else None


def _ci(row, side):
    lo, hi, rep = row[f"ci_lo_{side}"], row[f"ci_hi_{side}"], row[f"repeat_{side}"]
    if rep == 1 or not all(isinstance(x, float) and math.isfinite(x) for x in (lo, hi)):
        return None
    return {"ci_99_a": lo, "ci_99_b": hi}


def judge(row, s) -> tuple[str, float, str]:
    """(verdict, change, test description) for one merged base/head row."""
    base, head, unit = row["value_base"], row["value_head"], row["unit_head"]
    change = worse_by(base, head, unit)
    if math.isnan(change):
        return "invalid value", change, f"cannot compare {base!r} with {head!r}"
    xa, xb = _samples(row, "base", s["min_samples"]), _samples(row, "head", s["min_samples"])
    ca, cb = _ci(row, "base"), _ci(row, "head")
    if xa and xb and 1 / math.comb(len(xa) + len(xb), min(len(xa), len(xb))) < s["alpha"]:
        p = stats.mann_whitney_u(xa, xb)[1]
        significant, test = p < s["alpha"], f"Mann-Whitney U p={p:.2g} ({len(xa)}/{len(xb)})"
    elif ca and cb:
        significant = bool(stats.is_different(None, None, ca, cb, s["alpha"]))
        test = "99% CIs " + ("apart" if significant else "overlap")
    else:
        significant, test = True, "factor only (no statistics)"
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
    return merged, note


def _n(row, side) -> int:
    s, rep = row.get(f"samples_{side}"), row.get(f"repeat_{side}")
    if isinstance(s, list):
        return len(s)
    if row.get(f"status_{side}") != "ok":
        return 0
    return int(rep) if isinstance(rep, (int, float)) and math.isfinite(rep) else 1


def compare_runs(base: pd.DataFrame, head: pd.DataFrame, perf: dict):
    """All comparisons between two results frames; returns (list of Comparison, note).

    Raises GateUsageError naming every compared benchmark whose unit has no direction."""
    merged, note = _align(base, head)
    out, no_direction = [], []
    for _, row in merged.iterrows():
        s = settings_for(perf, row["benchmark"])
        unit = row["unit_head"] if isinstance(row.get("unit_head"), str) else row["unit_base"]
        impl = row.get("impl_head") if row["_merge"] != "left_only" else row.get("impl_base")
        c = Comparison(row["machine"], row["benchmark"], row["params_repr"], unit,
                       row.get("value_base", math.nan), row.get("value_head", math.nan),
                       math.nan, "", "", s["factor"], (_n(row, "base"), _n(row, "head")))
        base_ok = row["_merge"] != "right_only" and row["status_base"] == "ok"
        if s["ignore"]:
            c.verdict = "ignored"
        elif not is_gated(impl, perf["impls"]):
            c.verdict = "not gated"
        elif row["_merge"] == "right_only":
            c.verdict = "new on head"
        elif not base_ok:
            c.verdict = f"{row['status_base']} on base"
        elif row["_merge"] == "left_only" or row["status_head"] == "skipped":
            c.verdict = "missing on head"
        elif row["status_head"] == "failed":
            c.verdict = "broken"
        else:
            try:
                direction(unit, row["benchmark"])
            except UnitError as e:
                no_direction.append(str(e))
                continue
            c.verdict, c.change, c.test = judge(row, s)
        out.append(c)
    if no_direction:
        raise GateUsageError("; ".join(dict.fromkeys(no_direction)))
    return out, note


def pool(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Rows of several rounds of the same code as one: samples concatenated, value = their median
    (of the rounds' values for track_ benchmarks), confidence intervals dropped (the U test on the
    pooled samples decides, or the factor alone)."""
    df = pd.concat(frames, ignore_index=True)
    out = []
    for _, g in df.groupby(["benchmark", "params_repr"], sort=False):
        row = g.iloc[-1].copy()
        ok = g[g["status"] == "ok"]
        if len(ok):
            samples = [x for s in ok["samples"] if isinstance(s, list) for x in s]
            row["samples"] = samples or None
            row["value"] = float(pd.Series(samples or list(ok["value"])).median())
            row["repeat"] = len(samples) or len(ok)
            row["status"] = "ok"
            row[["ci_lo", "ci_hi"]] = math.nan
        row["started_at"] = g["started_at"].max()
        out.append(row)
    return pd.DataFrame(out).reset_index(drop=True)


@dataclass
class GateResult:
    comparisons: list
    drift: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    perf: dict = field(default_factory=dict)
    labels: tuple = ("BASE", "HEAD")
    rerun: dict | None = None  # what the confirming re-run measured (rounds, dirs, samples)

    def by(self, *verdicts):
        return [c for c in self.comparisons if c.verdict in verdicts]

    @property
    def judged(self) -> list:
        return [c for c in self.comparisons if not math.isnan(c.change)
                or c.verdict == "invalid value"]

    @property
    def reasons(self) -> list[str]:
        """Why the gate fails (empty when it passes)."""
        p = self.perf
        out = [f"{len(self.by(v))} {v}" for v in ("regression", "invalid value") if self.by(v)]
        if self.by("broken") and p.get("fail_on_broken", True):
            out.append(f"{len(self.by('broken'))} broken on HEAD")
        if self.by("missing on head") and p.get("fail_on_missing", True):
            out.append(f"{len(self.by('missing on head'))} missing on HEAD")
        if not self.judged and p.get("fail_on_nothing_compared", True):
            out.append("nothing compared: BASE and HEAD share no measured benchmark of "
                       f"{', '.join(p.get('impls', ['?']))}")
        if self.drift:
            out.append(f"{len(self.drift)} numerical drift findings")
        return out

    @property
    def failed(self) -> bool:
        return bool(self.reasons)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def markdown(self) -> str:
        """A summary fit for a pull-request comment."""
        judged = self.judged
        not_gated = len(self.by("not gated"))
        lines = [f"## Taper gate: {'FAIL' if self.failed else 'PASS'}", "",
                 f"{self.labels[0]} vs {self.labels[1]}: {len(judged)} benchmark results compared "
                 f"(implementations gated: {', '.join(self.perf.get('impls', []))}; "
                 f"significance by {stats.IMPLEMENTATION}).", ""]
        if self.failed:
            lines += ["Fails on: " + "; ".join(self.reasons) + ".", ""]
        lines += [f"- {n}" for n in self.notes] + ([""] if self.notes else [])
        sections = [("Regressions", ("regression",)), ("Broken on HEAD", ("broken",)),
                    ("Missing on HEAD (measured on BASE)", ("missing on head",)),
                    ("Values that cannot be compared", ("invalid value",)),
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
        other = [c for c in self.comparisons if c not in judged and c.verdict not in
                 ("broken", "missing on head")]
        if other:
            lines += [f"{len(other)} results not compared: " + ", ".join(
                f"{v} {sum(c.verdict == v for c in other)}" for v in dict.fromkeys(
                    c.verdict for c in other)) + "."
                + (f" ({not_gated} rows of other implementations are shown in the dashboard, "
                   "not gated.)" if not_gated else ""), ""]
        if judged:
            lines += ["<details><summary>All comparisons</summary>", "",
                      to_markdown(_table(judged)), "", "</details>", ""]
        return "\n".join(lines)


def _change(change: float) -> str:
    if math.isnan(change):
        return "—"
    if math.isinf(change):
        return "∞x worse"
    if change >= 1.005:
        return f"{change:.2f}x worse"
    if change == 0:
        return "∞x better"
    return f"{1 / change:.2f}x better" if change <= 1 / 1.005 else "same"


def _table(rows) -> pd.DataFrame:
    return pd.DataFrame([{
        "machine": c.machine, "benchmark": c.benchmark, "params": c.params,
        "base": human(c.base, c.unit), "head": human(c.head, c.unit),
        "change": _change(c.change), "limit": f"{c.factor:.2f}x",
        "samples": f"{c.samples[0]}/{c.samples[1]}", "test": c.test,
        "verdict": c.verdict} for c in rows])


def _fresh(frame_dir: Path, t0: float, suspects, what: str) -> pd.DataFrame:
    """The results a re-run round wrote into its own fresh directory, checked to be new."""
    try:
        frame = load_results(frame_dir)
    except ResultsError as e:
        raise RerunError(f"the re-run ({what}) wrote no asv results into {frame_dir} ({e}); a "
                         "--rerun-cmd must write into the {results} directory it is given") from e
    started = pd.Timestamp(t0 - 1.0, unit="s", tz="UTC")  # asv keeps milliseconds
    have = {(b, p) for b, p, st, at in zip(frame["benchmark"], frame["params_repr"],
                                            frame["status"], frame["started_at"])
            if st == "ok" and at >= started}
    gone = [f"{b}({p})" for _, b, p in suspects if (b, p) not in have]
    if gone:
        raise RerunError(f"the re-run ({what}) wrote no new result for {', '.join(gone)} into "
                         f"{frame_dir}; the gate cannot confirm what was not measured again")
    return frame


def confirm(suspects: list, measure, perf: dict, workdir=None) -> tuple[dict, dict]:
    """Measure `suspects` again, BASE and HEAD interleaved, rerun_rounds times.

    `measure(side, suspects, results_dir)` (side "base" or "head") must run the benchmarks into
    results_dir, a fresh empty directory. Returns ({(benchmark, params): Comparison on the pooled
    fresh samples}, a record of the rounds)."""
    rounds = perf["rerun_rounds"]
    keys = [(c.machine, c.benchmark, c.params) for c in suspects]
    with tempfile.TemporaryDirectory(prefix="taper-gate-rerun-", dir=workdir) as tmp:
        sides, order = {"base": [], "head": []}, []
        for r in range(rounds):
            for side in ("base", "head"):
                d = Path(tmp) / f"round{r + 1}-{side}"
                d.mkdir()
                t0 = time.time()
                measure(side, keys, d)
                what = f"round {r + 1} of {rounds}, {side.upper()}"
                sides[side].append(_fresh(d, t0, keys, what))
                order.append(side)
        pooled = {side: pool(frames) for side, frames in sides.items()}
    again, _ = compare_runs(pooled["base"], pooled["head"], perf)
    found = {(c.benchmark, c.params): c for c in again}
    per_round = {}  # each round's HEAD against the BASE measured just before it
    for b_frame, h_frame in zip(sides["base"], sides["head"]):
        for c in compare_runs(pool([b_frame]), pool([h_frame]), perf)[0]:
            per_round.setdefault((c.benchmark, c.params), []).append(c.change)
    for key, c in found.items():
        c.rounds = per_round.get(key, [])
    record = {"rounds": rounds, "order": order,
              "samples": {f"{b}({p})": list(found[(b, p)].samples) for _, b, p in keys},
              "round_changes": {f"{b}({p})": [round(x, 4) for x in found[(b, p)].rounds]
                                for _, b, p in keys}}
    return found, record


def run_gate(base: pd.DataFrame, head: pd.DataFrame, config: dict, *, measure=None,
             drift: list[Drift] = (), labels=("BASE", "HEAD"), workdir=None) -> GateResult:
    """Judge HEAD against BASE. `measure` is the confirming re-run's callback (see confirm());
    without it, suspects count as regressions unconfirmed by a re-run."""
    perf = config["perf"]
    comparisons, note = compare_runs(base, head, perf)
    result = GateResult(comparisons, list(drift), [note] if note else [], perf, labels)
    suspects = [c for c in comparisons if c.verdict == "regression"
                and settings_for(perf, c.benchmark)["confirm"]]
    if suspects and measure is not None:
        again, result.rerun = confirm(suspects, measure, perf, workdir)
        for c in suspects:
            new = again[(c.benchmark, c.params)]
            each = ", ".join(f"{x:.2f}x" for x in new.rounds)
            c.test += (f"; re-run {'/'.join(s[0].upper() for s in result.rerun['order'])}: "
                       f"{_change(new.change)}, {new.test}, rounds {each}")
            # Confirmed only when the pooled samples say so and so does every round on its
            # own: a load change that hit one run cannot confirm a regression by itself.
            if new.verdict != "regression" or not all(x > c.factor for x in new.rounds):
                c.verdict = "unconfirmed"
        result.notes.append(f"{len(suspects)} suspects re-measured, BASE and HEAD interleaved "
                            f"({result.rerun['rounds']} rounds); "
                            f"{len(result.by('regression'))} confirmed")
    elif suspects:
        result.notes.append(f"{len(suspects)} suspects were not re-measured (re-run disabled)")
    return result
