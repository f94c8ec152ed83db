import time, numpy as np, torch, cProfile, pstats, sys
import impls
torch.set_num_threads(1)
e = impls.get("engine","cpu","float32").load("bert:all-minilm-l6-v2")
t = impls.get("torch","cpu","float32").load("bert:all-minilm-l6-v2", weights=e.state_arrays())
from suites.bench_encoders import token_batch
for b in (1, 32):
    arrs = token_batch(30522, b, 128)
    for m in (e, t):
        inp = m.device_inputs(*arrs); m.run(inp)
        ts=[]
        for _ in range(3):
            s=time.perf_counter(); m.run(inp); ts.append(time.perf_counter()-s)
        print(b, m.impl.name, "%.1f ms" % (min(ts)*1e3))
    if b == 32:
        inp = e.device_inputs(*arrs)
        cProfile.run("e.run(inp)", "/tmp/p2")
        pstats.Stats("/tmp/p2").sort_stats("tottime").print_stats(10)
