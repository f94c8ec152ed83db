"""The numpy backend's row pieces on a thread pool (engine/backends/numpy_threads.py): the split covers every
row once, errors come back to the caller, and ops give the same bits on one thread and on several (forced
on here: the pool only runs while the machine is otherwise idle)."""
import numpy as np
import pytest

import engine
from engine import dtype as D
from engine.backends.blas_threads import BLAS_THREADS
from engine.backends.numpy_attention import AttentionKernels
from engine.backends.numpy_nn import NnKernels
from engine.backends.numpy_threads import ROW_THREADS


@pytest.fixture
def pool(monkeypatch):
    """ROW_THREADS with two pieces for any size, as on an idle 2-core machine."""
    monkeypatch.setattr(BLAS_THREADS, "busy", lambda: False)
    monkeypatch.setattr(BLAS_THREADS, "spinning", lambda: False)  # no LSTM's OpenBLAS threads from a test before
    monkeypatch.setattr(ROW_THREADS, "MIN_ELEMENTS", 1)
    monkeypatch.setattr(ROW_THREADS, "cores", 2)
    return engine.device.backend("cpu")


def _both(fn, monkeypatch):
    """fn() with the pool on, then with it off (copies)."""
    on = np.array(fn(), copy=True)
    monkeypatch.setattr(ROW_THREADS, "enabled", False)
    off = np.array(fn(), copy=True)
    monkeypatch.setattr(ROW_THREADS, "enabled", True)
    return on, off


@pytest.mark.parametrize("n,pieces", [(1, 2), (5, 2), (7, 3), (100, 8)])
def test_run_covers_every_row_once(pool, n, pieces):
    seen = np.zeros(n, np.int64)
    used = set()

    def fn(lo, hi, piece):
        seen[lo:hi] += 1
        used.add(piece)
    ROW_THREADS.run(fn, n, pieces)
    assert seen.tolist() == [1] * n and used == set(range(min(n, pieces)))


def test_run_raises_a_piece_error(pool):
    def fn(lo, hi, piece):
        if piece == 1:
            raise ValueError(f"piece {piece} rows {lo}:{hi}")
    with pytest.raises(ValueError, match="piece 1 rows 5:10"):
        ROW_THREADS.run(fn, 10, 2)


def test_busy_machine_one_piece(monkeypatch):
    monkeypatch.setattr(BLAS_THREADS, "busy", lambda: True)
    assert ROW_THREADS.workers(1 << 30) == 1


@pytest.mark.parametrize("op", ["gelu", "silu", "sigmoid"])
def test_unary_same_bits(pool, monkeypatch, op):
    x = (np.random.default_rng(0).standard_normal((300, 1000)) * 4).astype(np.float32)
    on, off = _both(lambda: pool.unary(op, x, D.float32), monkeypatch)
    assert np.array_equal(on, off)


def test_layer_norm_same_bits(pool, monkeypatch):
    monkeypatch.setattr(NnKernels, "NORM_CHUNK", 7 * 384)  # 43 chunks of 7 rows, the last one short
    rng = np.random.default_rng(1)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((6, 50, 384), (384,), (384,)))
    on, off = _both(lambda: pool.layer_norm(x, 1, w, b, 1e-12, D.float32), monkeypatch)
    assert np.array_equal(on, off)


def test_linear_rows_split(pool, monkeypatch):
    rng = np.random.default_rng(2)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((3, 200, 64), (96, 64), (96,)))
    on, off = _both(lambda: pool.linear(x, w, b, D.float32), monkeypatch)
    want = x.astype(np.float64) @ w.T.astype(np.float64) + b
    np.testing.assert_allclose(on, want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(on, off, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("B,Hq,Hkv,L,S", [(3, 4, 4, 20, 24), (1, 6, 2, 33, 33), (2, 2, 1, 1, 9)])
def test_attention_blocks_and_layouts(pool, monkeypatch, B, Hq, Hkv, L, S):
    """Every block split (batch, heads, query blocks) and both score layouts against float64."""
    rng = np.random.default_rng(3)
    d = 16
    q = rng.standard_normal((B, L, Hq, d)).astype(np.float32).transpose(0, 2, 1, 3)  # the models' view
    k, v = (rng.standard_normal((B, Hkv, S, d)).astype(np.float32) for _ in range(2))
    m = np.zeros((B, 1, 1, S), np.float32)
    m[::2, ..., S - 3:] = np.finfo(np.float32).min
    mask = np.broadcast_to(m, (B, 1, L, S))  # a padding mask, expanded over the queries
    rep = Hq // Hkv
    s = q.astype(np.float64) @ np.repeat(k, rep, 1).swapaxes(-1, -2) * d ** -0.5 + mask
    p = np.exp(s - s.max(-1, keepdims=True))
    want = ((p / p.sum(-1, keepdims=True)) @ np.repeat(v, rep, 1)).transpose(0, 2, 1, 3).reshape(B, L, Hq * d)
    for rows, cols in [(1 << 18, 16), (2 * Hq * S, 16), (1 << 18, 1 << 30), (rep * S, 1 << 30)]:
        monkeypatch.setattr(AttentionKernels, "ATTENTION_ROWS", rows)
        monkeypatch.setattr(AttentionKernels, "ATTENTION_COLS", cols)
        got = pool.attention(q, k, v, mask, d ** -0.5, D.float32)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


def test_one_piece_while_openblas_threads_spin(monkeypatch):
    """After a caller reports products on OpenBLAS's own threads (the numpy LSTM's GEMVs), work stays in one piece
    for SPIN_S (a second piece would share a core with a spinning OpenBLAS thread), then splits again."""
    from engine.backends.blas_threads import _BlasThreads
    b = _BlasThreads()
    assert not b.spinning()
    b.threaded()
    assert b.spinning()
    b.SPIN_S = 0.0
    assert not b.spinning()
    monkeypatch.setattr(BLAS_THREADS, "busy", lambda: False)
    monkeypatch.setattr(ROW_THREADS, "cores", 2)
    monkeypatch.setattr(BLAS_THREADS, "_threaded_at", float("-inf"))
    assert ROW_THREADS.workers(1 << 30) == 2
    BLAS_THREADS.threaded()
    assert ROW_THREADS.workers(1 << 30) == 1
    monkeypatch.setattr(BLAS_THREADS, "SPIN_S", 0.0)
    assert ROW_THREADS.workers(1 << 30) == 2


def test_lstm_recurrence_reports_openblas_threads(monkeypatch):
    """The numpy LSTM loop marks OpenBLAS's threads as spinning when its GEMVs ran on several of them."""
    monkeypatch.setattr(BLAS_THREADS, "_threaded_at", float("-inf"))
    monkeypatch.setattr(BLAS_THREADS, "single", lambda: False)
    b = engine.device.backend("cpu")
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    b.lstm_recurrence(f(3, 1, 8), f(1, 2), f(1, 2), f(8, 2), f(8), None, False, D.float32)
    assert BLAS_THREADS.spinning()
