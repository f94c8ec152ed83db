# All 211 quantized linears of SmolLM2 Q4_1 once (one row of x), the block-dot tiles on one thread or on two
# (ROW_THREADS, OpenBLAS forced to one thread a piece): `python sweep_thr.py plain|thr DOT_TILE`.
import sys, time, os
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))  # this checkout
import numpy as np
import engine
from engine.backends import numpy_quant as nq
from engine.backends.numpy_threads import ROW_THREADS
from engine.backends.blas_threads import BLAS_THREADS
from suites.bench_gguf import gguf_path
from engine import models
m = models.from_pretrained(gguf_path("smollm2-135m-q4_1"))
ws = []
for L in m.model.layers:
    a, p = L.self_attn, L.mlp
    ws += [a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, a.o_proj.weight, p.gate_proj.weight, p.up_proj.weight, p.down_proj.weight]
ws.append(m.lm_head.weight)
be = ws[0].data.backend
orig = nq.QuantKernels._qdot
def qdot_thr(self, x2, data, q, cols, y=None):
    m_, rows, nb = x2.shape[0], data.shape[0], cols // q.block_size
    xb = np.ascontiguousarray(x2, dtype=np.float32).reshape(m_, nb, q.block_size)
    y = np.empty((m_, rows), np.float32) if y is None else y
    blocks = data.reshape(rows, nb, q.type_size)
    dot = getattr(self, "_dot_" + q.name)
    xl = self._xlay(xb, q)
    spans = nq.dot_spans(rows, cols)
    kept = self._layouts(data, blocks, q, spans)
    def run(lo, hi, piece):
        for i in range(lo, hi):
            r0, r1 = spans[i]
            y[:, r0:r1] = dot(xl, kept[i])  # _qdot's, now
    pieces = 2 if len(spans) > 1 else 1
    if pieces > 1:
        with BLAS_THREADS.forced_one():
            ROW_THREADS.run(run, len(spans), pieces)
    else:
        run(0, len(spans), 0)
    return y
rng = np.random.default_rng(0)
xs = {c: rng.standard_normal((1, c)).astype(np.float32) for c in (576, 1536)}
mode = sys.argv[1]
if mode.startswith("thr"): nq.QuantKernels._qdot = qdot_thr
nq.DOT_TILE = int(sys.argv[2])
def go():
    for w in ws:
        be._qdot(xs[w.shape[1]], w.data.array, w.qtype, w.shape[1])
go()
ts = []
for _ in range(15):
    t = time.perf_counter(); go(); ts.append(time.perf_counter() - t)
print(mode, sys.argv[2], f"{np.median(ts)*1e3:.2f} ms")
