# Decode ms a step (4 runs of 32 steps) of SmolLM2 Q4_1 on the CPU: the default plain step against capture=False (the
# fusion plan run eagerly, over a StaticCache): `python cap.py plain|false`.
import os, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))  # this checkout
from suites.bench_gguf import gguf_path
from suites.common import get_impl
from suites.bench_llm import prompt_ids, PROMPT
import numpy as np
impl = get_impl("engine", "cpu", "float32")
cap = {"plain": None, "false": False}[sys.argv[1]]
lm = impl.load(gguf_path("smollm2-135m-q4_1"), capture=cap)
ids = prompt_ids(lm.config["vocab_size"], 1, PROMPT)
N = 32
res = []
for rep in range(4):
    lm.start(ids, N + 1)
    t = time.perf_counter()
    for _ in range(N): lm.step()
    res.append((time.perf_counter() - t) / N * 1e3)
print(sys.argv[1], [f"{r:.1f}" for r in res], lm.tokens()[0][:8])
