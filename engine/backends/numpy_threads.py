"""Large numpy work split over the machine's cores: numpy releases the GIL inside its ufunc loops, reductions
and BLAS calls, so independent row ranges of one op run side by side on a small thread pool. torch runs its
elementwise kernels, softmax, layer norm and batched matmuls on every core; one numpy thread left the
second core idle for half of a BERT forward (all-MiniLM-L6-v2 at batch 32 on 2 cores: GELU, attention's
softmax and the layer norms were about 60% of the engine's time).

Only while the machine is otherwise idle (BLAS_THREADS.busy(), the test that OpenBLAS's thread count
follows): on a machine whose other core is taken, the caller would wait at the join for a piece parked
behind another process. Elementwise pieces (GELU, SiLU, layer norm's chunks) compute exactly what the
one-thread loop computes, so their bits do not depend on the split; products (linear's row blocks, attention's
blocks) run OpenBLAS on one thread in each piece, whose rounding may differ from OpenBLAS's own threads' in
the last bit, as any change of its thread count does."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from engine.backends.blas_threads import BLAS_THREADS
from engine.backends.numpy_errstate import _quiet


class _RowThreads:
    # below MIN_ELEMENTS elements of work the hand-off to the pool (tens of microseconds) outweighs the
    # gain; MAX_WORKERS caps the pool on large machines (memory-bound passes stop scaling)
    MIN_ELEMENTS = 1 << 17
    MAX_WORKERS = 8

    def __init__(self):
        self._pool, self._pid = None, None
        self.enabled = True  # False: everything on the calling thread (A/B measurements, debugging)

    def workers(self, elements: int) -> int:
        """How many pieces to cut work of `elements` elements into: 1 on one core, for small work, or while
        other processes keep a core busy."""
        cores = min(os.cpu_count() or 1, self.MAX_WORKERS)
        if not self.enabled or cores < 2 or elements < self.MIN_ELEMENTS or BLAS_THREADS.busy():
            return 1
        return cores

    def run(self, fn, n: int, pieces: int) -> None:
        """fn(lo, hi, piece) over [0, n) cut into `pieces` contiguous ranges (piece: the range's index, for
        buffers of its own), the first on the calling thread, the
        others on the pool (each under numpy's "ignore" error state, as the backend's ops run); the first
        exception of any piece is raised after all have finished."""
        pieces = max(1, min(pieces, n))
        if pieces == 1:
            fn(0, n, 0)
            return
        bounds = [n * i // pieces for i in range(pieces + 1)]
        pool = self._get()
        futs = [pool.submit(_quiet, fn, bounds[i], bounds[i + 1], i) for i in range(1, pieces)]
        try:
            fn(bounds[0], bounds[1], 0)
        finally:
            errors = [f.exception() for f in futs]
        for e in errors:
            if e is not None:
                raise e

    def _get(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pid != os.getpid():  # a forked child has no worker threads: make its own
            self._pool = ThreadPoolExecutor(self.MAX_WORKERS - 1, thread_name_prefix="taper-rows")
            self._pid = os.getpid()
        return self._pool


ROW_THREADS = _RowThreads()
