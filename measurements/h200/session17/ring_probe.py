"""Session 17: one qgemv_ring or qgemv_direct launch (Q4_K, K = 4096, 75 rows, fp16, the llama norm or none), to
find which faults. Usage: python ring_probe.py ring|direct norm|none [S]"""
import sys

import numpy as np

import engine
from engine.backends import cupy_kernels as K
from engine.backends import cupy_quant as Q
from engine.backends.fused import QOperand
sys.path.insert(0, "tests")
from test_gguf import blocks  # noqa: E402

K.QUANT_KERNELS["enabled"] = True
Q.QUANT_DOT["route"] = "int8"
Q.RING["enabled"] = sys.argv[1] == "ring"
if len(sys.argv) > 3:
    Q.RING["s"] = int(sys.argv[3])
be = engine.backend("cuda")
cols, n = 4096, 75
w = QOperand(engine.tensor(blocks("q4_k", n, cols, seed=1), device="cuda").array, "q4_k", cols)
rng = np.random.default_rng(0)
x = engine.tensor(rng.standard_normal((1, cols)).astype(np.float32), device="cuda").to(engine.float16).array
nw = engine.tensor((1 + 0.1 * rng.standard_normal(cols)).astype(np.float32), device="cuda").to(engine.float16).array
print("ptrs", w.data.data.ptr % 256, x.data.ptr % 256, nw.data.ptr % 256, Q.ring_plan(x, "q4_k", (w.data,)))
norm = (nw, 1e-5, "llama") if sys.argv[2] == "norm" else None
y = be.linear_fused(x, w, None, engine.float16, norm=norm)
print(sys.argv[1:], "ok", float(abs(y.get().astype(np.float32)).sum()))
