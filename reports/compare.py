"""Implementations side by side: one row per (machine, benchmark, parameter set other than impl).

Ratios are oriented so that above 1 means the candidate (reports.roles.CANDIDATE, the engine) is
better: other/candidate for times, bytes and ms per token; candidate/other for rates such as
tokens/s (the direction comes from reports.units; a unit without one gets no ratio). "The best
other" is the best of the alternatives measured in the same run (reports.roles: raw-array
baselines such as numpy and cupy are shown but never count). Benchmarks whose name contains
"roofline" are reference lines, not contenders, and are left out.
"""
from __future__ import annotations

import math

import pandas as pd

from . import roles
from .results import param_columns
from .units import as_display, better_by, fmt, known, scale_for

KEY = ["machine", "commit", "env", "benchmark", "suite", "name", "kind", "unit"]


def is_roofline(name: str) -> bool:
    return "roofline" in str(name)


def ratio(a, b, unit) -> float:
    """How many times better a is than b (NaN when either is missing or the unit has no
    direction)."""
    if not known(unit) or any(x is None or (isinstance(x, float) and math.isnan(x))
                              for x in (a, b)):
        return math.nan
    return better_by(a, b, unit)


def ratio_ci(a_lo, a_hi, b_lo, b_hi, unit) -> tuple[float, float]:
    """The interval of ratio(a, b) from the two sides' intervals (NaN when not finite/positive)."""
    bounds = (a_lo, a_hi, b_lo, b_hi)
    if not known(unit) or not all(isinstance(x, (int, float)) and math.isfinite(x) and x > 0
                                  for x in bounds):
        return math.nan, math.nan
    ends = [ratio(a, b, unit) for a in (a_lo, a_hi) for b in (b_lo, b_hi)]
    return min(ends), max(ends)


def _n(row) -> int:
    s = row["samples"]
    if isinstance(s, list):
        return len(s)
    rep = row["repeat"]
    return int(rep) if isinstance(rep, float) and math.isfinite(rep) else 1


def wide(df: pd.DataFrame, candidate: str = roles.CANDIDATE) -> pd.DataFrame:
    """One row per benchmark and parameter set (other than impl) with every implementation.

    Columns: the KEY columns, the parameter columns used, ``impls`` (the implementations measured,
    candidate first), and per row dicts ``value``, ``n``, ``ci`` keyed by impl, then ``best``
    (the best other), ``ratio`` / ``ratio_lo`` / ``ratio_hi`` (candidate vs best other with its
    99% interval when both sides have one), ``ratios`` ({other impl: ratio}) and ``quick`` (every
    side a single sample)."""
    if "impl" not in df.columns:
        raise ValueError("results have no 'impl' parameter; cannot compare implementations "
                         f"(parameter columns: {param_columns(df)})")
    df = df[(df["status"] == "ok") & ~df["name"].map(is_roofline)]
    params = [c for c in param_columns(df) if c != "impl"]
    keys = KEY + params
    df = df.astype({c: object for c in keys}).fillna({c: "" for c in keys})
    rows = []
    for key, g in df.groupby(keys, sort=False, dropna=False):
        g = g.drop_duplicates("impl", keep="last").set_index("impl")
        impls = roles.ordered(g.index, candidate)
        row = dict(zip(keys, key))
        unit = row["unit"]
        row["impls"] = impls
        row["value"] = {i: g.at[i, "value"] for i in impls}
        row["n"] = {i: _n(g.loc[i]) for i in impls}
        row["ci"] = {i: (g.at[i, "ci_lo"], g.at[i, "ci_hi"]) if g.at[i, "repeat"] != 1
                     else (math.nan, math.nan) for i in impls}
        others = [i for i in roles.alternatives(impls, candidate)]
        row["ratios"] = {i: ratio(row["value"].get(candidate), row["value"][i], unit)
                         for i in impls if i != candidate}
        scored = [i for i in others if not math.isnan(row["ratios"][i])]
        best = min(scored, key=lambda i: row["ratios"][i]) if scored else None
        row["best"] = best
        row["ratio"] = row["ratios"][best] if best else math.nan
        row["ratio_lo"], row["ratio_hi"] = (ratio_ci(*row["ci"][candidate], *row["ci"][best],
                                                     unit) if best else (math.nan, math.nan))
        row["quick"] = max(row["n"].values()) <= 1
        rows.append(row)
    out = pd.DataFrame(rows, columns=keys + ["impls", "value", "n", "ci", "ratios", "best",
                                             "ratio", "ratio_lo", "ratio_hi", "quick"])
    used = [c for c in params if (out[c] != "").any()]
    return out[KEY + used + list(out.columns[len(keys):])].reset_index(drop=True)


