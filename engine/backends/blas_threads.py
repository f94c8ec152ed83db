"""OpenBLAS's thread count for the numpy backend: one thread while other processes keep a core busy (linear,
matmul, attention, convolutions, the LSTM loop), every thread while the machine is idle."""
from __future__ import annotations

import contextlib
import os
import time


class _BlasThreads:
    """OpenBLAS (numpy's BLAS) on one thread while other processes keep a core busy. A decode step's GEMVs (1 x 384
    x 1536) take tens of microseconds, and waking OpenBLAS's other threads for them costs as much; on a loaded
    machine (cores shared with other processes) the wake-ups made the median of such a call 4x and its mean
    100x slower than one thread (Whisper-tiny's decode step on 2 shared cores: 177 ms with OpenBLAS's 2
    threads, 89 ms with one). Large products fare no better there: every GEMM ends in a barrier that waits
    for a thread the scheduler has parked behind the other process (EnCodec's encode+decode, its convs'
    band GEMMs of ~17M multiply-adds, 1.7 s with one thread and 5-8 s with two on 2 cores beside one busy
    process; Whisper-tiny's encoder 0.6 s with one, 0.5-2.5 s with two). So products under BUSY_GEMM
    multiply-adds (all of them by default) take one thread while the machine is busy, and every thread
    while it is not. The thread count goes through OpenBLAS's own openblas_set_num_threads (found once by
    threadpoolctl when it is installed; without it, or with another BLAS, nothing changes)."""

    BUSY_GEMM = float("inf")
    # busy: other processes (not this one: its own BLAS and OpenMP threads do not count) used at least
    # BUSY_OTHERS cores over the last BUSY_EVERY s. On an idle machine OpenBLAS's threads win even for small
    # products (each core's cache and memory bandwidth: Whisper-tiny's decode step 13.2 ms with them, 14.5 ms
    # on one thread; EnCodec's LSTM step, a 4 MiB W_hh, 75 us on two threads (half the weight in each core's
    # L2) against 195 us on one). The 1-minute load average, used before, counts this
    # process's own threads: a benchmark that had just run torch's two OpenMP threads, or OpenBLAS's, saw
    # the machine as busy and ran its small products on one thread on an idle machine.
    BUSY_EVERY = 0.5
    BUSY_OTHERS = 0.5
    # busy at once, idle only after IDLE_FOR s without a busy window: other processes come and go (a
    # benchmark's runs), and a second thread parked behind one that came back costs 2-4x (Whisper-tiny's
    # encoder 1.7-1.9 s against 0.5-0.9 s, deciding on the last 0.5 s alone), one thread on an idle
    # machine at most 2x
    IDLE_FOR = 1.5

    # OpenBLAS's worker threads spin (a whole core each) for THREAD_TIMEOUT, 2^28 cycles (~0.1 s), after each
    # product they ran before they sleep; work cut into pieces on ROW_THREADS meanwhile shares a core with a
    # spinner (an LSTM's input product right after the previous layer's recurrence: 18.5 ms in two pieces
    # against 9.3 ms on OpenBLAS's own threads; an ELU of 7.7M right after a 2-thread GEMM 12.8 against 7.5 ms)
    SPIN_S = 0.1

    def __init__(self):
        self._threaded_at = float("-inf")  # when a caller last said OpenBLAS ran a product on several threads
        self._set = None
        self.threads = 1
        self._depth = 0  # nested one() calls (a conv's matmul inside the conv's own scope)
        self._busy, self._checked = True, -1.0  # busy (one thread, the safe side) until a window is measured
        self._sample = None  # (monotonic s, machine busy CPU s, this process's CPU s, pid) of the last check
        self._idle_since = None  # start of the run of idle windows up to the last check

    def busy(self) -> bool:
        now = time.monotonic()
        if now - self._checked > self.BUSY_EVERY:
            self._checked = now
            if self._sample is not None and self._sample[3] != os.getpid():  # a forked child: its own clock
                self._sample = self._idle_since = None
            try:
                sample = (now,) + cpu_seconds() + (os.getpid(),)
            except (OSError, ValueError, IndexError):  # no /proc (not Linux): the load average, as before
                sample = None
                try:
                    self._busy = os.getloadavg()[0] >= (os.cpu_count() or 1)
                except OSError:  # no load average on this system: assume a shared machine
                    self._busy = True
            if sample is not None:
                if self._sample is None:  # no window yet: the threads running now, this one aside
                    try:
                        self._busy = others_running() >= 1
                    except (OSError, ValueError, IndexError):
                        pass
                    self._idle_since = None if self._busy else now - self.IDLE_FOR
                self.update(sample)
        return self._busy

    def update(self, sample: tuple) -> bool:
        """Take a (monotonic s, machine busy CPU s, own CPU s, pid) sample: busy when other processes used
        BUSY_OTHERS cores since the last one, and until IDLE_FOR s of idle windows have passed."""
        if self._sample is not None:
            if others_cores(self._sample, sample) >= self.BUSY_OTHERS:
                self._idle_since = None
            elif self._idle_since is None:
                self._idle_since = self._sample[0]
            self._busy = self._idle_since is None or sample[0] - self._idle_since < self.IDLE_FOR
        self._sample = sample
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

    def one(self, macs: int, force: bool = False) -> bool:
        """Set one thread for a product of `macs` multiply-adds on a busy machine, when it is under
        BUSY_GEMM, or whatever the load with force (the caller runs its products side by side on threads of its own); then call restore()."""
        if macs >= self.BUSY_GEMM and not force:
            return False
        if self._depth:  # inside another op's one-thread scope: stays one thread until the outer restore
            self._depth += 1
            return True
        if self._set is None:
            self._find()
        if not self._set or self.threads == 1 or not (force or self.busy()):
            return False
        for f in self._fns:
            f(1)
        self._depth = 1
        return True

    @contextlib.contextmanager
    def forced_one(self):
        """OpenBLAS on one thread for the block, whatever the load: one(0, force=True) ... restore(), for
        callers that run their products side by side on threads of their own (numpy_threads)."""
        single = self.one(0, force=True)
        try:
            yield
        finally:
            if single:
                self.restore()

    def threaded(self) -> None:
        """Say that OpenBLAS has just run products on its own threads (which now spin for SPIN_S)."""
        self._threaded_at = time.monotonic()

    def spinning(self) -> bool:
        """Whether OpenBLAS's threads may still spin after products a caller reported (threaded())."""
        return time.monotonic() - self._threaded_at < self.SPIN_S

    def single(self) -> bool:
        """Whether OpenBLAS runs on one thread now: inside a one() scope, or one thread (or no control) at all."""
        if self._set is None:
            self._find()
        return bool(self._depth) or not self._set or self.threads == 1

    def restore(self) -> None:
        """Undo the last one() that returned True (the thread count comes back with the outermost)."""
        self._depth -= 1
        if self._depth == 0:
            for f in self._fns:
                f(self.threads)


