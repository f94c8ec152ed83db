"""Load asv results directories into one tidy pandas DataFrame: one row per measured parameter set.

asv 0.6 writes, under a results directory:

- ``benchmarks.json``: per benchmark its ``type`` (time, track, peakmem, memory), ``unit``,
  ``param_names`` and ``params`` (lists of value reprs);
- ``<machine>/machine.json``: machine name, cpu, ram, os, arch, num_cpu;
- ``<machine>/<commit[:8]>-<env>.json``: one file per (commit, environment). Its ``results`` map a
  benchmark name to a row whose fields are named by ``result_columns`` (result, params, version,
  started_at, duration, stats_ci_99_a, stats_ci_99_b, stats_q_25, stats_q_75, stats_number,
  stats_repeat, samples, profile); trailing empty fields are dropped. Each list field holds one
  entry per parameter combination, in the order of ``itertools.product(*params)``. A result of NaN
  means skipped (NotImplementedError), None means failed; a whole field may be None.
- ``<machine>/taper-env.json`` (ours, optional): see :mod:`reports` for the sidecar format.
"""
from __future__ import annotations

import ast
import itertools
import json
import math
from pathlib import Path

import pandas as pd

# the one atomic write (temp + fsync + rename; stale temps of killed writers cleanable)
from engine.io.atomic import atomic_write_text

SIDECAR = "taper-env.json"
SIDECAR_KEYS = ("card", "driver", "clocks", "cpu")
CORE_COLUMNS = [
    "machine", "commit", "date", "env", "python", "benchmark", "suite", "name", "kind",
    "params_repr", "value", "unit", "status", "started_at", "q25", "q75", "ci_lo", "ci_hi",
    "number", "repeat",
    "samples", "cpu", "ram", "num_cpu", "card", "driver", "clocks",
]
_STAT_FIELDS = {"stats_q_25": "q25", "stats_q_75": "q75", "stats_ci_99_a": "ci_lo",
                "stats_ci_99_b": "ci_hi", "stats_number": "number", "stats_repeat": "repeat"}


