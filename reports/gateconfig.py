"""gate.toml: read it, and check every key's presence, type and range with a one-line error.

[perf] and [[perf.override]] configure reports.gate; [drift] and [[drift.override]] reports.drift.
Every key of [perf] and [drift] must be present (the shipped reports/gate.toml documents them).
"""
from __future__ import annotations

import fnmatch
import math
import tomllib
from pathlib import Path


class GateUsageError(ValueError):
    """Bad configuration or inputs (exit code 2); the message names the file or argument."""


def _number(lo, hi=math.inf, lo_open=False, hi_open=False):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return "a number"
        if v < lo or (lo_open and v == lo) or v > hi or (hi_open and v == hi):
            left, right = "(" if lo_open else "[", ")" if hi_open or hi == math.inf else "]"
            return f"a number in {left}{lo:g}, {hi:g}{right}"
        return None
    return check


def _integer(lo):
    def check(v):
        return None if isinstance(v, int) and not isinstance(v, bool) and v >= lo \
            else f"an integer >= {lo}"
    return check


def _boolean(v):
    return None if isinstance(v, bool) else "true or false"


def _string(v):
    return None if isinstance(v, str) and v else "a non-empty string"


def _patterns(v):
    ok = isinstance(v, list) and v and all(isinstance(x, str) and x for x in v)
    return None if ok else 'a non-empty list of strings (e.g. ["engine"])'


PERF = {  # key -> check (returns None when the value is fine, else what it should be)
    "factor": _number(1.0), "alpha": _number(0.0, 1.0, lo_open=True, hi_open=True),
    "min_samples": _integer(2), "confirm": _boolean, "rerun_rounds": _integer(1),
    "fail_on_broken": _boolean, "fail_on_missing": _boolean,
    "fail_on_nothing_compared": _boolean, "impls": _patterns,
}
PERF_OVERRIDE = {"match": _string, "factor": PERF["factor"], "alpha": PERF["alpha"],
                 "min_samples": PERF["min_samples"], "ignore": _boolean}
DRIFT = {
    "max_abs_factor": _number(1.0), "max_abs_slack": _number(0.0),
    "max_rel_factor": _number(1.0), "max_rel_slack": _number(0.0),
    "cosine_drop": _number(0.0), "fail_on_missing_layer": _boolean,
}
DRIFT_OVERRIDE = {"match": _string} | {k: v for k, v in DRIFT.items()}
PERF_KEYS, DRIFT_KEYS = set(PERF), set(DRIFT)


def _check_table(path, where, table, spec, required):
    if not isinstance(table, dict):
        raise GateUsageError(f"{path}: [{where}] should be a table")
    unknown = set(table) - set(spec) - {"override"}
    if unknown:
        raise GateUsageError(f"{path}: unknown keys {sorted(unknown)} in [{where}]; "
                             f"allowed: {sorted(spec)}")
    missing = required - set(table)
    if missing:
        raise GateUsageError(f"{path}: missing keys {sorted(missing)} in [{where}]")
    for key, value in table.items():
        if key == "override":
            continue
        want = spec[key](value)
        if want:
            raise GateUsageError(f"{path}: [{where}] {key} = {value!r} should be {want}")


def load_config(path) -> dict:
    """Read and check gate.toml: [perf] (+ [[perf.override]]) and [drift] (+ [[drift.override]])."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            conf = tomllib.load(f)
    except IsADirectoryError:
        raise GateUsageError(f"{path}: is a directory, not a gate config file") from None
    except OSError as e:
        raise GateUsageError(f"{path}: cannot read gate config ({e.strerror})") from e
    except tomllib.TOMLDecodeError as e:
        raise GateUsageError(f"{path}: not valid TOML ({e})") from e
    unknown = set(conf) - {"perf", "drift"}
    if unknown:
        raise GateUsageError(f"{path}: unknown sections {sorted(unknown)}; allowed: drift, perf")
    for section, spec, over_spec in (("perf", PERF, PERF_OVERRIDE),
                                     ("drift", DRIFT, DRIFT_OVERRIDE)):
        if section not in conf:
            raise GateUsageError(f"{path}: missing section [{section}]")
        table = conf[section]
        _check_table(path, section, table, spec, set(spec))
        overrides = table.get("override", [])
        if not isinstance(overrides, list):
            raise GateUsageError(f"{path}: {section}.override should be [[{section}.override]] "
                                 "tables")
        for i, over in enumerate(overrides):
            _check_table(path, f"{section}.override #{i + 1}", over, over_spec, {"match"})
    return conf


def first_match(overrides, name: str) -> dict:
    """The keys of the first override whose `match` (fnmatch pattern) fits `name`, without match."""
    for over in overrides:
        if fnmatch.fnmatchcase(name, over["match"]):
            return {k: v for k, v in over.items() if k != "match"}
    return {}
