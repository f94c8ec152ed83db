"""Device timing for the suites: the prepared benchmark Case with its device time (the adapter's
events(): CUDA events on a GPU) and peak memory per call. suites.common re-exports these names."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from suites.config import QUICK

if TYPE_CHECKING:
    from impls.base import Impl


@dataclass
class Case:
    """One prepared benchmark case: the adapter, a callable that synchronises, one that only launches."""

    impl: "Impl"
    run: callable
    launch: callable
    first_call_s: float = math.nan

    def device_seconds(self, n: int = 20, repeats: int = 5) -> float:
        """Per-call time of `n` back-to-back launches between CUDA events (median of `repeats`);
        NaN on the cpu, where the timed call already is the device time."""
        if self.impl.device != "cuda":
            return math.nan
        n = 3 if QUICK else n
        ev = self.impl.events()
        out = []
        for _ in range(repeats):
            self.impl.synchronize()
            ev.start()
            for _ in range(n):
                self.launch()
            out.append(ev.stop() / n)
        return float(np.median(out))

    def host_seconds(self, n: int = 50, repeats: int = 20) -> float:
        """Host time per call of `n` back-to-back launches, stopped when the last call returns, before
        the device is waited for: what dispatch costs per op (for a small op on a GPU the launches
        outrun the kernels, so this is the Python and driver time of one call). The best of `repeats`
        short batches: a cost floor, robust to a loaded machine taking the CPU away mid-batch."""
        n, repeats = (10, 3) if QUICK else (n, repeats)
        out = []
        for _ in range(repeats):
            self.impl.synchronize()
            t0 = time.perf_counter()
            for _ in range(n):
                self.launch()
            out.append((time.perf_counter() - t0) / n)
        self.impl.synchronize()
        return float(min(out))

    def peak_bytes(self) -> float:
        """Peak bytes allocated during one call, over what was allocated before it (inputs are
        excluded): the engine pool's peak beside torch.cuda.max_memory_allocated; NaN when the
        implementation keeps no allocator statistics (torch and numpy on the cpu)."""
        self.impl.synchronize()
        before = self.impl.memory_stats().get("allocated_bytes")
        if before is None:
            return math.nan
        self.impl.reset_peak()
        out = self.run()
        peak = self.impl.memory_stats().get("peak_bytes")
        del out
        return math.nan if peak is None else float(peak - before)


def case(impl: "Impl", fn, *args, warmup: int = 2, **kwargs) -> Case:
    """Bind fn(*args, **kwargs) to the adapter and warm it up (the first call, which includes any
    kernel compilation, is timed apart as first_call_s)."""
    run = impl.build(fn, *args, **kwargs)
    launch = impl.build(fn, *args, sync=False, **kwargs)
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        run()
    return Case(impl, run, launch, first)


def step_seconds(lm, ids, steps: int) -> float:
    """Seconds per decode step of a loaded model (impls' start/step/tokens) over `steps` steps after
    starting on `ids`; the host reads no token in between (the tokens are read once at the end)."""
    lm.start(ids, steps + 1)
    lm.impl.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        lm.step()
    lm.impl.synchronize()
    dt = (time.perf_counter() - t0) / steps
    lm.tokens()
    return dt
