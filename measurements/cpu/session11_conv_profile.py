"""Per-op and per-conv-shape time of one engine benchmark call on the CPU (session 11): every public backend
method timed at its outermost call, convs grouped by (N, C, H, W, O, k, stride, groups). From the repository
root:
    flock /tmp/taper_cpu_bench.lock python measurements/cpu/session11_conv_profile.py \\
        bench_diffusion.UNetStep.time_unet_step cpu float32 sd-1.5 [calls]"""
import collections
import statistics
import sys
import time

sys.path.insert(0, ".")
from bench.cpu_ab import setup_bench  # noqa: E402
from bench.op_timer import time_backend_ops  # noqa: E402

bench, params = sys.argv[1], sys.argv[2:5]
calls = int(sys.argv[5]) if len(sys.argv) > 5 else 1
fn, args = setup_bench(bench, "engine", params)
fn(*args)
import engine  # noqa: E402

cls = type(engine.backend("cpu"))


def key(name, a):
    if name in ("conv", "conv_act", "conv_transpose"):
        x, w, stride = a[0], a[1], a[3]  # (x, w, b, stride, ...)
        return f"{name} x{tuple(x.shape)} w{tuple(w.shape)} s{tuple(stride)}"
    if name in ("unary", "binary") and isinstance(a[0], str):
        return f"{name}:{a[0]}"
    return name


tot, cnt = time_backend_ops(cls, [m for m in dir(cls) if not m.startswith("_") and callable(getattr(cls, m))], key)

ts = []
for _ in range(calls):
    t = time.perf_counter()
    fn(*args)
    ts.append(time.perf_counter() - t)
wall = statistics.median(ts)
inside = sum(tot.values()) / calls
print(f"wall {wall * 1e3:.1f} ms/call, inside backend {inside * 1e3:.1f} ms")
by_op = collections.defaultdict(float)
for k, v in tot.items():
    by_op[k.split(" ")[0]] += v
for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:15]:
    print(f"  {k:40s} {v / calls * 1e3:9.1f} ms")
for k, v in sorted(tot.items(), key=lambda kv: -kv[1])[:40]:
    print(f"  {k:70s} {v / calls * 1e3:9.1f} ms {cnt[k] // calls:4d} calls")
