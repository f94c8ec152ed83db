"""Checkpoint upload for the cupy backend: byte ranges of a file straight into device arrays, several
reader threads overlapping pread with host-to-device copies (CupyBackend.load_ranges)."""
from __future__ import annotations

import concurrent.futures as cf
import os

import cupy
import numpy as np

from engine import dtype as D


def load_ranges(backend, path: str, ranges, threads: int | None = None, chunk: int = 16 << 20):
    """Read byte ranges [(begin, end), ...] of a file straight into new device arrays.

    Several reader threads each own a stream and two pinned staging buffers: a thread reads the
    next chunk from the page cache with pread (no mmap page faults) while its previous chunk's
    host-to-device copy runs, so reading and copying overlap across threads and streams.
    """
    threads = threads or min(16, os.cpu_count() or 4)
    outs = [backend.empty((end - begin,), D.uint8) for begin, end in ranges]
    staging = _staging(backend, threads, chunk)
    jobs = []  # (out array, byte offset in out, file offset, n)
    for out, (begin, end) in zip(outs, ranges):
        for off in range(0, end - begin, chunk):
            jobs.append((out, off, begin + off, min(chunk, end - begin - off)))
    fd = os.open(path, os.O_RDONLY)
    try:
        def worker(my_jobs, bufs):
            with cupy.cuda.Device(backend.device.index):
                stream = cupy.cuda.Stream(non_blocking=True)
                events = [None, None]
                for i, (out, off, foff, n) in enumerate(my_jobs):
                    slot = i % 2
                    if events[slot] is not None:
                        events[slot].synchronize()  # the copy out of this buffer has finished
                    view = memoryview(np.frombuffer(bufs[slot], np.uint8, n))
                    got = os.preadv(fd, [view], foff)
                    if got != n:
                        raise OSError(f"{path}: short read at offset {foff}: {got} of {n} bytes")
                    cupy.cuda.runtime.memcpyAsync(out.data.ptr + off, bufs[slot].ptr, n,
                                                  cupy.cuda.runtime.memcpyHostToDevice, stream.ptr)
                    events[slot] = stream.record()
                stream.synchronize()
        per = [jobs[i::threads] for i in range(threads)]
        with cf.ThreadPoolExecutor(threads) as ex:
            for f in [ex.submit(worker, p, staging[i]) for i, p in enumerate(per) if p]:
                f.result()
    finally:
        os.close(fd)
    return outs


def _staging(backend, threads: int, chunk: int):
    """Two pinned host buffers per reader thread, kept for the next load (pinning memory costs
    about as much as copying it, so a second checkpoint load does not pay it again)."""
    key = (threads, chunk)
    if getattr(backend, "_staging_key", None) != key:
        backend._staging_bufs = [[cupy.cuda.alloc_pinned_memory(chunk) for _ in range(2)] for _ in range(threads)]
        backend._staging_key = key
    return backend._staging_bufs
