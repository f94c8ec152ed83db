"""PNG charts with matplotlib's Agg backend: ratio bars with their intervals, tokens/s against a
roofline, peak memory (log scale, so that small bars stay visible), and history over commits.

Each function writes one PNG and returns its path, or returns None (and writes nothing) when there
is nothing to draw. Legends sit outside the axes so that they never cover bars or labels.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import FuncFormatter  # noqa: E402
import pandas as pd  # noqa: E402

from . import roles  # noqa: E402
from .compare import is_roofline  # noqa: E402
from .results import param_columns  # noqa: E402
from .units import as_display, human, is_bytes  # noqa: E402

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#d62728"]
DEVICE_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
WIDTH = 9.0  # inches at 100 dpi: 900 px, inside a 1280 px window with the page margins


def impl_colors(impls, candidate=roles.CANDIDATE) -> dict:
    return {impl: PALETTE[i % len(PALETTE)] for i, impl in enumerate(roles.ordered(impls,
                                                                                   candidate))}


def _missing(x) -> bool:
    return x is None or x == "" or (isinstance(x, float) and math.isnan(x))


def label(row, params) -> str:
    values = [str(row[p]) for p in params if p != "impl" and not _missing(row.get(p))]
    return f"{row['name']} [{', '.join(values)}]" if values else str(row["name"])


def _save(fig, path) -> Path:
    import io

    from engine.io.atomic import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, dpi=100, format="png", bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _legend_outside(ax, handles=None, labels=None, title=None):
    kw = {"fontsize": 8, "title": title, "loc": "upper left", "bbox_to_anchor": (1.01, 1.0),
          "borderaxespad": 0.0, "frameon": False}
    if handles is not None:
        ax.legend(handles, labels, **kw)
    else:
        ax.legend(**kw)


def plot_ratios(table: pd.DataFrame, path, params=(), candidate=roles.CANDIDATE,
                title="") -> Path | None:
    """Horizontal bars of the candidate's ratio to the best other per row of a wide table, with
    the 99% interval when both sides have one; single-sample rows are drawn hatched."""
    t = table[table["ratio"].notna() & (table["ratio"] > 0)]
    t = t[t["ratio"].map(math.isfinite)]
    if t.empty:
        return None
    devices = sorted(t["device"].astype(str).unique()) if "device" in t else [""]
    fig, ax = plt.subplots(figsize=(WIDTH, 1.3 + 0.32 * len(t)))
    labels = [f"{label(r, [p for p in params if p != 'device'])} vs {r['best']}"
              for _, r in t.iterrows()]
    colors = [DEVICE_COLORS[devices.index(str(d)) % 4] for d in t.get("device", [""] * len(t))]
    lo = (t["ratio"] - t["ratio_lo"]).fillna(0).clip(lower=0)
    hi = (t["ratio_hi"] - t["ratio"]).fillna(0).clip(lower=0)
    # Bars grow from 1x: right when the candidate wins, left when the other does.
    bars = ax.barh(range(len(t)), t["ratio"] - 1.0, left=1.0, color=colors,
                   xerr=[lo, hi], error_kw={"ecolor": "black", "capsize": 2, "linewidth": 0.8})
    for bar, quick in zip(bars, t["quick"]):
        if quick:
            bar.set_hatch("///")
            bar.set_alpha(0.55)
    ax.set_yticks(range(len(t)), labels, fontsize=8)
    ax.set_ylim(len(t) - 0.5, -0.5)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    top = max(t["ratio"].max(), t["ratio_hi"].max(skipna=True) if t["ratio_hi"].notna().any()
              else 0)
    bottom = min(t["ratio"].min(), t["ratio_lo"].min(skipna=True) if t["ratio_lo"].notna().any()
                 else math.inf)
    ax.set_xlim(min(0.5, bottom / 5), max(2.0, top * 5))  # room for the labels at the ends
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xlabel(f"{candidate} vs the best other implementation (above 1: {candidate} better)")
    ax.set_title(title, fontsize=10)
    for i, (v, quick) in enumerate(zip(t["ratio"], t["quick"])):
        ax.annotate(f"{v:.2f}x" + (" (n=1)" if quick else ""), (v, i),
                    xytext=(3 if v >= 1 else -3, 0), textcoords="offset points", va="center",
                    ha="left" if v >= 1 else "right", fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=DEVICE_COLORS[i % 4]) for i in range(len(devices))]
    handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="black", hatch="///"))
    _legend_outside(ax, handles, devices + ["one sample"], title="device")
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


def plot_tokens(df: pd.DataFrame, path, roofline=None, title="decode speed",
                candidate=roles.CANDIDATE) -> Path | None:
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
    rows = rows.assign(group=[label(r, params) for _, r in rows.iterrows()])
    groups = list(dict.fromkeys(rows["group"]))
    colors = impl_colors(rows["impl"], candidate)
    impls = list(colors)
    width = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(WIDTH, 4.5))
    for j, impl in enumerate(impls):
        sub = rows[rows["impl"] == impl].set_index("group")["tokens_per_s"]
        xs = [i + (j - (len(impls) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, [sub.get(g, 0.0) for g in groups], width, label=impl, color=colors[impl])
    drew = False
    for i, g in enumerate(groups):
        top = _roofline(roofline, rooflines, rows[rows["group"] == g].iloc[0])
        if top:
            ax.hlines(top, i - 0.45, i + 0.45, colors="black", linestyles="--",
                      label=None if drew else "roofline")
            ax.annotate(f"{top:.0f}", (i + 0.45, top), fontsize=7, va="bottom", ha="right")
            drew = True
    ax.set_yscale("log")
    ax.set_xticks(range(len(groups)), groups, fontsize=8, rotation=20, ha="right")
    ax.set_ylabel("tokens/s (log scale)")
    ax.set_title(title, fontsize=10)
    _legend_outside(ax)
    return _save(fig, path)


def memory_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows that measure memory: peakmem_/mem_ benchmarks and track_ values in bytes."""
    mask = df["kind"].isin(["peakmemory", "peakmem", "memory"]) | df["unit"].map(is_bytes)
    return df[mask & (df["status"] == "ok") & ~df["name"].map(is_roofline)]


