# Time per decode step in every backend method (top-level calls, and calls nested in another method apart),
# and the rest of the step (Python outside the backend): SmolLM2 Q4_1 on the engine CPU path, 32 steps, 3rd run.
import sys, time, os
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))  # this checkout
from suites.bench_gguf import gguf_path
from suites.common import get_impl
from suites.bench_llm import prompt_ids, PROMPT
import numpy as np
from collections import defaultdict
lm = get_impl("engine", "cpu", "float32").load(gguf_path("smollm2-135m-q4_1"))
b = lm.impl.backend
acc = defaultdict(float); cnt = defaultdict(int)
depth = [0]
names = [n for n in dir(type(b)) if not n.startswith("_") and callable(getattr(b, n, None))]
skip = {"empty", "strided", "wrap", "raw_alloc", "synchronize", "xp"}
for name in names:
    if name in skip: continue
    f = getattr(b, name)
    def g(*a, _f=f, _n=name, **k):
        depth[0] += 1
        t = time.perf_counter()
        try:
            return _f(*a, **k)
        finally:
            dt = time.perf_counter() - t
            depth[0] -= 1
            key = _n if depth[0] == 0 else "  (nested) " + _n
            acc[key] += dt; cnt[key] += 1
    try: setattr(b, name, g)
    except Exception: pass
ids = prompt_ids(lm.config["vocab_size"], 1, PROMPT)
N = 32
for rep in range(3):
    lm.start(ids, N + 2)
    acc.clear(); cnt.clear()
    t = time.perf_counter()
    for _ in range(N): lm.step()
    tot = (time.perf_counter() - t) / N * 1e3
print("ms/step", tot)
top = 0
for k in sorted(acc, key=lambda k: -acc[k]):
    print(f"{k:40s} {acc[k]/N*1e3:8.2f} ms/step  {cnt[k]/N:6.1f} calls/step")
    if not k.startswith(" "): top += acc[k]
print("top-level backend total", top / N * 1e3, "-> outside backend", tot - top / N * 1e3)
