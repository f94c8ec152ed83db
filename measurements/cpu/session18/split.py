# Time per decode step and in each quantized linear (by shape) of SmolLM2 Q4_1 on the engine CPU path: the backend's
# qlinear (and any backend method named on the command line) wrapped in perf_counter; TILE=n sets DOT_TILE.
import sys, time, os
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))  # this checkout
from suites.bench_gguf import gguf_path
from suites.common import get_impl
from suites.bench_llm import prompt_ids, PROMPT
import numpy as np
from collections import defaultdict
lm = get_impl("engine", "cpu", "float32").load(gguf_path("smollm2-135m-q4_1"))
b = lm.impl.backend
from engine.backends import numpy_quant as _nq
if os.environ.get("TILE"): _nq.DOT_TILE = int(os.environ["TILE"])
acc = defaultdict(float); cnt = defaultdict(int)
def wrap(name, key=None):
    f = getattr(b, name)
    def g(*a, **k):
        t = time.perf_counter(); r = f(*a, **k); dt = time.perf_counter() - t
        kk = name if key is None else key(*a)
        acc[kk] += dt; cnt[kk] += 1
        return r
    setattr(b, name, g)
wrap("qlinear", lambda x, data, qt, cols, *r: f"qlinear {qt} {data.shape[0]}x{cols}")
for n in sys.argv[1:]: wrap(n)
ids = prompt_ids(lm.config["vocab_size"], 1, PROMPT)
N = 32
for rep in range(3):
    lm.start(ids, N + 2)
    acc.clear(); cnt.clear()
    t = time.perf_counter()
    for _ in range(N): lm.step()
    tot = (time.perf_counter() - t) / N * 1e3
print("ms/step", tot)
for k in sorted(acc, key=lambda k: -acc[k]): print(f"{k:40s} {acc[k]/N*1e3:8.2f} ms/step  {cnt[k]/N:6.1f} calls/step")
print("sum qlinear", sum(v for k, v in acc.items() if k.startswith("qlinear"))/N*1e3)
