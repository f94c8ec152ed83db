import time, numpy as np, sys
from threadpoolctl import threadpool_limits
rng = np.random.default_rng(0)
def bench(f, n, rep=9):
    f(); best = []
    for _ in range(rep):
        t = time.perf_counter()
        for _ in range(n): f()
        best.append((time.perf_counter() - t) / n * 1e6)
    return round(min(best), 1), round(float(np.median(best)), 1)
with threadpool_limits(1, "blas"):
    for (o, i, cnt) in [(384, 384, 24), (1536, 384, 4), (384, 1536, 4), (51865, 384, 1)]:
        # cnt distinct weights cycled, plus a 64 MB sweep buffer to evict caches between rounds (cold, as a decode step)
        Ws = [rng.standard_normal((o, i)).astype(np.float32) for _ in range(cnt)]
        Wim = [np.ascontiguousarray(w.T).T for w in Ws]
        x = rng.standard_normal((1, i)).astype(np.float32); out = np.empty((1, o), np.float32)
        sweep = np.ones(16 << 20, np.float32)
        def run(ws):
            def f():
                sweep.sum()
                for w in ws: np.matmul(x, w.T, out=out)
            return f
        base = bench(lambda: sweep.sum(), 3)
        a = bench(run(Ws), 3); b = bench(run(Wim), 3)
        print(f"{o}x{i} x{cnt}: out-major {(a[0]-base[0])/cnt:.1f} us, input-major {(b[0]-base[0])/cnt:.1f} us per GEMV (cold, min); hot:",
              bench(lambda: np.matmul(x, Ws[0].T, out=out), 200), bench(lambda: np.matmul(x, Wim[0].T, out=out), 200))
