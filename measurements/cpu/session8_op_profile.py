"""Per-op-type time of one encoder forward (session 8): the engine with every backend method timed (outermost call;
dispatch = wall time less backend time), torch with torch.profiler (self CPU time). From the repository root:
    flock /tmp/taper_cpu_bench.lock python measurements/cpu/session8_op_profile.py engine 32 [bert:all-minilm-l6-v2]"""
import sys, time, statistics, collections, functools
sys.path.insert(0, ".")
from bench.cpu_ab import setup_bench
impl, batch = sys.argv[1], sys.argv[2]
model = sys.argv[3] if len(sys.argv) > 3 else "bert:all-minilm-l6-v2"
bench = "bench_encoders.BertBatch.time_forward" if model.startswith("bert") else "bench_encoders.ClipEncode.time_forward"
fn, args = setup_bench(bench, impl, ["cpu", "float32", model, batch])
for _ in range(2): fn(*args)
N = 5 if batch == "32" else 20
ts = []
for _ in range(N):
    t = time.perf_counter(); fn(*args); ts.append(time.perf_counter() - t)
print(f"{impl} b{batch} median {statistics.median(ts)*1e3:.1f} ms")
if impl == "engine":
    import engine
    be = engine.backend("cpu")
    cls = type(be)
    names = ["linear", "attention", "layer_norm", "unary", "binary", "take", "where", "cast", "contiguous", "copy_",
             "getitem", "reduce", "matmul", "full", "arange", "empty", "concat", "sdpa", "softmax", "from_numpy", "strided"]
    from bench.op_timer import time_backend_ops
    tot, cnt = time_backend_ops(cls, names, lambda _n, a: _n + (":" + a[0] if _n in ("unary", "binary") and isinstance(a[0], str) else ""))
    fn(*args); tot.clear(); cnt.clear()
    t = time.perf_counter()
    for _ in range(N): fn(*args)
    wall = (time.perf_counter() - t) / N
    s = sum(tot.values()) / N
    print(f"instrumented wall {wall*1e3:.1f} ms/call, inside backend {s*1e3:.1f} ms, outside (python dispatch) {(wall-s)*1e3:.1f} ms")
    for k, v in sorted(tot.items(), key=lambda kv: -kv[1]):
        print(f"  {k:24s} {v/N*1e3:8.2f} ms  {cnt[k]//N:5d} calls")
else:
    import torch
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(N): fn(*args)
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=40))