_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has spent busy, CPU seconds this process has spent) since boot, from
    /proc/stat's first line (user nice system idle iowait irq softirq steal: all but idle and iowait; steal
    is time the hypervisor gave to other guests) and /proc/self/stat's utime and stime (every thread)."""
    with open("/proc/stat", "rb") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    with open("/proc/self/stat", "rb") as f:
        s = f.read()
    fields = s[s.rindex(b")") + 2:].split()  # from field 3 (state) on: utime and stime are fields 14 and 15
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / _HZ, (int(fields[11]) + int(fields[12])) / _HZ


def others_running() -> int:
    """Threads of other processes running or runnable now: /proc/stat's procs_running less this process's
    own threads in state R (the caller, OpenBLAS's threads spinning after a product)."""
    with open("/proc/stat", "rb") as f:
        running = next((int(line.split()[1]) for line in f if line.startswith(b"procs_running")), None)
    if running is None:
        raise ValueError("/proc/stat has no procs_running line")
    own = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat", "rb") as f:
                s = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        own += s[s.rindex(b")") + 2:s.rindex(b")") + 3] == b"R"
    return max(0, running - own)


def others_cores(before: tuple, after: tuple) -> float:
    """Cores that other processes kept busy between two (monotonic s, machine CPU s, own CPU s, ...) samples."""
    dt = after[0] - before[0]
    if dt <= 0:
        return 0.0
    return max(0.0, (after[1] - before[1]) - (after[2] - before[2])) / dt


BLAS_THREADS = _BlasThreads()
