"""The article's headline claims, and the verdicts on what `taper claims` measured here.

Each claim compares the engine with PyTorch. A measured pair (engine, torch) becomes a relative
change, engine/torch - 1 (negative: the engine needs less time or memory; positive: it does more per
second), set beside the claimed change:

    "holds"                       the measured change goes the claimed way and reaches at least
                                  (1 - TOLERANCE) of the claimed size (so -52.5% or better for a
                                  claimed -65.6% load time)
    "does not hold"               anything less, including a change the other way
    "not measurable here (...)"   with the reason (no GPU, not enough memory, no NVML, ...)

This module only decides and formats; the measuring is in bench/claims.py.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

TOLERANCE = 0.2
UTILIZATION_CAVEAT = ("GPU utilisation (NVML) is the share of time in which at least one kernel was running; "
                      "it says a kernel was running, not how busy the SMs or the memory were")


@dataclass(frozen=True)
class Claim:
    key: str
    text: str  # as the article puts it
    metric: str  # what is compared, with its unit
    unit: str  # seconds, bytes, tokens_per_s, percent, allocs_per_s
    claimed_change: float  # engine/torch - 1 as claimed
    claimed_engine: float | None = None
    claimed_torch: float | None = None

    @property
    def higher_is_better(self) -> bool:
        return self.claimed_change > 0


CLAIMS = [
    Claim("load", "model load 3.2 s -> 1.1 s (-65.6%)", "checkpoint load time", "seconds", -0.656, 1.1, 3.2),
    Claim("memory", "memory -35.4%", "peak memory of load + inference", "bytes", -0.354),
    Claim("cpu_inference", "CPU inference +41.6%", "decode tokens/s on the cpu", "tokens_per_s", 0.416),
    Claim("llama7b", "LLaMA-7B 22.7 vs 18.2 tokens/s", "LLaMA-7B decode tokens/s", "tokens_per_s",
          22.7 / 18.2 - 1, 22.7, 18.2),
    Claim("gpu_util", "GPU utilisation 92% vs 78%", "GPU utilisation during decode", "percent", 92 / 78 - 1, 92.0, 78.0),
    Claim("alloc", "small-tensor allocation efficiency +300% from a memory pool",
          "small-tensor allocations per second", "allocs_per_s", 3.0),
]
BY_KEY = {c.key: c for c in CLAIMS}


@dataclass
class Measurement:
    """What was measured for one claim (or why it could not be)."""

    key: str
    engine: float | None = None
    torch: float | None = None
    device: str | None = None
    workload: str | None = None  # which model / work, stated for the reader
    reason: str | None = None  # set when not measurable here
    details: dict = field(default_factory=dict)


def fmt(value, unit) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if unit == "seconds":
        for scale, label in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
            if abs(value) >= scale:
                return f"{value / scale:.3g} {label}"
        return f"{value * 1e9:.3g} ns"
    if unit == "bytes":
        return f"{value / (1 << 30):.3g} GiB" if value >= (1 << 30) else f"{value / (1 << 20):.3g} MiB"
    if unit == "percent":
        return f"{value:.0f}%"
    if unit == "tokens_per_s":
        return f"{value:.3g} tokens/s"
    if unit == "allocs_per_s":
        return f"{value / 1e6:.3g} M/s" if value >= 1e6 else f"{value / 1e3:.3g} k/s"
    return f"{value:.3g} {unit}"


def pct(change) -> str:
    return "—" if change is None or math.isnan(change) else f"{change * 100:+.1f}%"


def verdict(claim: Claim, m: Measurement) -> dict:
    """{'verdict', 'measured_change', 'needed_change'} for one measurement."""
    needed = claim.claimed_change * (1 - TOLERANCE)
    if m.reason:
        return {"verdict": f"not measurable here ({m.reason})", "measured_change": None, "needed_change": needed}
    bad = [v for v in (m.engine, m.torch) if v is None or not math.isfinite(v) or v <= 0]
    if bad:
        return {"verdict": "not measurable here (the measurement returned no usable value)",
                "measured_change": None, "needed_change": needed}
    change = m.engine / m.torch - 1
    holds = change >= needed if claim.higher_is_better else change <= needed
    return {"verdict": "holds" if holds else "does not hold", "measured_change": change, "needed_change": needed}


def claimed_text(claim: Claim) -> str:
    if claim.claimed_engine is not None and claim.claimed_torch is not None:
        return (f"torch {fmt(claim.claimed_torch, claim.unit)} -> engine {fmt(claim.claimed_engine, claim.unit)} "
                f"({pct(claim.claimed_change)})")
    return pct(claim.claimed_change)


def measured_text(claim: Claim, m: Measurement, change) -> str:
    if m.reason or change is None:
        return "—"
    return f"torch {fmt(m.torch, claim.unit)} -> engine {fmt(m.engine, claim.unit)} ({pct(change)})"


def evaluate(measurements) -> list[dict]:
    """One row per claim, in the article's order; a claim without a measurement is not measurable."""
    got = {m.key: m for m in measurements}
    rows = []
    for claim in CLAIMS:
        m = got.get(claim.key) or Measurement(claim.key, reason="not measured in this run")
        v = verdict(claim, m)
        rows.append({"key": claim.key, "claim": claim.text, "metric": claim.metric, "unit": claim.unit,
                     "claimed": claimed_text(claim), "claimed_change": claim.claimed_change,
                     "measured": measured_text(claim, m, v["measured_change"]),
                     "engine": m.engine, "torch": m.torch, "measured_change": v["measured_change"],
                     "needed_change": v["needed_change"], "verdict": v["verdict"], "device": m.device,
                     "workload": m.workload, "reason": m.reason, "details": m.details})
    return rows


def table(rows, markdown: bool = False) -> str:
    """claim | claimed | measured here | verdict (plain aligned text, or Markdown)."""
    head = ["claim", "claimed", "measured here", "device", "verdict"]
    body = [[r["claim"], r["claimed"], r["measured"], r["device"] or "—", r["verdict"]] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    widths[-1] = 0  # the verdict may be long: no padding after it
    fmt_row = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt_row(head), fmt_row(["-" * w for w in widths[:-1]] + ["-------"])] + [fmt_row(r) for r in body])


def notes(rows) -> list[str]:
    out = [f"verdict rule: 'holds' when the measured change reaches {100 * (1 - TOLERANCE):.0f}% of the claimed one "
           "in the claimed direction (engine/torch - 1)"]
    for r in rows:
        if r["workload"]:
            out.append(f"{r['key']}: {r['workload']}")
    if any(r["key"] == "gpu_util" and not r["reason"] for r in rows):
        out.append("gpu_util: " + UTILIZATION_CAVEAT)
    return out


def to_json(rows, environment: dict | None = None, **extra) -> str:
    return json.dumps({"claims": rows, "tolerance": TOLERANCE, "environment": environment or {}, **extra},
                      indent=2, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o))
