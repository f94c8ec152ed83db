"""Merge asv result files of one machine and commit measured in several runs (two GPUs of one host, a
run split by implementation) into one file, optionally relabelled to the commit that really ran (the
device tool's checkout keeps the session-start commit as HEAD).

    python -m bench.merge_results OUT.json RUN0.json RUN1.json ... [--commit HASH]

Every benchmark keeps the full parameter product in each file, with null (or NaN) where a run did not
measure a combination; the merge takes, per combination, the first file's value that is measured. Two
files that both measured one combination: the first one's is kept and the clash is reported.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

PER_PARAM = {"result", "stats_ci_99_a", "stats_ci_99_b", "stats_q_25", "stats_q_75", "stats_number",
             "stats_repeat", "samples", "profile"}


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def commit_date_ms(commit: str, repo=".") -> int | None:
    """The commit's date as asv records it (ms since the epoch), from git; None where git cannot say."""
    import subprocess
    r = subprocess.run(["git", "show", "-s", "--format=%ct", commit], cwd=repo, capture_output=True, text=True)
    return int(r.stdout.strip()) * 1000 if r.returncode == 0 and r.stdout.strip().isdigit() else None


def merge(docs: list[dict], commit: str | None = None, date: int | None = None) -> tuple[dict, list[str]]:
    """One asv results document from several of one machine, relabelled to commit (and its date, which
    orders runs in reports) when given; (merged, clashes)."""
    out = json.loads(json.dumps(docs[0]))
    cols = out["result_columns"]
    clashes = []
    for doc in docs[1:]:
        if doc["result_columns"] != cols or doc.get("version") != out.get("version"):
            raise ValueError("asv result files of different formats (result_columns or version differ)")
        for name, row in doc["results"].items():
            mine = out["results"].get(name)
            if mine is None:
                out["results"][name] = row
                continue
            p = cols.index("params")
            if mine[p] != row[p]:
                raise ValueError(f"{name}: the runs have different parameter lists")
            mine.extend([None] * (len(row) - len(mine)))
            for i, col in enumerate(cols[:len(row)]):
                if col not in PER_PARAM or row[i] is None:
                    continue
                if mine[i] is None:
                    mine[i] = [None] * len(row[i])
                for j, v in enumerate(row[i]):
                    if _missing(v):
                        continue
                    if not _missing(mine[i][j]):
                        if col == "result":
                            clashes.append(f"{name} combination {j}")
                        continue
                    mine[i][j] = v
        out["durations"] = {**doc.get("durations", {}), **out.get("durations", {})}
    if commit:
        out["commit_hash"] = commit
    if date is not None:
        out["date"] = date
    return out, clashes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.merge_results", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("inputs", type=Path, nargs="+")
    ap.add_argument("--commit", help="relabel the result to this commit (40 hex digits)")
    a = ap.parse_args(argv)
    docs = []
    for p in a.inputs:
        try:
            docs.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            print(f"merge_results: {p}: {e}", file=sys.stderr)
            return 2
    if a.commit is not None and (len(a.commit) != 40 or any(c not in "0123456789abcdef" for c in a.commit)):
        print(f"merge_results: --commit {a.commit!r} is not a 40-hex commit", file=sys.stderr)
        return 2
    date = None
    if a.commit is not None:
        date = commit_date_ms(a.commit)
        if date is None:
            print(f"merge_results: git does not know commit {a.commit} here: the result keeps its date", file=sys.stderr)
    try:
        merged, clashes = merge(docs, a.commit, date)
    except (KeyError, ValueError) as e:
        print(f"merge_results: {e}", file=sys.stderr)
        return 2
    from engine.io.atomic import atomic_write_text
    atomic_write_text(a.out, json.dumps(merged, indent=1))
    for c in clashes:
        print(f"merge_results: measured twice, the first file's value kept: {c}", file=sys.stderr)
    print(f"merge_results: {len(merged['results'])} benchmarks -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
