import numpy as np, time
from engine.backends.numpy_backend import _erf_f64
a = np.random.default_rng(0).standard_normal((32*128,1536)).astype(np.float32) / 1.41
def chunked(x, n=1<<15):
    flat = x.reshape(-1); out = np.empty(flat.shape, np.float64)
    for s in range(0, flat.size, n):
        out[s:s+n] = _erf_f64(flat[s:s+n])
    return out.reshape(x.shape)
for f in (_erf_f64, chunked):
    f(a[:10]); t=time.perf_counter(); r=f(a); print(f.__name__, (time.perf_counter()-t)*1e3)
for n in (1<<13, 1<<14, 1<<16):
    t=time.perf_counter(); chunked(a, n); print(n, (time.perf_counter()-t)*1e3)
