"""Tensor-parallel results (bench/tp_decode.py's JSON) in `taper report`: the multi-process runs that an
asv benchmark process does not host. A results directory may hold `tp_decode*.json` files beside its
benchmarks.json; each becomes rows of one table (decode speed, TP=N against TP=1 equality, scaling).
"""
from __future__ import annotations

import json
from pathlib import Path

HEAD = ["file", "model", "dtype", "tp", "check", "result"]


def find(dirs) -> list[tuple[Path, dict]]:
    """(path, data) of every bench/tp_decode.py result file in the results directories."""
    out = []
    for d in dirs:
        for p in sorted(Path(d).glob("tp_decode*.json")):
            try:
                data = json.loads(p.read_text())
            except (OSError, ValueError):
                continue  # not ours or unreadable: the asv results are what the report is about
            if isinstance(data, dict) and data.get("bench") == "tp_decode":
                out.append((p, data))
    return out


def _cell(text: str) -> tuple:
    return ("", text, [])


def rows(path: Path, data: dict) -> list[list]:
    """One row per speed run, per (shape, dtype) equality check, and per scaling figure."""
    name, tp = path.name, data.get("tp")
    out = []
    s = data.get("speed") or {}
    if s.get("decode_tokens_per_s"):
        res = (f"{s['decode_tokens_per_s']:.1f} tok/s on {s.get('card', '?')} x{tp}, "
               f"{s.get('achieved_gb_per_s', 0):.0f} GB/s per GPU "
               f"({100 * s.get('fraction_of_roofline', 0):.0f}% of the copy roofline "
               f"{s.get('roofline_tokens_per_s', 0):.1f} tok/s); all-reduce "
               f"{s.get('allreduce_us_each_graph', 0):.1f} us each in the graph")
        out.append([name, s.get("model", ""), s.get("dtype", ""), str(tp), "decode batch 1", res])
    elif s.get("skipped") or s.get("error"):
        out.append([name, s.get("model", ""), "", str(tp), "decode batch 1", s.get("skipped") or s.get("error")])
    for e in data.get("equal", []):
        for dtype, c in (e.get("compare") or {}).items():
            res = (f"greedy tokens {'identical' if c.get('greedy_tokens_equal') else 'differ at ' + str(c.get('first_difference'))}"
                   f"; logits max abs {c.get('logits_max_abs_err', float('nan')):.3g}, cosine {c.get('logits_cosine', float('nan')):.6f}")
            out.append([name, e.get("model", ""), dtype, str(e.get("tp", tp)), f"TP={e.get('tp', tp)} vs TP=1", res])
        sc = e.get("scaling") or {}
        if sc.get("speedup"):
            out.append([name, e.get("model", ""), "float16", str(e.get("tp", tp)), f"TP={e.get('tp', tp)} / TP=1 decode",
                        f"{sc['speedup']:.2f}x"])
    return out


def table(dirs) -> dict | None:
    """The dashboard's table dict (head, body of (class, text, marks) cells, caption); None without files."""
    found = find(dirs)
    if not found:
        return None
    body = [[_cell(str(x)) for x in r] for p, d in found for r in rows(p, d)]
    return {"head": HEAD, "body": body,
            "caption": "engine.distributed (bench/tp_decode.py): NCCL, one process per GPU, captured decode"}
