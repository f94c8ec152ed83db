"""Per-op time of an engine backend: each named method of its class wrapped in place so that its outermost call
(not the calls it makes of the others) adds its wall time to a total under a key of the caller's choosing. The
measurement scripts' per-op profiles (measurements/cpu/session*_op_profile.py and the like) use it.

    tot, cnt = time_backend_ops(type(engine.backend("cpu")), ["linear", "conv"], key=lambda name, args: name)
"""
from __future__ import annotations

import collections
import time


def time_backend_ops(cls, names, key=lambda name, args: name):
    """Wrap cls's methods `names` (those it has) in place; returns (tot: key -> seconds, cnt: key -> calls), which
    every outermost call of a wrapped method updates under key(method name, its positional arguments)."""
    tot, cnt, depth = collections.defaultdict(float), collections.Counter(), [0]
    for n in names:
        if not hasattr(cls, n):
            continue

        def wrapped(self, *a, _f=getattr(cls, n), _n=n, **k):
            if depth[0]:
                return _f(self, *a, **k)
            depth[0] += 1
            t = time.perf_counter()
            try:
                return _f(self, *a, **k)
            finally:
                depth[0] -= 1
                kk = key(_n, a)
                tot[kk] += time.perf_counter() - t
                cnt[kk] += 1
        setattr(cls, n, wrapped)
    return tot, cnt
