"""Storage and the StoragePool.

A Storage is a flat 1-D backend array of one dtype. Its memory comes from its device's StoragePool,
which hands out blocks in size classes and takes them back when the last array over a block dies.

A pool may be capped: `StoragePool(backend, limit_bytes=N)`, `pool.limit_bytes = N` at any time, or
the ENGINE_POOL_LIMIT environment variable (bytes, or with a K/M/G suffix in powers of 1024, e.g.
"512M"), read when a device's pool is created. Past the cap, or when the device itself refuses, the
pool empties its cache and retries once, then raises OutOfMemoryError(requested, free).

How a block comes back: the pool wraps each raw block in a `_Lease` and builds the typed array *over
the lease* (numpy: through `__array_interface__`; cupy: as the owner of an UnownedMemory). Every view
of that array keeps the lease alive, so a block is reused only once nothing can still read it.

Graph-safe leases (engine.capture): while a CUDA graph is captured, the pool is in private mode for a
`GraphMemory` owner. Blocks handed out then come from the owner's own free list first, then from the
pool's cache, then from the device; every block released while capturing (whoever allocated it) goes
to the owner's list, not back to the pool, because the graph's replays write and read those addresses.
The owner keeps its blocks until it is released (the captured graph is dropped): only then do they
return to the pool's cache. Statistics stay exact: blocks a graph holds count as allocated (and are
reported apart as graph_bytes) until the graph lets them go.
"""
from __future__ import annotations

import os
import threading
import weakref
from collections import defaultdict


class OutOfMemoryError(MemoryError):
    """The device could not provide `requested` bytes even after the pool emptied its cache."""

    def __init__(self, device: str, requested: int, free: int | None, detail: str = ""):
        self.device, self.requested, self.free = device, requested, free
        free_txt = "unknown" if free is None else f"{free:,} bytes"
        super().__init__(f"out of memory on {device}: requested {requested:,} bytes, {free_txt} free"
                         + (f" ({detail})" if detail else ""))


SMALL = 512
LARGE_STEP = 2 << 20  # above 1 MiB, round up to 2 MiB (the CUDA allocation granularity)


