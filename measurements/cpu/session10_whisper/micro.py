import time, numpy as np, engine, sys
from engine.nn.attention import attention, attention_keys
from engine.backends.numpy_attention import AttentionKernels
from engine.backends.numpy_nn import NnKernels
import engine.functional as F
rng = np.random.default_rng(0)
def bench(f, n=300, rep=7):
    f()
    best = []
    for _ in range(rep):
        t = time.perf_counter()
        for _ in range(n): f()
        best.append((time.perf_counter() - t) / n * 1e6)
    return min(best), float(np.median(best))
d = int(sys.argv[1]) if len(sys.argv) > 1 else 384
H = d // 64
x = engine.tensor(rng.standard_normal((1, 1, d)).astype(np.float32))
w = engine.tensor(rng.standard_normal(d).astype(np.float32)); b = engine.tensor(rng.standard_normal(d).astype(np.float32))
orig = NnKernels.NORM_SMALL
for small in (orig, 0):
    NnKernels.NORM_SMALL = small
    print("layer_norm small", small, bench(lambda: F.layer_norm(x, (d,), w, b)))
NnKernels.NORM_SMALL = orig
q = engine.tensor(rng.standard_normal((1, 1, H, 64)).astype(np.float32)).transpose(1, 2)
ks = [engine.tensor(rng.standard_normal((1, H, 1500, 64)).astype(np.float32)) for _ in range(4)]
vs = [engine.tensor(rng.standard_normal((1, H, 1500, 64)).astype(np.float32)) for _ in range(4)]
kts = [attention_keys(k) for k in ks]
cache = engine.tensor(rng.standard_normal((1, H, 132, 64)).astype(np.float32))
sk = cache[:, :, :40]
one = AttentionKernels._attention_one
rows = lambda self, q, k, v_, mask, sc, od: self._attention_rows(q, k, v_, mask, sc, od)
for name, impl in (("one", one), ("rows", rows)):
    AttentionKernels._attention_one = impl
    print(name, "cross x4 K  ", bench(lambda: [attention(q, k, v, None, 0.125) for k, v in zip(ks, vs)], n=30))
    print(name, "cross x4 K^T", bench(lambda: [attention(q, k, v, None, 0.125) for k, v in zip(kts, vs)], n=30))
    print(name, "cross x4 K  scale1", bench(lambda: [attention(q, k, v, None, 1.0) for k, v in zip(ks, vs)], n=30))
    print(name, "self S=40", bench(lambda: attention(q, sk, sk, None, 0.125)))
    print(name, "self S=40 scale1", bench(lambda: attention(q, sk, sk, None, 1.0)))
AttentionKernels._attention_one = one
print("mul q", bench(lambda: q * 0.125))