def plot_memory(df: pd.DataFrame, path, title="peak memory",
                candidate=roles.CANDIDATE) -> Path | None:
    """Grouped bars of peak bytes per benchmark and parameters, one bar per impl, on a log scale
    (a 1 MiB bar beside a 4 GiB one stays visible) with each value written at its bar."""
    rows = memory_rows(df)
    rows = rows[rows["value"] > 0] if "impl" in rows else rows.iloc[0:0]
    if rows.empty:
        return None
    params = [p for p in param_columns(rows) if p != "impl"]
    rows = rows.assign(group=[label(r, params) for _, r in rows.iterrows()])
    groups = list(dict.fromkeys(rows["group"]))
    colors = impl_colors(rows["impl"], candidate)
    impls = list(colors)
    width = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(WIDTH, 1.3 + 0.4 * len(groups) * max(1, len(impls) / 2)))
    for j, impl in enumerate(impls):
        sub = rows[rows["impl"] == impl].set_index("group")["value"] / (1 << 20)
        for i, g in enumerate(g for g in groups if g in sub.index):
            y = groups.index(g) + (j - (len(impls) - 1) / 2) * width
            ax.barh(y, sub[g], width, color=colors[impl], label=impl if i == 0 else None)
            ax.annotate(human(sub[g] * (1 << 20), "bytes"), (sub[g], y), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=7)
    ax.set_xscale("log")
    ax.set_yticks(range(len(groups)), groups, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("MiB (log scale)")
    ax.set_xlim(right=ax.get_xlim()[1] * 8)  # room for the value labels
    ax.set_title(title, fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    _legend_outside(ax, list(seen.values()), list(seen), title="impl")
    return _save(fig, path)


def plot_history(df: pd.DataFrame, path, candidate=roles.CANDIDATE,
                 title="history") -> Path | None:
    """The candidate's value of each benchmark and parameter set over the machine's commits
    (by run date), relative to its first measurement: lines above 1 got slower (or, for rates,
    faster is shown the same way: the stored value over the first). None with one commit."""
    rows = df[(df["status"] == "ok") & (df.get("impl") == candidate)] if "impl" in df else df
    if rows["commit"].nunique() < 2:
        return None
    params = [p for p in param_columns(rows) if p != "impl"]
    rows = rows.assign(series=[label(r, params) for _, r in rows.iterrows()])
    fig, ax = plt.subplots(figsize=(WIDTH, 4.0))
    drawn = 0
    for name, g in rows.sort_values("started_at").groupby("series", sort=True):
        g = g.drop_duplicates("commit", keep="last")
        if len(g) < 2 or not g["value"].iloc[0] > 0:
            continue
        ax.plot(g["started_at"], g["value"] / g["value"].iloc[0], marker="o", linewidth=1,
                markersize=3, label=name if drawn < 12 else None)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel("value / first value")
    ax.set_title(title, fontsize=10)
    fig.autofmt_xdate()
    _legend_outside(ax)
    return _save(fig, path)
