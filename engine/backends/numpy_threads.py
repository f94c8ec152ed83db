"""Large numpy work split over the machine's cores: numpy releases the GIL inside its ufunc loops, reductions
and BLAS calls, so independent row ranges of one op run side by side on a small thread pool. torch runs its
elementwise kernels, softmax, layer norm and batched matmuls on every core; one numpy thread left the
second core idle for half of a BERT forward (all-MiniLM-L6-v2 at batch 32 on 2 cores: GELU, attention's
softmax and the layer norms were about 60% of the engine's time). ROW_THREADS.run cuts rows into pieces
(a piece index for buffers of its own); `split` and `ranges` serve elementwise passes, padding copies and
convolution bands (an ELU over EnCodec's 7.7M float32: 7.2 ms on one thread, 3.6 ms on two).

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
        # the cores to cut work for, read once: os.cpu_count() costs ~18 us a call here, and a Whisper-tiny
        # decode step on the CPU asks ~25 times
        self.cores = min(os.cpu_count() or 1, self.MAX_WORKERS)

    def workers(self, elements: int, min_elements: int | None = None) -> int:
        """How many pieces to cut work of `elements` elements into: 1 on one core, for small work (below
        min_elements, default MIN_ELEMENTS), while other processes keep a core busy, or while OpenBLAS's own
        threads still spin after products (BLAS_THREADS.spinning: a piece would share a core with one)."""
        cores = self.cores
        least = self.MIN_ELEMENTS if min_elements is None else min_elements
        if not self.enabled or cores < 2 or elements < least or BLAS_THREADS.busy() or BLAS_THREADS.spinning():
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


# elementwise passes: below SPLIT_MIN elements the pieces cost more to hand over than they save (an add of
# 256k float32: 135 us on one thread, 85 us on two; a SiLU of 256k: 295 and 286 us, of 512k 820 and 520 us)
SPLIT_MIN = 1 << 19
SPLIT_ALIGN = 1 << 12  # elements per piece boundary of a flat split (whole cache lines and SIMD blocks)


def pieces(work: int) -> int:
    """How many pieces ROW_THREADS cuts `work` elements into at the split's threshold (SPLIT_MIN, read now)."""
    return ROW_THREADS.workers(work, SPLIT_MIN)


def ranges(fn, n: int, work: int, align: int = 1, min_work: int | None = None) -> None:
    """fn(lo, hi) over contiguous ranges of range(n) (bounds multiples of align), one per core on ROW_THREADS
    when `work` (elements touched) is min_work (default SPLIT_MIN, read at the call) or more and the machine
    is idle; else fn(0, n) here."""
    blocks = -(-n // align)
    ROW_THREADS.run(lambda lo, hi, piece: fn(lo * align, min(n, hi * align)), blocks,
                    pieces(work) if min_work is None else ROW_THREADS.workers(work, min_work))


def split(fn, *arrays) -> None:
    """fn(*pieces) over matching pieces of arrays along their first dim (flat views of C-contiguous memory, or
    rows; fn writes its results into its pieces, e.g. (x, out)), through `ranges`."""
    align = SPLIT_ALIGN if arrays[0].ndim == 1 else 1
    ranges(lambda lo, hi: fn(*(a[lo:hi] for a in arrays)), arrays[0].shape[0], arrays[0].size, align)
