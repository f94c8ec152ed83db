"""Units of benchmark values: which way is better, and how to show them to a person.

asv stores times in seconds, peakmem in bytes, and a track_ value in the unit its benchmark names
(``ms_per_token``, ``bytes``, ``tokens_per_s``, ``achieved_gb_per_s``, ...). asv itself treats every
value as lower-is-better. Here every unit's direction is written down in UNITS; a unit that is not
there has no direction, and comparing it is an error (UnitError), never a guess from its name.
"""
from __future__ import annotations

import math

LOWER, HIGHER = "lower", "higher"

# unit -> which way is better. The one table: the gate and the dashboard both read it. Add a unit
# here (and give the benchmark that unit) rather than teaching code to guess.
UNITS = {
    "seconds": LOWER, "s": LOWER, "ms": LOWER, "ms_per_token": LOWER,
    "bytes": LOWER, "peak_device_bytes": LOWER, "peak_bytes": LOWER,
    "percent_over_floor": LOWER,  # overhead above a measured floor
    "tokens_per_s": HIGHER, "gb_per_s": HIGHER, "achieved_gb_per_s": HIGHER,
    "items_per_s": HIGHER, "images_per_s": HIGHER,
    "utilization_percent": HIGHER, "gpu_utilization_percent": HIGHER,
}

_TIME_SCALES = [(1e-9, "ns"), (1e-6, "µs"), (1e-3, "ms"), (1.0, "s")]
_BYTE_SCALES = [(1, "B"), (1 << 10, "KiB"), (1 << 20, "MiB"), (1 << 30, "GiB")]
_NAMES = {"tokens_per_s": "tokens/s", "gb_per_s": "GB/s", "achieved_gb_per_s": "GB/s",
          "items_per_s": "items/s", "images_per_s": "images/s", "utilization_percent": "%",
          "gpu_utilization_percent": "%", "percent": "%",
          "percent_over_floor": "% over floor"}


class UnitError(ValueError):
    """A unit without a known direction; the message names the unit and what to do."""


def direction(unit, what: str = "") -> str:
    """LOWER or HIGHER for a unit of UNITS; UnitError for any other (named with `what`)."""
    try:
        return UNITS[unit]
    except (KeyError, TypeError):
        where = f" of {what}" if what else ""
        raise UnitError(f"unit {unit!r}{where} has no direction (better lower or higher?): give the "
                        f"benchmark one of the units in reports/units.py UNITS ({', '.join(UNITS)}) "
                        "or add its unit there") from None


def known(unit) -> bool:
    return isinstance(unit, str) and unit in UNITS


def higher_is_better(unit) -> bool:
    """True for rates and utilisation, False for times and bytes; UnitError for other units."""
    return direction(unit) == HIGHER


def worse_by(base: float, head: float, unit) -> float:
    """How many times worse `head` is than `base` (above 1: worse, below 1: better).

    Zeros and infinities are handled: equal values are 1.0 (same); a lower-is-better value rising
    from 0 (or to infinity), or a rate falling to 0, is infinitely worse (inf); the reverse is 0.0.
    NaN or negative inputs give NaN, which callers treat as "cannot compare".
    """
    if not all(isinstance(v, (int, float)) and v >= 0 for v in (base, head)):
        return math.nan  # NaN fails `v >= 0` too
    new, old = (base, head) if higher_is_better(unit) else (head, base)
    if new == old:
        return 1.0
    return math.inf if old == 0 else new / old


def better_by(a: float, b: float, unit) -> float:
    """How many times better `a` is than `b` (above 1: a better); the inverse of worse_by(b, a)."""
    return worse_by(a, b, unit)


def is_time(unit) -> bool:
    return unit in ("seconds", "s")


def is_bytes(unit) -> bool:
    return isinstance(unit, str) and (unit == "bytes" or unit.endswith("_bytes"))


def as_display(value: float, unit):
    """Map a stored value to the quantity shown: ms_per_token becomes tokens_per_s, others stay."""
    if unit == "ms_per_token":
        return (1000.0 / value if value else math.nan), "tokens_per_s"
    return value, unit


def _pick(scales, magnitude):
    chosen = scales[0]
    for scale in scales:
        if magnitude >= scale[0]:
            chosen = scale
    return chosen


def scale_for(values, unit):
    """A (divisor, label) pair that shows all `values` (already as_display'ed) of `unit` well."""
    finite = [abs(v) for v in values if v is not None and math.isfinite(v) and v != 0]
    magnitude = min(finite) if finite else 1.0
    if is_time(unit):
        return _pick(_TIME_SCALES, magnitude)
    if is_bytes(unit):
        return _pick(_BYTE_SCALES, magnitude)
    return 1.0, _NAMES.get(unit, str(unit).replace("_", " "))


def fmt(value, divisor=1.0, label="") -> str:
    """One number to three significant digits with its unit label ("2.08 ms"; "—" if missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    x = value / divisor
    text = f"{x:.3g}" if abs(x) < 1000 or not math.isfinite(x) else f"{x:,.0f}"
    return f"{text} {label}".strip()


def human(value, unit) -> str:
    """Format one stored value for a person: human(0.00208, "seconds") == "2.08 ms"."""
    shown, shown_unit = as_display(value, unit)
    return fmt(shown, *scale_for([shown], shown_unit))
