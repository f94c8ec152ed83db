"""The report: report.md and a static index.html (tables and PNG charts, relative links only).

Summary first: per model and device each implementation's headline metric and the candidate's
ratio to the best other (with its interval and sample counts), a verdict per suite and device,
regressions since each machine's previous commit, and notes on figures that contradict each
other. Then one section per machine (its newest commit; the run's dates, not the commit's): one
table per suite with one row per benchmark and parameter set and only the columns that apply,
every implementation present, and the charts. Single-sample (quick) rows and test-size (tiny)
models are marked. `asv publish` output, when asked for, goes to asv/ and every benchmark links
to its history there.
"""
from __future__ import annotations

import html
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from engine.io.atomic import atomic_write_text

from . import plots, roles, summary, tensor_parallel
from .compare import to_markdown, wide
from .results import latest_per_row, load_results
from .units import as_display, fmt, scale_for

CSS = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:75em;padding:0 1em;
color:#222;line-height:1.35}h1{margin-bottom:.2em}.sub{color:#555;margin-top:0}
.scroll{overflow-x:auto;max-width:100%}table{border-collapse:collapse;margin:.6em 0 1.2em}
th,td{border:1px solid #ccc;padding:.2em .5em;font-size:.92em}th{background:#f0f0f0}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
caption{text-align:left;color:#555;font-size:.9em;padding-bottom:.2em}
img{max-width:100%;height:auto;display:block;margin:.8em 0}.note{color:#555;font-size:.9em}
.badge{display:inline-block;font-size:.75em;padding:0 .35em;border-radius:.3em;margin-left:.3em}
.quick{background:#ffe7b3;color:#7a4b00}.tiny{background:#e4e4e4;color:#333}
.reg{background:#ffd0d0;color:#900}.win{color:#11691b;font-weight:600}.loss{color:#a01010}
.banner{background:#fff4d6;border:1px solid #e8c66a;padding:.4em .7em;margin:.6em 0}"""


class PublishError(RuntimeError):
    """asv publish failed; the message carries its output."""


class PublishSetupError(PublishError):
    """asv publish cannot run here (no config, not a checkout); the message says what to do."""


def _slug(name) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))


def _when(ts) -> str:
    return "—" if ts is None or pd.isna(ts) else ts.strftime("%Y-%m-%d %H:%M")


def _machine_facts(rows) -> dict:
    first = rows.iloc[0]
    ram = first["ram"]
    if isinstance(ram, str) and ram.isdigit():  # asv's default: bytes as a string
        ram = f"{int(ram) / 2**30:.1f} GiB"
    runs = rows["started_at"].dropna()
    facts = {"run": (f"{_when(runs.min())} to {_when(runs.max())} UTC" if len(runs) else "—"),
             "commit": f"{first['commit'][:10]} (committed {_when(first['date'])} UTC)",
             "cpu": first["cpu"], "ram": ram, "card": first["card"], "driver": first["driver"],
             "clocks": first["clocks"]}
    return {k: v for k, v in facts.items() if v not in (None, "") and v == v}


def _value(row, impl) -> str:
    v, unit = row["value"].get(impl, math.nan), row["unit"]
    shown, shown_unit = as_display(v, unit)
    divisor, lab = scale_for([as_display(x, unit)[0] for x in row["value"].values()], shown_unit)
    text = fmt(shown, divisor, lab)
    lo, hi = row["ci"].get(impl, (math.nan, math.nan))
    if v and math.isfinite(lo) and math.isfinite(hi) and not math.isnan(v):
        text += f" ±{50 * (hi - lo) / v:.0f}%"
    return text


def _ratio(row) -> str:
    r = row["ratio"]
    if math.isnan(r):
        return "—"
    text = f"{r:.2f}x vs {row['best']}"
    if math.isfinite(row["ratio_lo"]):
        text += f" ({row['ratio_lo']:.2f}–{row['ratio_hi']:.2f})"
    return text


def _cls(r) -> str:
    return "" if math.isnan(r) else ("win" if r > 1.05 else "loss" if r < 1 / 1.05 else "")


def _marks(row) -> list[tuple[str, str]]:
    out = [("quick", "n=1")] if row["quick"] else []
    if summary.is_tiny(row.get("model")):
        out.append(("tiny", "tiny model"))
    return out


def _n(row) -> str:
    ns = [row["n"][i] for i in row["impls"]]
    return str(ns[0]) if len(set(ns)) == 1 else "/".join(map(str, ns))


def _suite_table(rows: pd.DataFrame, candidate) -> dict:
    """Cells of one suite's table: only the parameters that vary; constant ones in the caption."""
    params = [p for p in summary.params_of(rows) if (rows[p] != "").any()]
    varying = [p for p in params if rows[p].astype(str).nunique() > 1]
    constant = {p: rows[p].iloc[0] for p in params if p not in varying}
    impls = roles.ordered([i for r in rows["impls"] for i in r], candidate)
    each = [i for i in impls if i != candidate]
    head = ["benchmark", *varying, *impls, "n", f"{candidate} vs best other"]
    if len(each) > 1:
        head.append(f"{candidate} vs each")
    body = []
    for _, r in rows.iterrows():
        cells = [("bench", r["name"], r["benchmark"])] + [("", str(r[p]), None) for p in varying]
        cells += [("num", _value(r, i) if i in r["impls"] else "", None) for i in impls]
        cells += [("num", _n(r), None), ("num " + _cls(r["ratio"]), _ratio(r), _marks(r))]
        if len(each) > 1:
            cells.append(("num", " · ".join(f"{i} {r['ratios'][i]:.2f}x" for i in each
                                            if i in r["ratios"] and
                                            not math.isnan(r["ratios"][i])), None))
        body.append(cells)
    return {"head": head, "body": body, "caption": " · ".join(f"{k} {v}" for k, v in
                                                             constant.items())}


def _section(machine, rows, table, out, roofline, candidate) -> dict:
    slug = _slug(machine)
    suites = []
    for suite, part in table.groupby("suite", sort=True):
        params = summary.params_of(part)
        chart = plots.plot_ratios(part, out / f"ratio_{slug}_{suite}.png", params, candidate,
                                  title=f"{candidate} vs the best other on {machine}: {suite}")
        suites.append({"suite": suite, "table": _suite_table(part, candidate),
                       "chart": chart.name if chart else None})
    charts = [(t, p.name) for t, p in (
        ("tokens/s", plots.plot_tokens(rows, out / f"tokens_{slug}.png", roofline=roofline,
                                       title=f"decode speed on {machine}", candidate=candidate)),
        ("memory", plots.plot_memory(rows, out / f"memory_{slug}.png",
                                     title=f"peak memory on {machine}", candidate=candidate)),
    ) if p]
    status = rows["status"].value_counts()
    return {"machine": machine, "facts": _machine_facts(rows), "suites": suites,
            "charts": charts, "quick": bool(len(table)) and bool(table["quick"].all()),
            "skipped": int(status.get("skipped", 0)),
            "failed": sorted(set(rows.loc[rows["status"] == "failed", "benchmark"]))}


def _summary(table, results, candidate) -> dict:
    m = summary.models(table)
    impls = roles.ordered([i for r in m["impls"] for i in r], candidate) if len(m) else []
    fixed = ("model", "device", "dtype")
    others = [p for p in summary.params_of(m) if p not in fixed and (m[p] != "").any()]
    head = ["machine", *fixed, *(["case"] if others else []), "metric", *impls, "n",
            f"{candidate} vs best other"]
    body = []
    for _, r in m.iterrows():
        cells = [("", r["machine"], None)] + [("", r.get(p, ""), None) for p in fixed]
        if others:
            cells.append(("", ", ".join(f"{p} {r[p]}" for p in others if r[p] != ""), None))
        cells.append(("", r["metric"], None))
        cells += [("num", _value(r, i) if i in r["impls"] else "", None) for i in impls]
        cells += [("num", _n(r), None), ("num " + _cls(r["ratio"]), _ratio(r), _marks(r))]
        body.append(cells)
    s = summary.suites(table)
    suite_body = [[("", r.machine, None), ("", r.suite, None), ("", r.device, None),
                   ("num", f"{r.compared}/{r.rows}", None),
                   ("num", f"{r.wins} / {r.losses}", None),
                   ("num " + _cls(r.geomean), "—" if math.isnan(r.geomean)
                    else f"{r.geomean:.2f}x", [("quick", f"{r.quick} n=1")] if r.quick else [])]
                  for r in s.itertuples()]
    return {"models": {"head": head, "body": body, "caption": ""},
            "suites": {"head": ["machine", "suite", "device", "rows compared", "wins / losses",
                                f"{candidate} vs best other, geometric mean"],
                       "body": suite_body, "caption": ""},
            "regressions": summary.regressions(results, candidate),
            "notes": summary.disagreements(table)}


def _regression_lines(regs) -> list[str]:
    lines = []
    for machine, (prev, new, found) in sorted(regs.items()):
        what = ", ".join(f"{c.benchmark}({c.params}) {c.change:.2f}x worse" for c in found)
        lines.append(f"{machine}: {new[:10]} vs {prev[:10]}: "
                     + (f"{len(found)} suspect regressions (not re-measured): {what}" if found
                        else "no regression"))
    return lines or ["Each machine has results of one commit only: history and regression "
                     "checks start with the next nightly run (asv run NEW)."]


def _md_table(t) -> str:
    rows = [[text + "".join(f" [{m}]" for _, m in (marks if isinstance(marks, list) else []))
             for _, text, marks in cells] for cells in t["body"]]
    return to_markdown(pd.DataFrame(rows, columns=t["head"])) if rows else "(none)"


LEGEND = ("Ratios: how many times better the candidate does than the other implementation "
          "(other/candidate for times and bytes, candidate/other for rates); above 1 it wins. "
          "The best other is the best of the alternatives measured in the same run; the "
          "raw-array baselines ({}) are shown but not counted. Intervals: from asv's 99% "
          "intervals of both sides; ± on a value is half its interval. n: samples per side. "
          "n=1: a quick run of one sample (no interval; indicative only). ms per token is "
          "shown as tokens/s.")


def _markdown(summ, sections, asv_link, candidate) -> str:
    quick = [s["machine"] for s in sections if s["quick"]]
    out = ["# Taper benchmark report", ""]
    out += [f"**Quick runs (one sample per benchmark, marked n=1): {', '.join(quick)}. Their "
            "ratios are indicative only.**", ""] if quick else []
    out += ["## Summary", "", "### Models (headline metric)", "",
           _md_table(summ["models"]), "", "### Suites", "", _md_table(summ["suites"]), "",
           "### Regressions since the previous commit", ""]
    out += [f"- {x}" for x in _regression_lines(summ["regressions"])] + [""]
    out += [f"- Note: {x}" for x in summ["notes"]] + ([""] if summ["notes"] else [])
    out += [LEGEND.format(", ".join(roles.RAW_BASELINES)), ""]
    if summ.get("tensor_parallel"):
        out += ["### Tensor parallel", "", summ["tensor_parallel"]["caption"], "",
                _md_table(summ["tensor_parallel"]), ""]
    for s in sections:
        out += [f"## {s['machine']}", ""] + [f"- {k}: {v}" for k, v in s["facts"].items()] + [""]
        if s["quick"]:
            out += ["**Quick run: one sample per benchmark; no intervals.**", ""]
        for suite in s["suites"]:
            cap = suite["table"]["caption"]
            out += [f"### {suite['suite']}" + (f" ({cap})" if cap else ""), "",
                    _md_table(suite["table"]), ""]
            out += [f"![ratios {suite['suite']}]({suite['chart']})", ""] if suite["chart"] else []
        out += [f"{s['skipped']} parameter sets skipped (implementation or device missing)."]
        if s["failed"]:
            out += [f"Failed benchmarks: {', '.join(s['failed'])}."]
        out += [""] + [f"![{t}]({name})" for t, name in s["charts"]] + [""]
    if asv_link:
        out += [f"History over commits: [asv dashboard]({asv_link})", ""]
    return "\n".join(out)


def _html_table(t, asv_link=None) -> str:
    e = html.escape
    if not t["body"]:
        return "<p>None.</p>"
    cap = f"<caption>{e(t['caption'])}</caption>" if t["caption"] else ""
    head = "".join(f"<th>{e(str(c))}</th>" for c in t["head"])
    body = []
    for cells in t["body"]:
        tds = []
        for cls, text, extra in cells:
            if cls == "bench":
                inner = (f'<a href="{e(asv_link)}#{e(extra)}">{e(text)}</a>' if asv_link
                         else e(text))
                tds.append(f"<td>{inner}</td>")
                continue
            badges = "".join(f'<span class="badge {k}">{e(m)}</span>' for k, m in (extra or []))
            tds.append(f'<td class="{e(cls)}">{e(text)}{badges}</td>' if cls
                       else f"<td>{e(text)}{badges}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return (f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _html(summ, sections, asv_link, candidate, history) -> str:
    e = html.escape
    runs = ", ".join(f"{s['machine']} {s['facts'].get('run', '')}" for s in sections)
    quick = [s["machine"] for s in sections if s["quick"]]
    p = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         '<meta name="viewport" content="width=device-width, initial-scale=1">',
         "<title>Taper benchmark report</title>", f"<style>{CSS}</style></head><body>",
         "<h1>Taper benchmark report</h1>", f'<p class="sub">Runs: {e(runs)}</p>',
         *([f'<p class="banner">Quick runs (one sample per benchmark, marked n=1): '
            f'{e(", ".join(quick))}. Their ratios are indicative only.</p>'] if quick else []),
         '<section id="summary"><h2>Summary</h2><h3>Models: headline metric</h3>',
         _html_table(summ["models"]), "<h3>Suites</h3>", _html_table(summ["suites"]),
         "<h3>Regressions since the previous commit</h3><ul>"]
    for line in _regression_lines(summ["regressions"]):
        cls = ' class="badge reg"' if "suspect regressions" in line else ""
        p.append(f"<li><span{cls}>{e(line)}</span></li>")
    p.append("</ul>")
    p += [f'<p class="note">Note: {e(n)}</p>' for n in summ["notes"]]
    p.append(f'<p class="note">{e(LEGEND.format(", ".join(roles.RAW_BASELINES)))}</p>')
    if summ.get("tensor_parallel"):
        p.append("<h3>Tensor parallel</h3>" + _html_table(summ["tensor_parallel"]))
    p.append("</section>")
    for s in sections:
        p.append(f'<section id="{e(_slug(s["machine"]))}"><h2>{e(s["machine"])}</h2><ul>')
        p += [f"<li>{e(k)}: {e(str(v))}</li>" for k, v in s["facts"].items()] + ["</ul>"]
        if s["quick"]:
            p.append('<p class="banner">Quick run: one sample per benchmark, so no intervals '
                     "and no significance; ratios are indicative only.</p>")
        for suite in s["suites"]:
            p.append(f"<h3>{e(suite['suite'])}</h3>" + _html_table(suite["table"], asv_link))
            if suite["chart"]:
                p.append(f'<img src="{e(suite["chart"])}" alt="{e(candidate)} vs the best other '
                         f'on {e(s["machine"])}: {e(suite["suite"])}">')
        p.append(f'<p class="note">{s["skipped"]} parameter sets skipped (implementation or '
                 "device missing).</p>")
        if s["failed"]:
            p.append(f"<p>Failed benchmarks: {e(', '.join(s['failed']))}.</p>")
        p += [f'<img src="{e(name)}" alt="{e(t)} chart for {e(s["machine"])}">'
              for t, name in s["charts"]]
        if history.get(s["machine"]):
            p.append(f'<h3>History</h3><img src="{e(history[s["machine"]])}" '
                     f'alt="history of {e(candidate)} on {e(s["machine"])}">')
        p.append("</section>")
    if asv_link:
        p.append(f'<p>History over commits, per benchmark: <a href="{e(asv_link)}">asv '
                 "dashboard</a> (each benchmark name above links to its graph).</p>")
    p.append("</body></html>")
    return "\n".join(p) + "\n"


def check_publish(asv_config) -> Path:
    """Fail before anything is written when asv publish cannot run: no config, or no checkout."""
    conf_path = Path(asv_config).resolve()
    if not conf_path.is_file():
        raise PublishSetupError(f"{conf_path}: asv config not found (--asv-publish needs the "
                           "checkout's asv.conf.json; run from the checkout or pass "
                           "--asv-config)")
    conf = json.loads(conf_path.read_text(encoding="utf-8"))
    repo = (conf_path.parent / conf.get("repo", ".")).resolve()
    proc = subprocess.run(["git", "rev-parse", "--git-dir"], cwd=repo, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise PublishSetupError(f"{repo} (the repo of {conf_path.name}) is not a git checkout: asv "
                           "publish reads commit dates from it; run from the checkout, or leave "
                           "out --asv-publish")
    return conf_path


def asv_publish(results_dirs, html_dir, asv_config="asv.conf.json", *, checked: Path | None = None) -> Path:
    """Run `asv publish` over the given results directories into html_dir; returns its index.html.

    asv reads one results directory named in its config, so this writes a temporary config with
    absolute paths (and, for several directories, a merged copy of their machine folders). asv
    writes into a temporary folder that replaces html_dir only when it succeeded. checked: what
    check_publish(asv_config) returned already (it is not checked again).
    """
    conf_path = checked if checked is not None else check_publish(asv_config)
    conf = json.loads(conf_path.read_text(encoding="utf-8"))
    html_dir = Path(html_dir)
    with tempfile.TemporaryDirectory(prefix="taper-publish-") as tmp:
        merged = Path(tmp) / "results"
        benchmarks = {}
        for d in map(Path, results_dirs):
            shutil.copytree(d, merged, dirs_exist_ok=True)
            benchmarks.update(json.loads((d / "benchmarks.json").read_text(encoding="utf-8")))
        (merged / "benchmarks.json").write_text(json.dumps(benchmarks), encoding="utf-8")
        for key in ("repo", "benchmark_dir"):
            conf[key] = str((conf_path.parent / conf.get(key, ".")).resolve())
        conf["results_dir"] = str(merged)
        conf["html_dir"] = str(Path(tmp) / "html")
        tmp_conf = Path(tmp) / "asv.conf.json"
        tmp_conf.write_text(json.dumps(conf), encoding="utf-8")
        proc = subprocess.run([sys.executable, "-m", "asv", "publish", "--no-pull", "--config",
                               str(tmp_conf)], capture_output=True, text=True,
                              cwd=conf_path.parent, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise PublishError(f"asv publish failed ({proc.returncode}):\n{proc.stdout}"
                               f"{proc.stderr}")
        html_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(html_dir, ignore_errors=True)
        shutil.move(str(Path(tmp) / "html"), html_dir)
    return html_dir / "index.html"


def build_report(results, out, *, asv=False, asv_config="asv.conf.json", roofline=None,
                 candidate=roles.CANDIDATE) -> dict:
    """Write report.md, index.html and the PNG charts into `out`; returns their paths.

    `results` is one results directory or a list (one per machine box); `roofline` is passed to
    plots.plot_tokens. With `asv`, asv publish writes into out/asv and the pages link to it; it
    is checked (and run) before anything else is written.
    """
    dirs = [results] if isinstance(results, (str, Path)) else list(results)
    out = Path(out)
    every = load_results(dirs)
    stale = every.attrs.get("stale", [])
    checked = check_publish(asv_config) if asv else None
    newest = latest_per_row(every)
    table = wide(newest, candidate)
    asv_index = asv_publish(dirs, out / "asv", asv_config, checked=checked) if asv else None
    out.mkdir(parents=True, exist_ok=True)
    sections = [_section(m, rows.reset_index(drop=True), table[table["machine"] == m], out,
                         roofline, candidate) for m, rows in newest.groupby("machine", sort=True)]
    history = {}
    for machine, rows in every.groupby("machine"):
        chart = plots.plot_history(rows, out / f"history_{_slug(machine)}.png", candidate,
                                   title=f"{candidate} on {machine}: value / first value")
        if chart:
            history[machine] = chart.name
    summ = _summary(table, every, candidate)
    summ["tensor_parallel"] = tensor_parallel.table(dirs)
    link = asv_index.relative_to(out).as_posix() if asv_index else None
    md = atomic_write_text(out / "report.md", _markdown(summ, sections, link, candidate))
    page = atomic_write_text(out / "index.html", _html(summ, sections, link, candidate, history))
    charts = [out / s_["chart"] for s in sections for s_ in s["suites"] if s_["chart"]]
    charts += [out / name for s in sections for _, name in s["charts"]]
    charts += [out / name for name in history.values()]
    return {"markdown": md, "html": page, "charts": charts, "asv": asv_index, "stale": stale}
