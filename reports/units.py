"""Units of benchmark values: which way is better, and how to show them to a person.

asv stores times in seconds, peakmem in bytes, and a track_ value in the unit its benchmark names
(``ms_per_token``, ``bytes``, ``tokens_per_s``, ``achieved_gb_per_s``, ...). asv itself treats every
value as lower-is-better; here a unit ending in ``_per_s`` is a rate, and higher is better.
"""
from __future__ import annotations

import math

_TIME_SCALES = [(1e-9, "ns"), (1e-6, "µs"), (1e-3, "ms"), (1.0, "s")]
_BYTE_SCALES = [(1, "B"), (1 << 10, "KiB"), (1 << 20, "MiB"), (1 << 30, "GiB")]
_RATE_NAMES = {"tokens_per_s": "tokens/s", "gb_per_s": "GB/s", "achieved_gb_per_s": "GB/s",
               "items_per_s": "items/s", "images_per_s": "images/s"}


def higher_is_better(unit) -> bool:
    """True for rates (``*_per_s``), False for times, bytes and ``ms_per_token``."""
    return isinstance(unit, str) and unit.endswith("_per_s")


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
    finite = [abs(v) for v in values if v is not None and not math.isnan(v) and v != 0]
    magnitude = min(finite) if finite else 1.0
    if is_time(unit):
        return _pick(_TIME_SCALES, magnitude)
    if is_bytes(unit):
        return _pick(_BYTE_SCALES, magnitude)
    return 1.0, _RATE_NAMES.get(unit, str(unit).replace("_", " "))


def fmt(value, divisor=1.0, label="") -> str:
    """One number to three significant digits with its unit label ("2.08 ms"; "—" if missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    x = value / divisor
    text = f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return f"{text} {label}".strip()


def human(value, unit) -> str:
    """Format one stored value for a person: human(0.00208, "seconds") == "2.08 ms"."""
    shown, shown_unit = as_display(value, unit)
    return fmt(shown, *scale_for([shown], shown_unit))