def compare(df: pd.DataFrame, candidate: str = roles.CANDIDATE,
            baseline: str = "torch") -> pd.DataFrame:
    """Pair the `candidate` and one `baseline` impl (`taper bench`'s tables).

    Returns the key columns, the parameter columns other than impl, then `candidate`, `baseline`
    (stored values, NaN when skipped, failed or absent) and `ratio`.
    """
    if "impl" not in df.columns:
        raise ValueError("results have no 'impl' parameter; cannot compare implementations "
                         f"(parameter columns: {param_columns(df)})")
    df = df[~df["name"].map(is_roofline)]
    keys = KEY + [c for c in param_columns(df) if c != "impl"]
    sides = []
    for impl in (candidate, baseline):
        side = df.loc[df["impl"] == impl, keys + ["value"]].rename(columns={"value": impl})
        sides.append(side.astype({c: object for c in keys}).fillna({c: "" for c in keys}))
    table = sides[0].merge(sides[1], on=keys, how="outer")
    table = table[table[[candidate, baseline]].notna().any(axis=1)]
    table["ratio"] = [ratio(a, b, u) for a, b, u in
                      zip(table[candidate], table[baseline], table["unit"])]
    used = [c for c in keys if c in KEY or (table[c] != "").any()]
    table = table[used + [candidate, baseline, "ratio"]]
    return table.sort_values(used, key=lambda c: c.astype(str)).reset_index(drop=True)


def display_table(table: pd.DataFrame, candidate: str = roles.CANDIDATE, baseline: str = "torch"):
    """Strings for people: values in ms/µs, MiB or tokens/s, the ratio as speedup "1.48x".

    Drops machine/commit/env/suite/kind columns (one machine per table).
    """
    params = [c for c in table.columns if c not in KEY + [candidate, baseline, "ratio"]]
    rows = []
    for _, r in table.iterrows():
        a, unit = as_display(r[candidate], r["unit"])
        b, _ = as_display(r[baseline], r["unit"])
        divisor, label = scale_for([a, b], unit)
        row = {"benchmark": r["name"]}
        row.update({p: r[p] for p in params})
        row[candidate] = fmt(a, divisor, label)
        row[baseline] = fmt(b, divisor, label)
        row["speedup"] = "—" if math.isnan(r["ratio"]) else f"{r['ratio']:.2f}x"
        rows.append(row)
    return pd.DataFrame(rows, columns=["benchmark", *params, candidate, baseline, "speedup"])


def display_wide(table: pd.DataFrame, candidate: str = roles.CANDIDATE) -> pd.DataFrame:
    """wide()'s rows as strings for people: every implementation measured, each in its own column
    (candidate first, the raw-array baselines last), then the candidate against the best other."""
    params = [c for c in table.columns if c not in KEY and c not in WIDE_COLUMNS]
    impls = roles.ordered(list(dict.fromkeys(i for row in table["impls"] for i in row)), candidate)
    rows = []
    for _, r in table.iterrows():
        shown = {i: as_display(r["value"].get(i, math.nan), r["unit"]) for i in impls}
        divisor, label = scale_for([v for v, _ in shown.values()], shown[impls[0]][1])
        row = {"benchmark": r["name"], **{p: r[p] for p in params}}
        row.update({i: fmt(v, divisor, label) for i, (v, _) in shown.items()})
        row[f"{candidate} vs best other"] = ("—" if math.isnan(r["ratio"])
                                             else f"{r['ratio']:.2f}x vs {r['best']}")
        rows.append(row)
    return pd.DataFrame(rows, columns=["benchmark", *params, *impls, f"{candidate} vs best other"])


WIDE_COLUMNS = ("impls", "value", "n", "ci", "ratios", "best", "ratio", "ratio_lo", "ratio_hi", "quick")

LEGEND = ("speedup: how many times better the engine does than the other implementation "
          "(other/engine for times and memory, engine/other for tokens/s); above 1 the engine "
          "wins. ms per token is shown as tokens/s.")


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of a frame of plain values."""
    def cell(x):
        return str(x).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(cell, table.columns)) + " |",
             "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)
