import time, numpy as np, sys
sys.path.insert(0, ".")
from concurrent.futures import ThreadPoolExecutor
import engine
from engine.backends import numpy_quant as NQ
be = engine.backend("cpu")
rng = np.random.default_rng(0)
cols, rows = 576, 1536
q = NQ._qtype("q4_1")
data = rng.integers(0, 255, (rows, cols // 32 * 20), dtype=np.uint8)
data.reshape(rows, -1, 20)[..., :4] = np.frombuffer(np.float16([0.01, 0.0]).tobytes(), np.uint8)
x = rng.standard_normal((1, cols)).astype(np.float32)
qd = be._qdot if hasattr(be, "_qdot") else None
print(type(be).__mro__[:3])
def serial(): return be._qdot(x, data, q, cols)
pool = ThreadPoolExecutor(2)
def par():
    h = rows // 2
    a = pool.submit(be._qdot, x, data[:h], q, cols); b = be._qdot(x, data[h:], q, cols)
    return np.concatenate([a.result(), b], 1)
print(np.abs(serial() - par()).max())
for f in (serial, par, serial, par):
    t = time.perf_counter(); [f() for _ in range(200)]; print(f.__name__, (time.perf_counter() - t) / 200 * 1e6, "us")
