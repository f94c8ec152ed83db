"""The fallback runner: where asv is not installed (the GPU box), discover the same suite classes,
run every selected parameter set in a killable worker process (bench.worker) with asv's rules
(bench.measure), and write asv-format benchmarks.json, machine.json and a result file that
reports.results loads.

Nothing earlier is lost: existing files are read first, and a file that does not parse (or is not
an asv result file) stops the run with its name before anything is measured; every write is
atomic (temp + rename, reports.results.atomic_write_text), and the result file is written after
each parameter set, so a run killed at any point keeps what it had measured and what was there before.
A parameter set that fails, times out, or kills its process is recorded as failed (asv's null) with
the reason, and the run goes on.
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.asv import check_results_dir, clean_stale, env_name, python
from bench.discovery import ROOT, discover
from bench.measure import run_attrs
from bench.worker import Worker, WorkerError
from engine.io.atomic import atomic_write_text
from reports.results import ResultsError

RESULT_COLUMNS = ["result", "params", "version", "started_at", "duration", "stats_ci_99_a", "stats_ci_99_b",
                  "stats_q_25", "stats_q_75", "stats_number", "stats_repeat", "samples", "profile"]
SLACK_S = 5.0  # on top of a benchmark's own timeout (imports have their own deadline, in the worker)


def machine_info(name: str) -> dict:
    from bench.probes import cpu_name, ram_bytes
    ram = ram_bytes()
    return {"arch": platform.machine(), "cpu": cpu_name() or "", "machine": name,
            "num_cpu": str(os.cpu_count() or ""), "os": f"{platform.system()} {platform.release()}",
            "ram": str(ram // 1024) if ram else "", "version": 1}


def _read(path: Path, check) -> dict | None:
    """The JSON object in `path` (None when absent); ResultsError when it is damaged."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path}: damaged ({e}); left as it is. Move it aside (it may hold earlier "
                           "results) and run again.") from None
    why = check(data)
    if why:
        raise ResultsError(f"{path}: {why}; left as it is. Move it aside and run again.")
    return data


def _result_file_fault(data) -> str | None:
    if not isinstance(data, dict) or data.get("result_columns") != RESULT_COLUMNS or not isinstance(data.get("results"), dict):
        return "not an asv 0.6 result file with the expected result_columns"
    return None


def _json_num(x):
    return None if x is None else float(x)


def _row(res, b, version, started):
    n = len(res["result"])
    stats = [s or {} for s in res["stats"]]

    def col(k):
        return [_json_num(s.get(k)) if s else None for s in stats]
    row = [[_json_num(x) for x in res["result"]], b.param_reprs(), version, int(started * 1000),
           round(time.time() - started, 4)]
    if b.kind == "time":
        row += [col("ci_99_a"), col("ci_99_b"), col("q_25"), col("q_75"),
                [s.get("number") if s else None for s in stats], [s.get("repeat") if s else None for s in stats],
                [list(x) if x else None for x in res["samples"]]]
    assert len(row) <= len(RESULT_COLUMNS) and n == len(row[0])
    return row


def _earlier(old, b, version, n):
    """The per-combination results of an earlier run of `b` (this commit's file); the combinations
    selected now replace theirs one by one as they are measured, so a run killed half-way leaves
    the earlier values of those it did not reach, never a blank."""
    res = {"result": [math.nan] * n, "samples": [None] * n, "stats": [None] * n}
    if old is None or old[1] != b.param_reprs() or old[2] != version:
        return res
    row = dict(zip(RESULT_COLUMNS, old))
    for i in range(n):
        res["result"][i] = row["result"][i] if row.get("result") else math.nan
        res["samples"][i] = (row.get("samples") or [None] * n)[i]
        if row.get("stats_q_25"):
            res["stats"][i] = {k: (row.get(f"stats_{k}") or [None] * n)[i]
                               for k in ("ci_99_a", "ci_99_b", "q_25", "q_75", "number", "repeat")}
    return res


