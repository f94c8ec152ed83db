"""The report: report.md and a static index.html (tables and PNG charts, relative links only).

One section per machine, for the newest commit measured on it: the machine and card, the engine vs
torch table, and the charts. `asv publish` output, when asked for, goes to the asv/ subfolder and is
linked from both files.
"""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import plots
from .compare import LEGEND, compare, display_table, to_markdown
from .results import latest, load_results

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.25em .6em}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;display:block;margin:1em 0}.note{color:#555;font-size:.9em}"""


class PublishError(RuntimeError):
    """asv publish failed; the message carries its output."""


def _slug(name) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))


def _machine_facts(rows) -> dict:
    first = rows.iloc[0]
    ram = first["ram"]
    if isinstance(ram, str) and ram.isdigit():  # asv's default: bytes as a string
        ram = f"{int(ram) / 2**30:.1f} GiB"
    facts = {"commit": first["commit"][:10], "date": str(first["date"])[:19],
             "cpu": first["cpu"], "ram": ram, "card": first["card"],
             "driver": first["driver"], "clocks": first["clocks"]}
    return {k: v for k, v in facts.items() if v not in (None, "") and v == v}


def _section(machine, rows, out, roofline, candidate, baseline) -> dict:
    table = compare(rows, candidate, baseline)
    slug = _slug(machine)
    suites = sorted(set(table["suite"]))
    charts = [  # one speedup chart per suite keeps each readable
        (f"speedup {suite}", plots.plot_ratios(
            table[table["suite"] == suite],
            out / (f"speedup_{slug}.png" if len(suites) == 1 else f"speedup_{slug}_{suite}.png"),
            title=f"{candidate} vs {baseline} on {machine}: {suite}"))
        for suite in suites
    ] + [
        ("tokens/s", plots.plot_tokens(rows, out / f"tokens_{slug}.png", roofline=roofline,
                                       title=f"decode speed on {machine}")),
        ("memory", plots.plot_memory(rows, out / f"memory_{slug}.png", (candidate, baseline),
                                     title=f"peak memory on {machine}")),
    ]
    status = rows["status"].value_counts()
    failed = sorted(set(rows.loc[rows["status"] == "failed", "benchmark"]))
    return {"machine": machine, "facts": _machine_facts(rows), "table": display_table(
        table, candidate, baseline), "charts": [(t, p.name) for t, p in charts if p],
        "skipped": int(status.get("skipped", 0)), "failed": failed}


def _markdown(sections, asv_link) -> str:
    out = ["# Taper benchmark report", ""]
    for s in sections:
        out += [f"## {s['machine']}", ""]
        out += [f"- {k}: {v}" for k, v in s["facts"].items()] + [""]
        out += [to_markdown(s["table"]) if len(s["table"]) else "No engine/torch pairs measured.",
                "", LEGEND, ""]
        out += [f"{s['skipped']} parameter sets skipped (missing impl or device)."]
        if s["failed"]:
            out += [f"Failed benchmarks: {', '.join(s['failed'])}."]
        out += [""] + [f"![{t}]({name})" for t, name in s["charts"]] + [""]
    if asv_link:
        out += [f"Full history: [asv dashboard]({asv_link})", ""]
    return "\n".join(out)


def _html_table(table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = []
    for row in table.itertuples(index=False):
        cells = []
        for col, v in zip(table.columns, row):
            numeric = col != "benchmark" and re.match(r"^[\d.—]", str(v))
            cls = ' class="num"' if numeric else ""
            cells.append(f"<td{cls}>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _html(sections, asv_link) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>Taper benchmark report</title>", f"<style>{CSS}</style></head><body>",
             "<h1>Taper benchmark report</h1>"]
    for s in sections:
        parts.append(f'<section id="{e(_slug(s["machine"]))}"><h2>{e(s["machine"])}</h2><ul>')
        parts += [f"<li>{e(k)}: {e(str(v))}</li>" for k, v in s["facts"].items()]
        parts.append("</ul>")
        parts.append(_html_table(s["table"]) if len(s["table"])
                     else "<p>No engine/torch pairs measured.</p>")
        parts.append(f'<p class="note">{e(LEGEND)} {s["skipped"]} parameter sets skipped.</p>')
        if s["failed"]:
            parts.append(f"<p>Failed benchmarks: {e(', '.join(s['failed']))}.</p>")
        parts += [f'<img src="{e(name)}" alt="{e(title)} chart for {e(s["machine"])}">'
                  for title, name in s["charts"]]
        parts.append("</section>")
    if asv_link:
        parts.append(f'<p>Full history: <a href="{e(asv_link)}">asv dashboard</a></p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def asv_publish(results_dirs, html_dir, asv_config="asv.conf.json") -> Path:
    """Run `asv publish` over the given results directories into html_dir; returns its index.html.

    asv reads one results directory named in its config, so this writes a temporary config with
    absolute paths (and, for several directories, a merged copy of their machine folders).
    """
    conf_path = Path(asv_config).resolve()
    if not conf_path.exists():
        raise PublishError(f"{conf_path}: asv config not found (needed by asv publish)")
    conf = json.loads(conf_path.read_text(encoding="utf-8"))
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
        conf["html_dir"] = str(Path(html_dir).resolve())
        tmp_conf = Path(tmp) / "asv.conf.json"
        tmp_conf.write_text(json.dumps(conf), encoding="utf-8")
        proc = subprocess.run([sys.executable, "-m", "asv", "publish", "--no-pull", "--config",
                               str(tmp_conf)], capture_output=True, text=True,
                              cwd=conf_path.parent, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise PublishError(f"asv publish failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return Path(html_dir) / "index.html"


def build_report(results, out, *, asv=False, asv_config="asv.conf.json", roofline=None,
                 candidate="engine", baseline="torch") -> dict:
    """Write report.md, index.html and the PNG charts into `out`; returns their paths.

    `results` is one results directory or a list (one per machine box); `roofline` is passed to
    plots.plot_tokens. With `asv`, asv publish writes into out/asv and both files link to it.
    """
    dirs = [results] if isinstance(results, (str, Path)) else list(results)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = latest(load_results(dirs))
    sections = [_section(m, rows.reset_index(drop=True), out, roofline, candidate, baseline)
                for m, rows in df.groupby("machine", sort=True)]
    asv_index = asv_publish(dirs, out / "asv", asv_config) if asv else None
    link = asv_index.relative_to(out).as_posix() if asv_index else None
    md, page = out / "report.md", out / "index.html"
    md.write_text(_markdown(sections, link), encoding="utf-8")
    page.write_text(_html(sections, link), encoding="utf-8")
    charts = [out / name for s in sections for _, name in s["charts"]]
    return {"markdown": md, "html": page, "charts": charts, "asv": asv_index}
