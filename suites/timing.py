"""Device timing for the suites: wall-clock and CUDA-event timers, and the prepared benchmark Case
with its device time and peak memory per call. suites.common re-exports these names."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from suites.config import QUICK

if TYPE_CHECKING:
    from suites.common import Impl


class _WallEvents:
    """perf_counter pairs, for the cpu."""

    def start(self):
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        return time.perf_counter() - self._t0


class _CudaEvents:
    """CUDA events recorded on the stream the implementation uses; stop() waits and returns seconds."""

    def __init__(self, make_event, stream=None):
        self._make, self._stream = make_event, stream

    def start(self):
        self._a, self._b = self._make(), self._make()
        self._record(self._a)

    def _record(self, ev):
        if self._stream is None:
            ev.record()
        else:
            ev.record(self._stream)

    def stop(self) -> float:
        self._record(self._b)
        self._b.synchronize()
        return self._a_elapsed()

    def _a_elapsed(self) -> float:
        if hasattr(self._a, "elapsed_time"):  # torch.cuda.Event: ms
            return self._a.elapsed_time(self._b) / 1e3
        import cupy  # cupy.cuda.Event: module-level get_elapsed_time, ms
        return cupy.cuda.get_elapsed_time(self._a, self._b) / 1e3


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
