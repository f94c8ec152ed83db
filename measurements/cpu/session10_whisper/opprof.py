"""Per-op time of whisper decode steps: every backend method timed (outermost call); linear split by shape."""
import sys, time, collections, os
import numpy as np
from suites.bench_whisper import load, decode_seconds, prompt_ids
from suites.common import speech_features
model = sys.argv[1]
lm = load("engine", "cpu", "float32", model)
lm.encode(speech_features(lm.config["num_mel_bins"]))
decode_seconds(lm, 16)
import engine
be = engine.backend("cpu"); cls = type(be)
names = ["linear", "attention", "layer_norm", "unary", "binary", "take", "where", "cast", "contiguous", "copy_",
         "getitem", "setitem", "reduce", "matmul", "full", "arange", "empty", "concat", "softmax", "sample", "pointwise", "arg_reduce", "index_put"]
def key(_n, a):
    k = _n + (":" + a[0] if _n in ("unary", "binary", "pointwise") and isinstance(a[0], str) else "")
    if _n == "linear": k += str(tuple(a[1].shape))
    if _n == "attention": k += "(cross)" if a[1].shape[2] >= 1500 else "(self)"
    return k
from bench.op_timer import time_backend_ops
tot, cnt = time_backend_ops(cls, names, key)
N = 64
decode_seconds(lm, 8); tot.clear(); cnt.clear()
wall = decode_seconds(lm, N)
s = sum(tot.values()) / N
print(f"instrumented wall {wall*1e3:.2f} ms/step, inside backend {s*1e3:.2f} ms, outside {(wall-s)*1e3:.2f} ms  load {os.getloadavg()[0]:.2f}")
for k, v in sorted(tot.items(), key=lambda kv: -kv[1]):
    print(f"  {k:40s} {v/N*1e3:8.3f} ms  {cnt[k]/N:6.1f} calls  {v/cnt[k]*1e6:7.1f} us/call")
