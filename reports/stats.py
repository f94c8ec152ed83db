"""asv's significance rule: `is_different(samples_a, samples_b, stats_a, stats_b, p_threshold)`.

With raw samples on both sides and enough of them for the test to reach p_threshold, it is the
two-sided Mann-Whitney U test (exact below 21 samples a side, normal approximation above, ties
broken conservatively); otherwise it falls back to "the 99% confidence intervals do not overlap".
We use asv's own functions (asv/_stats.py) when asv is importable and an exact copy of the same
algorithm below otherwise, so `taper gate` decides the way `asv compare` would.
"""
from __future__ import annotations

import math
from math import comb

try:  # asv's own implementation
    from asv._stats import is_different as asv_is_different
    from asv._stats import mann_whitney_u as asv_mann_whitney_u
except ImportError:  # asv not installed: the copy below is used
    asv_is_different = asv_mann_whitney_u = None


def _u_and_ties(x, y):
    u = sum(1 for a in x for b in y if a > b)
    ties = sum(1 for a in x for b in y if a == b)
    return u, ties


def _orderings(m, n, u, memo):
    """Number of orderings of m x's and n y's with statistic u (Mann and Whitney 1947)."""
    if u < 0:
        return 0
    if m == 0 or n == 0:
        return 1 if u == 0 else 0
    key = (m, n, u)
    if key not in memo:
        memo[key] = _orderings(m, n - 1, u, memo) + _orderings(m - 1, n, u - n, memo)
    return memo[key]


def _cdf(m, n, u, memo):
    total = comb(m + n, m)
    return sum(_orderings(m, n, k, memo) / total for k in range(u + 1))


def mann_whitney_u(x, y, method="auto"):
    """Two-sided Mann-Whitney U test as asv does it; returns (u, p)."""
    m, n = len(x), len(y)
    if method == "auto":
        method = "normal" if max(m, n) > 20 else "exact"
    u, ties = _u_and_ties(x, y)
    if u <= m * n // 2 and u + ties >= m * n // 2:  # conservative tie breaking
        ties = m * n // 2 - u
    ux1 = min(u, m * n - u)
    ux2 = min(u + ties, m * n - (u + ties))
    if ux1 >= ux2:
        ux = ux1
    else:
        u, ux = u + ties, ux2
    if method == "exact":
        memo = {}
        p = _cdf(m, n, ux, memo) + (1.0 - _cdf(m, n, max(m * n // 2, m * n - ux - 1), memo))
    elif method == "normal":
        z = (ux - m * n / 2) / math.sqrt(m * n * (m + n + 1) / 12)
        p = 2 * 0.5 * math.erfc(-z / math.sqrt(2))
    else:
        raise ValueError(f"unknown method {method!r}; use 'auto', 'exact' or 'normal'")
    return u, p


def is_different_fallback(samples_a, samples_b, stats_a, stats_b, p_threshold=0.002) -> bool:
    """asv._stats.is_different, reimplemented: True when the difference is significant."""
    if samples_a is not None and samples_b is not None:
        a = [x for x in samples_a if not math.isnan(x)]
        b = [x for x in samples_b if not math.isnan(x)]
        if 1 / comb(len(a) + len(b), min(len(a), len(b))) < p_threshold:
            return mann_whitney_u(a, b)[1] < p_threshold
    ci_a = (stats_a["ci_99_a"], stats_a["ci_99_b"])
    ci_b = (stats_b["ci_99_a"], stats_b["ci_99_b"])
    return not (ci_a[1] >= ci_b[0] and ci_a[0] <= ci_b[1])


is_different = asv_is_different or is_different_fallback
IMPLEMENTATION = "asv._stats" if asv_is_different else "reports.stats (copy of asv's rule)"
