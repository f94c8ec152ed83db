"""OpenBLAS's thread count for small products on a busy machine (numpy backend: linear, matmul, attention,
the LSTM loop)."""
from __future__ import annotations

import os
import time


class _BlasThreads:
    """OpenBLAS (numpy's BLAS) on one thread for small products on a busy machine: a GEMM/GEMV of under SMALL_GEMM multiply-adds
    (a decode step's linears, 1 x 384 x 1536) takes tens of microseconds, and waking OpenBLAS's other threads
    for it costs as much; on a loaded machine (cores shared with other processes) the wake-ups made the
    median of such a call 4x and its mean 100x slower than one thread (Whisper-tiny's decode step on 2
    shared cores: 177 ms with OpenBLAS's 2 threads, 89 ms with one). Large products keep every thread.
    The thread count goes through OpenBLAS's own openblas_set_num_threads (found once by threadpoolctl when
    it is installed; without it, or with another BLAS, nothing changes)."""

    SMALL_GEMM = 1 << 21
    # only while the machine is busy: a 1-minute load average of at least its core count (re-read every
    # BUSY_EVERY s). On an idle machine OpenBLAS's threads win even for these (each core's cache and memory
    # bandwidth: Whisper-tiny's decode step 13.2 ms with them, 14.5 ms on one thread)
    BUSY_EVERY = 0.5

    def __init__(self):
        self._set = None
        self.threads = 1
        self._busy, self._checked = False, -1.0

    def busy(self) -> bool:
        now = time.monotonic()
        if now - self._checked > self.BUSY_EVERY:
            self._checked = now
            try:
                self._busy = os.getloadavg()[0] >= (os.cpu_count() or 1)
            except OSError:  # no load average on this system: assume a shared machine
                self._busy = True
        return self._busy

    def _find(self):
        self._set = False
        try:
            from threadpoolctl import ThreadpoolController
            libs = [c for c in ThreadpoolController().select(internal_api="openblas").lib_controllers
                    if c.threading_layer == "pthreads"]  # OpenMP builds have per-thread limits of their own
            fns = [c._get_symbol("openblas_set_num_threads") for c in libs]  # a private threadpoolctl helper
        except Exception:  # noqa: BLE001 - no threadpoolctl (or one without _get_symbol): leave BLAS alone
            return
        if libs and all(fns):
            self._fns, self.threads = fns, max(c.num_threads for c in libs)
            self._set = True

    def one(self, macs: int) -> bool:
        """Set one thread when a product of `macs` multiply-adds is small (then call restore())."""
        if macs >= self.SMALL_GEMM:
            return False
        if self._set is None:
            self._find()
        if not self._set or self.threads == 1 or not self.busy():
            return False
        for f in self._fns:
            f(1)
        return True

    def restore(self) -> None:
        for f in self._fns:
            f(self.threads)


BLAS_THREADS = _BlasThreads()