def size_class(nbytes: int) -> int:
    """Small blocks round up to a power of two (>= 512 B); large ones to a multiple of 2 MiB, so a
    large tensor wastes under 2 MiB."""
    if nbytes <= SMALL:
        return SMALL
    if nbytes <= (1 << 20):
        return 1 << (nbytes - 1).bit_length()
    return -(-nbytes // LARGE_STEP) * LARGE_STEP


def parse_limit(text) -> int | None:
    """ENGINE_POOL_LIMIT's value in bytes: "1048576", "512M", "2G", "64k"; empty or unset -> None."""
    if text is None or not str(text).strip():
        return None
    t = str(text).strip().upper().removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    try:
        n = int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        raise ValueError(f"ENGINE_POOL_LIMIT={text!r}: expected bytes, optionally with K, M or G") from None
    if n < 0:
        raise ValueError(f"ENGINE_POOL_LIMIT={text!r} is negative")
    return n


class _Lease:
    """Owns one raw block while any array over it lives; gives it back to the pool when collected."""

    __slots__ = ("pool", "raw", "nbytes", "requested", "__array_interface__", "__weakref__")

    def __init__(self, pool, raw, nbytes, requested, array_interface=None):
        self.pool, self.raw, self.nbytes, self.requested = pool, raw, nbytes, requested
        if array_interface is not None:
            self.__array_interface__ = array_interface

    def __del__(self):
        try:
            pool = self.pool
            with pool._lock:  # the pool's side of a release, here: this runs once per op output
                pool.requested -= self.requested
                own = pool.private
                if own is not None:  # released while a graph captures: the graph keeps the block
                    own.free[self.nbytes].append(self.raw)
                    pool.graph_bytes += self.nbytes
                    return
                pool.allocated -= self.nbytes
                pool._free[self.nbytes].append(self.raw)
        except Exception:  # interpreter shutdown: modules may already be gone
            pass


class StoragePool:
    """Caching allocator for one device. `backend` supplies raw_alloc(n), raw_free(raw),
    wrap(lease) -> flat uint8 array over the lease, and free_bytes() (None when unknown)."""

    def __init__(self, backend, limit_bytes: int | None = None):
        self.backend = backend
        self.limit_bytes = limit_bytes if limit_bytes is not None else parse_limit(os.environ.get("ENGINE_POOL_LIMIT"))
        self._free: dict[int, list] = defaultdict(list)
        # re-entrant: a garbage collection that runs inside alloc() may release a lease on this thread
        self._lock = threading.RLock()
        self.allocated = 0  # bytes in blocks handed out and still alive
        self.requested = 0  # bytes callers asked for, of those blocks
        self.reserved = 0  # bytes held from the device: allocated + cached
        self.peak = 0
        self.hits = 0
        self.misses = 0
        self.oom_retries = 0
        self.private = None  # the GraphMemory capturing now, if any
        self.graph_bytes = 0  # bytes held by live graphs' private lists (counted in `allocated`)

    # ---- public --------------------------------------------------------------------------------
    def alloc(self, nbytes: int):
        """A flat uint8 backend array of exactly `nbytes` bytes over a pooled block."""
        return self.backend.wrap(self.alloc_lease(nbytes))[:int(nbytes)]

    def alloc_lease(self, nbytes: int) -> "_Lease":
        """A pooled block of at least `nbytes` bytes, returned to the pool when the lease dies."""
        nbytes = int(nbytes)
        cls = SMALL if nbytes <= SMALL else size_class(nbytes)
        with self._lock:
            raw = None
            own = self.private
            if own is not None and own.free[cls]:  # a block this graph already holds
                raw = own.free[cls].pop()
                self.graph_bytes -= cls
                self.allocated -= cls  # counted again below
            else:
                free = self._free[cls]
                if free:
                    raw = free.pop()
            if raw is not None:
                self.hits += 1
            else:
                self.misses += 1
                raw = self._alloc_raw(cls, nbytes)
            self.allocated += cls
            self.requested += nbytes
            if self.allocated > self.peak:
                self.peak = self.allocated
        lease = _Lease(self, raw, cls, nbytes)
        if own is not None:
            own.leases.add(lease)
        return lease

    def empty_cache(self) -> int:
        """Give every cached block back to the device; returns the bytes freed."""
        with self._lock:
            return self._empty_cache_locked()

    def stats(self) -> dict:
        with self._lock:
            return {"allocated_bytes": self.allocated, "requested_bytes": self.requested,
                    "reserved_bytes": self.reserved, "cached_bytes": self.reserved - self.allocated,
                    "peak_bytes": self.peak, "hits": self.hits, "misses": self.misses,
                    "oom_retries": self.oom_retries, "limit_bytes": self.limit_bytes,
                    "graph_bytes": self.graph_bytes}

    # ---- graph-safe leases (see the module docstring) ---------------------------------------------------
    def begin_private(self, owner: "GraphMemory") -> None:
        with self._lock:
            if self.private is not None:
                raise RuntimeError("the pool is already capturing for another graph (captures do not nest)")
            self.private = owner

    def end_private(self) -> None:
        with self._lock:
            self.private = None

    def _return_private(self, owner: "GraphMemory") -> None:
        """A graph is gone: its blocks go back to the pool's cache."""
        with self._lock:
            for cls, raws in owner.free.items():
                self._free[cls].extend(raws)
                self.allocated -= cls * len(raws)
                self.graph_bytes -= cls * len(raws)
                raws.clear()

    def reset_peak(self) -> None:
        with self._lock:
            self.peak = self.allocated

    # ---- internals (a block comes back in _Lease.__del__) ---------------------------------------------------------
    def _alloc_raw(self, cls: int, nbytes: int):
        for attempt in (0, 1):
            over_limit = self.limit_bytes is not None and self.reserved + cls > self.limit_bytes
            if not over_limit:
                try:
                    raw = self.backend.raw_alloc(cls)
                    self.reserved += cls
                    return raw
                except MemoryError:
                    pass
            if attempt == 0:  # empty the cache and retry once
                self.oom_retries += 1
                self._empty_cache_locked()
        free = self.backend.free_bytes()
        if self.limit_bytes is not None:
            cap_free = self.limit_bytes - self.reserved
            free = cap_free if free is None else min(free, cap_free)
        raise OutOfMemoryError(str(self.backend.device), nbytes, free,
                               f"pool reserves {self.reserved:,} bytes, {self.allocated:,} in use"
                               + (f", limit {self.limit_bytes:,}" if self.limit_bytes is not None else ""))

    def _empty_cache_locked(self) -> int:
        freed = 0
        for cls in list(self._free):  # a release during raw_free (GC) may add blocks: loop on a snapshot
            raws = self._free[cls]
            while raws:
                self.backend.raw_free(raws.pop())
                freed += cls
                self.reserved -= cls
        return freed


class GraphMemory:
    """The blocks one captured graph owns (see the module docstring). Blocks still referenced by
    tensors (the graph's static outputs) come back through the normal release once those tensors die
    and the graph is gone."""

    def __init__(self, pool: StoragePool):
        self.pool = pool
        self.free: dict[int, list] = defaultdict(list)
        self.leases = weakref.WeakSet()  # blocks handed out while capturing
        self.pinned: list = []  # those still alive when the capture ended: held while the graph lives
        self.released = False

    def __enter__(self):
        self.pool.begin_private(self)
        return self

    def __exit__(self, *exc):
        self.pool.end_private()
        # a block the graph writes must not reach anyone else while the graph can replay, even once
        # the tensors over it are dropped: hold every lease that outlived the capture
        self.pinned = list(self.leases)

    @property
    def nbytes(self) -> int:
        return sum(cls * len(v) for cls, v in self.free.items())

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.pinned = []
            self.pool._return_private(self)

    def __del__(self):
        try:
            self.release()
        except Exception:  # interpreter shutdown
            pass


class Storage:
    """A flat 1-D backend array and the backend that owns it. Pooled storages return their block
    to the pool when the last array over it dies; external ones (an mmap, a DLPack import) do not.

    `Storage.over(arr, backend)` describes a contiguous array of any shape (an op's output): the flat
    view is made only when something asks for `data` (most outputs are only ever read whole, through
    the array their Tensor keeps)."""

    __slots__ = ("_data", "_shaped", "backend")

    def __init__(self, data, backend):
        self._data, self._shaped = data, None
        self.backend = backend

    @classmethod
    def over(cls, arr, backend) -> "Storage":
        s = cls.__new__(cls)
        s._data, s._shaped, s.backend = None, arr, backend
        return s

    @property
    def data(self):
        d = self._data
        if d is None:
            d = self._data = self._shaped.reshape(-1)
            self._shaped = None
        return d

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def __repr__(self) -> str:
        return f"Storage({self.data.size} x {self.data.dtype} on {self.backend.device})"