class ResultsError(ValueError):
    """A results directory or file that cannot be read; the message names the file and the fault."""


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ResultsError(f"{path}: cannot read ({e.strerror})") from e
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def param_value(text):
    """Turn an asv parameter repr ("'cuda'", "4", "None") back into its Python value when it can."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def read_env_sidecar(machine_dir: Path) -> dict:
    """The sidecar ``taper-env.json`` of one machine directory, or {} when there is none."""
    path = Path(machine_dir) / SIDECAR
    if not path.exists():
        return {}
    data = _read_json(path)
    unknown = set(data) - set(SIDECAR_KEYS)
    if unknown:
        raise ResultsError(f"{path}: unknown keys {sorted(unknown)}; expected {list(SIDECAR_KEYS)}")
    return data


def write_env_sidecar(results_dir, machine: str, *, card=None, driver=None, clocks=None, cpu=None):
    """Write ``<results_dir>/<machine>/taper-env.json``; returns its path."""
    data = {"card": card, "driver": driver, "clocks": clocks, "cpu": cpu}
    return atomic_write_text(Path(results_dir) / machine / SIDECAR, json.dumps(data, indent=2) + "\n")


def _field_list(path, bench, field, value, n):
    """A per-combination field as a list of length n (None when the whole field is absent)."""
    if value is None:
        return [None] * n
    if not isinstance(value, list) or len(value) != n:
        raise ResultsError(f"{path}: benchmark {bench!r} field {field!r} should be a list of {n} "
                           f"entries (one per parameter combination), found {value!r:.80}")
    return value


def _number(x):
    return float("nan") if x is None else float(x)


def _load_result_file(path: Path, meta: dict, machine_info: dict, sidecar: dict, stale: list) -> list[dict]:
    data = _read_json(path)
    for key in ("commit_hash", "env_name", "date", "params", "result_columns", "results"):
        if key not in data:
            raise ResultsError(f"{path}: missing key {key!r} (not an asv 0.6 result file?)")
    columns = data["result_columns"]
    if "result" not in columns or "params" not in columns:
        raise ResultsError(f"{path}: result_columns {columns} lack 'result' or 'params'")
    machine = data["params"].get("machine") or machine_info.get("machine")
    date = pd.to_datetime(data["date"], unit="ms", utc=True) if data["date"] else pd.NaT
    rows = []
    for bench, fields in data["results"].items():
        if not isinstance(fields, list) or len(fields) > len(columns):
            raise ResultsError(f"{path}: benchmark {bench!r} row does not match result_columns")
        row = dict(zip(columns, fields))
        info = meta.get(bench)
        if info is None:
            continue  # removed from the suite since; asv publish drops these too
        params = row.get("params") or []
        combos = list(itertools.product(*params)) if params else [()]
        names = info.get("param_names") or []
        if len(names) != len(params):  # measured before the benchmark's parameters changed
            stale.append(f"{path.name}: {bench} ({len(params)} parameter lists, now {len(names)}: "
                         f"{', '.join(names)})")
            continue
        n = len(combos)
        values = _field_list(path, bench, "result", row.get("result"), n)
        samples = _field_list(path, bench, "samples", row.get("samples"), n)
        stats = {out: _field_list(path, bench, f, row.get(f), n) for f, out in _STAT_FIELDS.items()}
        suite, _, name = bench.partition(".")
        kind = info.get("type") or name.rpartition(".")[2].split("_")[0]
        started = row.get("started_at")
        started = pd.to_datetime(started, unit="ms", utc=True) if started else pd.NaT
        for i, combo in enumerate(combos):
            value = values[i]
            status = "failed" if value is None else ("skipped" if math.isnan(value) else "ok")
            rec = {
                "machine": machine, "commit": data["commit_hash"], "date": date,
                "env": data["env_name"], "python": data.get("python"), "benchmark": bench,
                "suite": suite, "name": name, "kind": kind, "params_repr": ", ".join(combo),
                "value": _number(value), "unit": info.get("unit"), "status": status,
                "started_at": started,
                "samples": samples[i] if status == "ok" else None,
                "cpu": sidecar.get("cpu") or machine_info.get("cpu"),
                "ram": machine_info.get("ram"), "num_cpu": machine_info.get("num_cpu"),
                "card": sidecar.get("card"), "driver": sidecar.get("driver"),
                "clocks": sidecar.get("clocks"),
            }
            rec.update({k: _number(v[i]) for k, v in stats.items()})
            for pname, ptext in zip(names, combo):
                rec[pname if pname not in CORE_COLUMNS else f"param_{pname}"] = param_value(ptext)
            rows.append(rec)
    return rows


def load_results(paths) -> pd.DataFrame:
    """Load one results directory or a list of them (e.g. this CPU box's and an H100 box's).

    Returns one row per (machine, commit, env, benchmark, parameter combination) with the columns
    in CORE_COLUMNS plus one column per parameter name (impl, device, dtype, model, ...; a name that
    clashes with a core column gets a ``param_`` prefix). Raises ResultsError on a malformed file.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows, stale = [], []
    for root in map(Path, paths):
        if not root.is_dir():
            raise ResultsError(f"{root}: not a results directory")
        bench_file = root / "benchmarks.json"
        if not bench_file.exists():
            raise ResultsError(f"{bench_file}: missing; asv writes it with the results and the "
                               "parameter names and units are only stored there")
        meta = {k: v for k, v in _read_json(bench_file).items() if isinstance(v, dict)}
        for machine_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            machine_file = machine_dir / "machine.json"
            result_files = [p for p in sorted(machine_dir.glob("*.json"))
                            if p.name not in ("machine.json", SIDECAR)]
            if not machine_file.exists():
                if result_files:
                    raise ResultsError(f"{machine_file}: missing beside {result_files[0].name}")
                continue  # not a machine directory
            machine_info = _read_json(machine_file)
            sidecar = read_env_sidecar(machine_dir)
            for path in result_files:
                rows += _load_result_file(path, meta, machine_info, sidecar, stale)
    if not rows:
        raise ResultsError(f"no benchmark results found under {', '.join(map(str, paths))}")
    df = pd.DataFrame(rows)
    for col in [c for c in df.columns if c not in CORE_COLUMNS]:  # keep 4 as 4, not 4.0
        df[col] = pd.Series([r.get(col) for r in rows], dtype=object, index=df.index)
    df = df[CORE_COLUMNS + [c for c in df.columns if c not in CORE_COLUMNS]]
    df.attrs["stale"] = stale
    return df


def param_columns(df: pd.DataFrame) -> list[str]:
    """The parameter columns of a results frame (impl, device, dtype, ...), in their order."""
    return [c for c in df.columns if c not in CORE_COLUMNS]


def latest(df: pd.DataFrame) -> pd.DataFrame:
    """Only the rows of the newest commit (by commit date, then run) of each machine."""
    newest = df.sort_values("date").groupby("machine")["commit"].last()
    return df[df["commit"] == df["machine"].map(newest)].reset_index(drop=True)


def latest_per_row(df: pd.DataFrame) -> pd.DataFrame:
    """Each benchmark row at its newest measurement: for every (machine, benchmark, parameters other than
    impl), the rows of the newest commit that measured it (any implementation), every implementation from
    that one commit (so a ratio never mixes runs). A GPU box measured piecemeal (one family per run)
    shows all it has."""
    if df.empty:
        return df
    key = ["machine", "name"] + [c for c in param_columns(df) if c != "impl"]
    group = df[key].map(str).agg("\x1f".join, axis=1)
    by_date = df.assign(_g=group).sort_values("date")
    newest = by_date.groupby("_g")["commit"].last()  # every file lists every combination (NaN: not run)
    newest.update(by_date[by_date["value"].notna()].groupby("_g")["commit"].last())  # the newest that measured it
    return df[df["commit"].to_numpy() == group.map(newest).to_numpy()].reset_index(drop=True)
