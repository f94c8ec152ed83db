"""Numerical drift: did a `taper verify` parity report get worse between BASE and HEAD?

A parity report is JSON::

    {"layers": [{"name": "model.layers.0.self_attn", "max_abs": 1.2e-6, "max_rel": 3e-5,
                 "cosine": 0.9999999, "passed": true}, ...],
     "summary": {"max_abs": ..., "max_rel": ..., "cosine": ..., "passed": true, ...}}

A metric that is absent is not compared. `taper verify` writes a non-finite error (an infinite
max_abs, a NaN cosine) as null, so null, NaN or infinity in a HEAD metric is always a failure,
whatever BASE had: an error that is no longer a number cannot pass. A layer, or the summary, is
also worse when HEAD's max_abs exceeds BASE's x max_abs_factor + max_abs_slack (same for max_rel),
when its cosine falls more than cosine_drop below BASE's, when it holds more NaN or infinite values
("nan", "inf" counts) than on BASE, when it passed on BASE and fails on HEAD, or when a BASE layer
is gone from HEAD (fail_on_missing_layer). Tolerances come from gate.toml's [drift] and the first
matching [[drift.override]].
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .gateconfig import DRIFT_KEYS, first_match

METRICS = ("max_abs", "max_rel", "cosine")
COUNTS = ("nan", "inf")


class VerifyFileError(ValueError):
    """A parity JSON that cannot be read; the message names the file and the fault."""


@dataclass
class Drift:
    report: str
    layer: str
    metric: str
    base: object
    head: object
    limit: object


def load_verify(path) -> dict:
    """Read a parity JSON into {layer name: metrics}; the summary is the layer "<summary>"."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise VerifyFileError(f"{path}: cannot read ({e.strerror})") from e
    except json.JSONDecodeError as e:
        raise VerifyFileError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
        raise VerifyFileError(f"{path}: expected an object with a 'layers' list")
    layers = {}
    for i, layer in enumerate(data["layers"]):
        if not isinstance(layer, dict) or not isinstance(layer.get("name"), str):
            raise VerifyFileError(f"{path}: layers[{i}] has no string 'name'")
        for key in METRICS + COUNTS:
            v = layer.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise VerifyFileError(
                    f"{path}: layer {layer['name']!r} {key} is not a number: {v!r}")
        layers[layer["name"]] = layer
    summary = data.get("summary")
    if summary is not None and not isinstance(summary, dict):
        raise VerifyFileError(f"{path}: 'summary' should be an object")
    if summary:
        layers["<summary>"] = summary
    return layers


def _tolerances(tol: dict, layer: str) -> dict:
    return {k: tol[k] for k in DRIFT_KEYS} | first_match(tol.get("override", []), layer)


def _finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def compare_layers(base: dict, head: dict, tol: dict, report: str = "") -> list[Drift]:
    """The Drift findings between two load_verify() results."""
    found = []
    for name, b in base.items():
        t = _tolerances(tol, name)
        h = head.get(name)
        if h is None:
            if t["fail_on_missing_layer"]:
                found.append(Drift(report, name, "layer", "present", "missing", "present"))
            continue
        for metric in METRICS:
            if metric in h and not _finite(h[metric]):
                found.append(Drift(report, name, metric, b.get(metric), h[metric], "finite"))
        for metric in ("max_abs", "max_rel"):
            if _finite(b.get(metric)) and _finite(h.get(metric)):
                limit = b[metric] * t[f"{metric}_factor"] + t[f"{metric}_slack"]
                if h[metric] > limit:
                    found.append(Drift(report, name, metric, b[metric], h[metric], limit))
        for count in COUNTS:
            if _finite(h.get(count)) and h[count] > (b.get(count) or 0):
                found.append(Drift(report, name, count, b.get(count) or 0, h[count],
                                   b.get(count) or 0))
        if _finite(b.get("cosine")) and _finite(h.get("cosine")):
            limit = b["cosine"] - t["cosine_drop"]
            if h["cosine"] < limit:
                found.append(Drift(report, name, "cosine", b["cosine"], h["cosine"], limit))
        if b.get("passed") is True and h.get("passed") is False:
            found.append(Drift(report, name, "passed", True, False, True))
    return found


def compare_verify(base_path, head_path, tol: dict) -> list[Drift]:
    """Compare two parity JSON files, or two directories of them paired by file name."""
    base_path, head_path = Path(base_path), Path(head_path)
    if base_path.is_dir() != head_path.is_dir():
        raise VerifyFileError(f"{base_path} and {head_path}: give two files or two directories")
    if not base_path.is_dir():
        return compare_layers(load_verify(base_path), load_verify(head_path), tol, head_path.name)
    found = []
    for b in sorted(base_path.glob("*.json")):
        h = head_path / b.name
        if h.exists():
            found += compare_layers(load_verify(b), load_verify(h), tol, b.name)
        elif tol["fail_on_missing_layer"]:
            found.append(Drift(b.name, "<report>", "file", "present", "missing", "present"))
    return found
