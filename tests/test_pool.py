"""The StoragePool: reuse, exact statistics, no aliasing while a view lives, empty_cache, the OOM path.

Each test builds a fresh backend of the device under test (its own pool), so the counts are exact
whatever else the process allocated.
"""
import gc
import threading

import numpy as np
import pytest

import engine
from engine.storage import OutOfMemoryError, StoragePool, parse_limit, size_class
from engine.tensor import Tensor
from helpers import DEVICE, cpu_only, needs_device

pytestmark = needs_device
MiB = 1 << 20


def fresh_backend():
    return type(engine.backend(DEVICE))(DEVICE)


def tensor_on(b, n=256, dtype=engine.float32):
    return Tensor._wrap(b.empty((n,), dtype), b, dtype)


@pytest.mark.parametrize("n,cls", [(0, 512), (1, 512), (512, 512), (513, 1024), (1000, 1024), (MiB, MiB), (MiB + 1, 2 * MiB),
                                   (3 * MiB, 4 * MiB), (4 * MiB, 4 * MiB)])
def test_size_classes(n, cls):
    assert size_class(n) == cls


def test_reuse_is_a_hit_and_the_same_block():
    b = fresh_backend()
    t = tensor_on(b)
    ptr = t.data_ptr()
    del t
    assert b.pool.stats()["misses"] == 1 and b.pool.stats()["hits"] == 0
    u = tensor_on(b)
    assert u.data_ptr() == ptr
    assert b.pool.stats()["hits"] == 1 and b.pool.stats()["misses"] == 1
    w = tensor_on(b)  # the block is taken: a new one
    assert w.data_ptr() != u.data_ptr() and b.pool.stats()["misses"] == 2


def test_op_outputs_come_from_the_pool():
    b = fresh_backend()
    x = tensor_on(b).fill_(1.0)
    before = b.pool.stats()
    y = (x + 1).exp()  # add's output is freed when exp's input dies: exp may reuse it
    after = b.pool.stats()
    assert after["hits"] + after["misses"] > before["hits"] + before["misses"]
    assert y.storage.backend is b
    del y
    assert b.pool.stats()["allocated_bytes"] == before["allocated_bytes"]


def test_stats_are_exact():
    b = fresh_backend()
    pool = b.pool
    keys = ("allocated_bytes", "requested_bytes", "reserved_bytes", "cached_bytes", "peak_bytes", "hits", "misses")

    def st():
        return tuple(pool.stats()[k] for k in keys)

    assert st() == (0, 0, 0, 0, 0, 0, 0)
    a = pool.alloc(1000)                     # class 1024
    assert st() == (1024, 1000, 1024, 0, 1024, 0, 1)
    c = pool.alloc(100)                      # class 512
    assert st() == (1536, 1100, 1536, 0, 1536, 0, 2)
    del a
    assert st() == (512, 100, 1536, 1024, 1536, 0, 2)
    d = pool.alloc(600)                      # class 1024: the cached block
    assert st() == (1536, 700, 1536, 0, 1536, 1, 2)
    big = pool.alloc(3 * MiB)                # class 4 MiB
    assert st() == (1536 + 4 * MiB, 700 + 3 * MiB, 1536 + 4 * MiB, 0, 1536 + 4 * MiB, 1, 3)
    del big, d, c
    assert st() == (0, 0, 1536 + 4 * MiB, 1536 + 4 * MiB, 1536 + 4 * MiB, 1, 3)
    assert pool.empty_cache() == 1536 + 4 * MiB
    assert st() == (0, 0, 0, 0, 1536 + 4 * MiB, 1, 3)
    pool.reset_peak()
    assert pool.stats()["peak_bytes"] == 0
    assert pool.empty_cache() == 0


def test_alloc_returns_exact_length():
    pool = fresh_backend().pool
    for n in (0, 1, 700, 5000):
        assert pool.alloc(n).nbytes == n


def test_device_level_stats_api():
    s = engine.memory_stats(DEVICE)
    assert {"allocated_bytes", "requested_bytes", "reserved_bytes", "cached_bytes", "peak_bytes", "hits", "misses",
            "oom_retries", "limit_bytes"} <= set(s)
    keep = engine.zeros(1000, device=DEVICE)
    assert engine.memory_stats(DEVICE)["allocated_bytes"] >= 4000
    del keep
    assert isinstance(engine.empty_cache(DEVICE), int)


@cpu_only
def test_numpy_view_keeps_block_alive():
    b = fresh_backend()
    t = tensor_on(b).fill_(3.0)
    ptr = t.data_ptr()
    view = t.numpy()[::2]  # a view of the view: still over the block
    del t
    gc.collect()
    assert b.pool.stats()["allocated_bytes"] == 1024, "the block must stay leased while a numpy view lives"
    u = tensor_on(b).fill_(-1.0)
    assert u.data_ptr() != ptr, "a live numpy view's block was handed out again (aliasing)"
    assert np.all(view == 3.0)
    del view
    assert b.pool.stats()["allocated_bytes"] == 1024  # only u now
    assert tensor_on(b).data_ptr() == ptr             # and the block is reusable


