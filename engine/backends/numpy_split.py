"""Large elementwise passes of the numpy backend split over the machine's cores while it is idle. numpy runs a
ufunc on one thread (it releases the GIL for large arrays, so threads of this process can run two at once);
torch runs its elementwise ops on every core. On this 2-core machine a pass over 7.7M float32 (EnCodec's
32 channels at 240k samples) takes ELU 7.2 ms on one thread and 3.6 ms on two, an add 4.6 ms against torch's
2.8 ms. On a busy machine (engine.backends.blas_threads' measure, the one OpenBLAS's thread count follows) a
second thread waits behind the other process, so the pass stays on this thread, as before."""
from __future__ import annotations

import contextvars
import os
from concurrent.futures import ThreadPoolExecutor

from engine.backends.blas_threads import BLAS_THREADS

SPLIT_MIN = 1 << 19  # elements: below this the pieces cost more to hand over than they save (an add of 256k
# float32: 135 us on one thread, 85 us on two; a SiLU of 256k: 295 and 286 us, of 512k 820 and 520 us)
_ALIGN = 1 << 12  # elements per piece boundary (whole cache lines and SIMD blocks)
_pool = None


def _workers() -> int:
    return min(os.cpu_count() or 1, 8)


def split(fn, *arrays) -> None:
    """fn(*pieces) over matching pieces of arrays along their first dim (flat views of C-contiguous memory, or
    rows; fn writes its results into its pieces, e.g. (x, out)): the pieces on threads when the arrays hold
    SPLIT_MIN elements or more and the machine is idle, else fn(*arrays) here. Each piece runs in a copy of
    this thread's context (numpy's error state is a context variable)."""
    align = _ALIGN if arrays[0].ndim == 1 else 1
    ranges(lambda lo, hi: fn(*(a[lo:hi] for a in arrays)), arrays[0].shape[0], arrays[0].size, align)


def ranges(fn, n: int, work: int, align: int = 1) -> None:
    """fn(lo, hi) over contiguous ranges of range(n), one per core (bounds multiples of align), on threads when
    `work` (elements touched) is SPLIT_MIN or more and the machine is idle; else fn(0, n) here."""
    global _pool
    parts = _workers()
    if work < SPLIT_MIN or parts < 2 or n < parts or BLAS_THREADS.busy():
        fn(0, n)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(parts - 1, thread_name_prefix="taper-split")
    step = -(-(-(-n // parts)) // align) * align
    futures = [_pool.submit(contextvars.copy_context().run, fn, i, min(n, i + step)) for i in range(step, n, step)]
    try:
        fn(0, min(n, step))
    finally:
        for f in futures:
            f.result()
