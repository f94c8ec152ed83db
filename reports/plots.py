"""PNG charts with matplotlib's Agg backend: speedup bars, tokens/s against a roofline, peak memory.

Each function takes the rows of one machine, writes one PNG and returns its path, or returns None
(and writes nothing) when the rows hold nothing to draw.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import FuncFormatter  # noqa: E402
import pandas as pd  # noqa: E402

from .compare import is_roofline  # noqa: E402
from .results import param_columns  # noqa: E402
from .units import as_display, is_bytes  # noqa: E402

COLORS = {"engine": "#1f77b4", "torch": "#ff7f0e", "numpy": "#2ca02c", "cupy": "#9467bd"}
DEVICE_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def _label(row, params) -> str:
    values = [str(row[p]) for p in params if p != "impl" and not _missing(row.get(p))]
    return f"{row['name']} [{', '.join(values)}]" if values else str(row["name"])


def _missing(x) -> bool:
    return x is None or x == "" or (isinstance(x, float) and math.isnan(x))


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_ratios(table: pd.DataFrame, path, title="engine vs torch") -> Path | None:
    """Horizontal bars of compare()'s ratio per benchmark, coloured by device, log scale."""
    t = table[table["ratio"].notna() & (table["ratio"] > 0)]
    if t.empty:
        return None
    params = [c for c in t.columns if c not in ("machine", "commit", "env", "benchmark", "suite",
                                                "name", "kind", "unit", "engine", "torch", "ratio")]
    devices = sorted(t["device"].astype(str).unique()) if "device" in t else [""]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.35 * len(t)))
    labels = [_label(r, [p for p in params if p != "device"]) for _, r in t.iterrows()]
    colors = [DEVICE_COLORS[devices.index(str(d)) % 4] for d in t.get("device", [""] * len(t))]
    # Bars grow from 1x: right when the engine wins, left when torch does.
    ax.barh(range(len(t)), t["ratio"] - 1.0, left=1.0, color=colors)
    ax.set_yticks(range(len(t)), labels, fontsize=8)
    ax.set_ylim(len(t) - 0.5, -0.5)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_xlim(min(0.5, t["ratio"].min() / 2.5), max(2.0, t["ratio"].max() * 2.5))
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xlabel("speedup (above 1: engine better)")
    ax.set_title(title)
    for i, v in enumerate(t["ratio"]):
        ax.annotate(f"{v:.2f}x", (v, i), xytext=(3 if v >= 1 else -3, 0),
                    textcoords="offset points", va="center", ha="left" if v >= 1 else "right",
                    fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=DEVICE_COLORS[i % 4]) for i in range(len(devices))]
    ax.legend(handles, devices, title="device", fontsize=8, loc="lower right")
    return _save(fig, path)


def tokens_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of LLM speed (ms_per_token or tokens_per_s), with a tokens_per_s column added."""
    rows = df[df["unit"].isin(["ms_per_token", "tokens_per_s"]) & (df["status"] == "ok")].copy()
    rows["tokens_per_s"] = [as_display(v, u)[0] for v, u in zip(rows["value"], rows["unit"])]
    return rows


def _roofline(roofline, rooflines: pd.DataFrame, row) -> float | None:
    if isinstance(roofline, (int, float)):
        return float(roofline)
    if isinstance(roofline, dict):
        return roofline.get(row.get("device"))
    match = rooflines
    for p in ("device", "model", "dtype"):
        if p in match and not _missing(row.get(p)):
            match = match[match[p] == row[p]]
    return float(match["tokens_per_s"].max()) if len(match) else None


def plot_tokens(df: pd.DataFrame, path, roofline=None, title="decode speed") -> Path | None:
    """Bars of tokens/s per impl for each (model, device, dtype), with the roofline drawn over each.

    `roofline` is a number (tokens/s), a {device: tokens/s} dict, or None to take it from track_
    values whose benchmark name contains "roofline" (matched on device, model and dtype).
    """
    rows = tokens_rows(df)
    rooflines = rows[rows["name"].map(is_roofline)]
    rows = rows[~rows["name"].map(is_roofline)]
    if rows.empty:
        return None
    params = [p for p in param_columns(df) if p != "impl"]
    rows = rows.assign(group=[_label(r, params) for _, r in rows.iterrows()])
    groups = list(dict.fromkeys(rows["group"]))
    impls = list(dict.fromkeys(rows["impl"]))
    width = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4.5))
    for j, impl in enumerate(impls):
        sub = rows[rows["impl"] == impl].set_index("group")["tokens_per_s"]
        xs = [i + (j - (len(impls) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, [sub.get(g, 0.0) for g in groups], width, label=impl,
               color=COLORS.get(impl))
    drew = False
    for i, g in enumerate(groups):
        top = _roofline(roofline, rooflines, rows[rows["group"] == g].iloc[0])
        if top:
            ax.hlines(top, i - 0.45, i + 0.45, colors="black", linestyles="--",
                      label=None if drew else "roofline")
            ax.annotate(f"{top:.0f}", (i + 0.45, top), fontsize=7, va="bottom", ha="right")
            drew = True
    ax.set_xticks(range(len(groups)), groups, fontsize=8, rotation=15, ha="right")
    ax.set_ylabel("tokens/s")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def memory_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows that measure memory: peakmem_/mem_ benchmarks and track_ values in bytes."""
    mask = df["kind"].isin(["peakmemory", "peakmem", "memory"]) | df["unit"].map(is_bytes)
    return df[mask & (df["status"] == "ok") & ~df["name"].map(is_roofline)]


def plot_memory(df: pd.DataFrame, path, impls=("engine", "torch"),
                title="peak memory") -> Path | None:
    """Grouped bars of peak bytes (MiB) per benchmark and parameters, one bar per impl."""
    rows = memory_rows(df)
    rows = rows[rows["impl"].isin(impls)] if "impl" in rows else rows.iloc[0:0]
    if rows.empty:
        return None
    params = [p for p in param_columns(rows) if p != "impl"]
    rows = rows.assign(group=[_label(r, params) for _, r in rows.iterrows()])
    groups = list(dict.fromkeys(rows["group"]))
    width = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * len(groups)))
    for j, impl in enumerate(impls):
        sub = rows[rows["impl"] == impl].set_index("group")["value"] / (1 << 20)
        ys = [i + (j - (len(impls) - 1) / 2) * width for i in range(len(groups))]
        ax.barh(ys, [sub.get(g, 0.0) for g in groups], width, label=impl, color=COLORS.get(impl))
    ax.set_yticks(range(len(groups)), groups, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("MiB")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)
