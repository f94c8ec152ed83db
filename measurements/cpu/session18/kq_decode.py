# One decode step of a SmolLM2 GGUF on the CPU (engine, float32, the default plain step), each step timed:
# `python kq_decode.py FILE.gguf [steps]` prints the median and the quartiles of ms a step over `steps` steps
# (after 4 warm-up steps, which make the kept decode layouts), the last 6 tokens, and engine's path.
import sys, time
import numpy as np
import engine
from suites.common import get_impl
from suites.bench_llm import prompt_ids, PROMPT
impl = get_impl("engine", "cpu", "float32")
lm = impl.load(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 64
ids = prompt_ids(lm.config["vocab_size"], 1, PROMPT)
lm.start(ids, n + 5)
for _ in range(4):
    lm.step()
ts = []
for _ in range(n):
    t = time.perf_counter(); lm.step(); ts.append((time.perf_counter() - t) * 1e3)
q = np.percentile(ts, [25, 50, 75])
print(f"median {q[1]:.2f} ms (q1 {q[0]:.2f}, q3 {q[2]:.2f}) over {n} steps; last tokens {lm.tokens()[0][-6:]}; {engine.__file__}")