@cpu_only
def test_engine_views_keep_block_alive():
    b = fresh_backend()
    t = tensor_on(b, 16).fill_(2.0)
    v = t.reshape(4, 4).T[1:]
    ptr = t.data_ptr()
    del t
    assert tensor_on(b, 16).data_ptr() != ptr
    assert np.all(v.numpy() == 2.0)


def test_release_during_alloc_does_not_deadlock():
    """A garbage collection inside alloc() can free a pooled block on the same thread."""
    class GcBackend(type(engine.backend(DEVICE))):
        def raw_alloc(self, nbytes):
            gc.collect()
            return super().raw_alloc(nbytes)

    b = GcBackend(DEVICE)
    done = []

    def work():
        cycle = [tensor_on(b)]
        cycle.append(cycle)  # garbage only a collection can free
        del cycle
        tensor_on(b, 4096)
        done.append(True)

    th = threading.Thread(target=work, daemon=True)
    th.start()
    th.join(timeout=20)
    assert done, "alloc() deadlocked while a collection released a block"
    assert b.pool.stats()["allocated_bytes"] == 0


# ---- the OOM path ------------------------------------------------------------------------------------------
def test_limit_empties_cache_and_retries_once():
    pool = fresh_backend().pool
    pool.limit_bytes = 4096
    a = pool.alloc(2048)
    del a                                   # 2048 cached
    c = pool.alloc(3000)                    # class 4096: over the limit until the cache is emptied
    s = pool.stats()
    assert s["oom_retries"] == 1 and s["reserved_bytes"] == 4096 and s["cached_bytes"] == 0
    with pytest.raises(OutOfMemoryError) as ei:
        pool.alloc(512)
    e = ei.value
    assert e.requested == 512 and e.free == 0
    assert "requested 512 bytes, 0 bytes free" in str(e) and "limit 4,096" in str(e) and str(DEVICE) in str(e)
    assert pool.stats()["oom_retries"] == 2
    assert isinstance(e, MemoryError) and engine.OutOfMemoryError is OutOfMemoryError
    del c


class FlakyBackend:
    """A NumpyBackend-like raw allocator that refuses `fail` times, then succeeds."""

    def __init__(self, fail, free=12345):
        self.device, self.fail, self.free, self.freed = engine.Device("cpu"), fail, free, 0
        self.real = engine.backend("cpu")

    def raw_alloc(self, n):
        if self.fail:
            self.fail -= 1
            raise MemoryError("device refused")
        return np.empty(n, np.uint8)

    def raw_free(self, raw):
        self.freed += raw.nbytes

    def free_bytes(self):
        return self.free

    def wrap(self, lease):
        return self.real.wrap(lease)


def test_device_refusal_retries_after_emptying_cache():
    be = FlakyBackend(fail=0)
    pool = StoragePool(be)
    del_me = pool.alloc(600)
    del del_me                              # 1024 cached
    be.fail = 1
    got = pool.alloc(5000)                  # refused once, cache emptied, retried
    assert got.nbytes == 5000 and be.freed == 1024 and pool.stats()["oom_retries"] == 1
    be.fail = 2
    with pytest.raises(OutOfMemoryError, match=r"out of memory on cpu: requested 70,000 bytes, 12,345 bytes free"):
        pool.alloc(70000)


def test_oom_names_unknown_free_bytes():
    be = FlakyBackend(fail=2, free=None)
    with pytest.raises(OutOfMemoryError, match="requested 10 bytes, unknown free"):
        StoragePool(be).alloc(10)


def test_pool_limit_env(monkeypatch):
    monkeypatch.setenv("ENGINE_POOL_LIMIT", "1M")
    pool = fresh_backend().pool
    assert pool.limit_bytes == MiB
    with pytest.raises(OutOfMemoryError, match="requested 2,000,000 bytes"):
        pool.alloc(2_000_000)
    monkeypatch.setenv("ENGINE_POOL_LIMIT", "lots")
    with pytest.raises(ValueError, match="ENGINE_POOL_LIMIT='lots'"):
        fresh_backend()
    assert parse_limit("2G") == 2 << 30 and parse_limit("") is None and parse_limit("4096") == 4096


def test_engine_ops_raise_oom_through_the_pool():
    b = fresh_backend()
    b.pool.limit_bytes = 64 * 1024
    x = Tensor._wrap(b.empty((4000,), engine.float32), b, engine.float32)
    with pytest.raises(OutOfMemoryError, match="requested"):
        x.reshape(1, 4000).expand(8, 4000).contiguous()