def _commit_date_ms(commit: str, root: Path) -> int:
    try:
        out = subprocess.run(["git", "show", "-s", "--format=%ct", commit], cwd=root, capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return int(out.stdout.strip()) * 1000
    except OSError:
        pass
    return int(time.time() * 1000)


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else text


def run_fallback(results: Path, machine: str, commit: str, regex, quick: bool, tiny: bool,
                 log=None, root: Path = ROOT) -> dict:
    """Discover the benchmarks of the checkout at `root`, select, run and write asv-format results;
    returns a summary dict."""
    log = log or sys.stderr
    clean_stale(results)
    check_results_dir(results)  # a damaged file stops the run before anything is measured
    benches, errors = discover(tiny, root)
    for mod, err in errors.items():
        print(f"taper bench: cannot import {mod}: {err}", file=log)
    rx = re.compile(regex) if regex else None
    selected = {}
    for b in benches:
        idx = [i for i, label in enumerate(b.labels()) if rx is None or rx.search(label)]
        if idx:
            selected[b.name] = idx
    total = sum(len(v) for v in selected.values())
    mdir = results / machine
    bench_file = results / "benchmarks.json"
    result_path = mdir / f"{commit[:8]}-{env_name()}.json"
    # read (and check) what is there before measuring anything
    meta_all = _read(bench_file, lambda d: None if isinstance(d, dict) else "not a JSON object") or {}
    data = _read(result_path, _result_file_fault)
    metas = {b.name: b.meta() for b in benches}
    meta_all = {k: v for k, v in meta_all.items() if isinstance(v, dict)}
    meta_all.update(metas)
    atomic_write_text(mdir / "machine.json", json.dumps(machine_info(machine), indent=4) + "\n")
    atomic_write_text(bench_file, json.dumps({**dict(sorted(meta_all.items())), "version": 2}, indent=4) + "\n")
    if data is None:
        data = {"commit_hash": commit, "env_name": env_name(), "date": None,
                "params": {"machine": machine, "python": python()}, "python": python(), "requirements": {},
                "env_vars": {}, "result_columns": RESULT_COLUMNS, "results": {}, "durations": {}, "version": 2}
    data["date"] = _commit_date_ms(commit, root)

    summary = {"ok": 0, "skipped": 0, "failed": 0, "failures": {}, "skips": {}, "results": str(result_path),
               "import_errors": errors, "selected": total}
    done = 0
    worker = Worker(root)
    tmpdirs = {}  # setup_cache key -> (directory, error or None)

    def record(label, r):
        nonlocal done
        done += 1
        if r.get("skip") is not None:
            summary["skipped"] += 1
            summary["skips"][label] = r["skip"]
            shown = "skipped"
        elif r.get("error") is not None:
            summary["failed"] += 1
            summary["failures"][label] = r["error"]
            shown = "failed: " + _last_line(r["error"])
        else:
            summary["ok"] += 1
            from reports.units import human
            shown = human(r["result"], metas[label.split("(")[0]]["unit"])
        print(f"[{done:4d}/{total}] {label}  {shown}", file=log, flush=True)

    try:
        for b in benches:
            if b.name not in selected:
                continue
            attrs = run_attrs(b, quick)
            n = len(b.combos())
            version = metas[b.name]["version"]
            res = _earlier(data["results"].get(b.name), b, version, n)
            res["number"] = [None] * n
            started = time.time()
            module = b.module.__name__
            cache_dir = None
            if b.setup_cache is not None:
                key = metas[b.name]["setup_cache_key"]
                if key not in tmpdirs:
                    d = tempfile.mkdtemp(prefix="taper-setup-cache-")
                    print(f"taper bench: setting up {key}", file=log, flush=True)
                    timeout = float(getattr(b.setup_cache, "timeout", attrs["timeout"])) + SLACK_S
                    try:
                        r = worker.call({"op": "setup_cache", "module": module, "bench": b.name, "dir": d}, timeout)
                    except WorkerError as e:
                        r = {"error": str(e)}
                    tmpdirs[key] = (d, r.get("error"))
                cache_dir, err = tmpdirs[key]
                if err is not None:
                    for i in selected[b.name]:
                        res["result"][i] = None
                        record(b.labels()[i], {"error": f"setup_cache failed: {err}"})
                    data["results"][b.name] = _row(res, b, version, started)
                    atomic_write_text(result_path, json.dumps(data) + "\n")
                    continue
            labels = b.labels()
            for i in selected[b.name]:
                req = {"op": "run", "module": module, "bench": b.name, "index": i, "attrs": attrs, "cache_dir": cache_dir}
                if b.kind == "peakmem" and worker.calls:
                    worker.close()  # peak RSS is per process: a fresh one
                deadline = attrs["timeout"] * (attrs["rounds"] if b.kind == "time" else 1) + SLACK_S
                try:
                    r = worker.call(req, deadline)
                except WorkerError as e:
                    r = {"result": None, "error": str(e), "skip": None}
                if b.kind == "peakmem":
                    worker.close()
                res["result"][i] = r.get("result")
                res["samples"][i], res["number"][i], res["stats"][i] = r.get("samples"), r.get("number"), r.get("stats")
                record(labels[i], r)
                data["results"][b.name] = _row(res, b, version, started)
                atomic_write_text(result_path, json.dumps(data) + "\n")  # after each parameter set: a kill keeps it
            data["results"][b.name] = _row(res, b, version, started)
            data["durations"][f"<{b.name}>"] = round(time.time() - started, 3)
            atomic_write_text(result_path, json.dumps(data) + "\n")  # after each benchmark
    finally:
        worker.kill()
        for d, _ in tmpdirs.values():
            shutil.rmtree(d, ignore_errors=True)
    return summary
