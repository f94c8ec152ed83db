"""Engine vs torch, side by side: one row per (machine, benchmark, device, dtype, other params).

``ratio`` is oriented so that above 1 means the engine is better: torch/engine for times, bytes and
ms per token; engine/torch for rates such as tokens/s. Benchmarks whose name contains "roofline"
are reference lines, not contenders, and are left out.
"""
from __future__ import annotations

import math

import pandas as pd

from .results import param_columns
from .units import as_display, fmt, higher_is_better, scale_for

KEY = ["machine", "commit", "env", "benchmark", "suite", "name", "kind", "unit"]


def is_roofline(name: str) -> bool:
    return "roofline" in str(name)


def compare(df: pd.DataFrame, candidate: str = "engine", baseline: str = "torch") -> pd.DataFrame:
    """Pair the `candidate` and `baseline` impl rows of a results frame (see load_results).

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
    up = table["unit"].map(higher_is_better)
    ratio_up, ratio_down = table[candidate] / table[baseline], table[baseline] / table[candidate]
    table["ratio"] = ratio_up.where(up, ratio_down)
    used = [c for c in keys if c in KEY or (table[c] != "").any()]
    table = table[used + [candidate, baseline, "ratio"]]
    return table.sort_values(used, key=lambda c: c.astype(str)).reset_index(drop=True)


def display_table(table: pd.DataFrame, candidate: str = "engine", baseline: str = "torch"):
    """Strings for people: values in ms/µs, MiB or tokens/s, the ratio as speedup "1.48x".

    Drops machine/commit/env/suite/kind columns (the dashboard shows one machine per table).
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


LEGEND = ("speedup: how many times better the engine does than torch (torch/engine for times and "
          "memory, engine/torch for tokens/s); above 1 the engine wins. ms per token is shown as "
          "tokens/s.")


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of a frame of plain values."""
    def cell(x):
        return str(x).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(cell, table.columns)) + " |",
             "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)
