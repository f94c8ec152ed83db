# Micro-benchmark of numpy_quant._qdot (one decode row, m=1) on SmolLM2-135M's k-quant matrix (down_proj, 576x1536:
# the only one whose rows are whole 256-weight super-blocks; the 576-column ones fall back to Q4_1 / Q8_0), in Q4_K and
# Q6_K, plus Q4_1 at the same shape for scale. Layouts kept (made by a warm-up product). `python kq_micro.py [reps]`:
# prints the median and the best microseconds a product per (format, shape), and engine's path.
import sys, time
import numpy as np
import engine
from engine.backends import numpy_quant as nq
from engine.io.gguf import quantize_matrix
from engine.quant import qtype
be = engine.tensor(np.zeros(1, np.float32)).backend
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 200
rng = np.random.default_rng(0)
for fmt, (rows, cols) in [("q4_k", (576, 1536)), ("q6_k", (576, 1536)), ("q4_1", (576, 1536)),
                          ("q4_k", (1536, 1536)), ("q6_k", (1536, 1536))]:
    data = quantize_matrix(rng.standard_normal((rows, cols)).astype(np.float32) * 0.02, fmt)
    x = rng.standard_normal((1, cols)).astype(np.float32)
    q = qtype(fmt)
    y = be._qdot(x, data, q, cols)
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); be._qdot(x, data, q, cols, y); ts.append(time.perf_counter() - t)
    print(f"{fmt} {rows}x{cols} median {np.median(ts)*1e6:.1f} us best {min(ts)*1e6:.1f} us", flush=True)
print(engine.__file__)
