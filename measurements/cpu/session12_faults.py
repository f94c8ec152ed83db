"""Minor page faults of one engine benchmark call by backend op (session 12): every public backend method's
outermost call counted with getrusage's ru_minflt, convs and interpolations keyed by shape. From the repository root:
    PYTHONPATH=. python measurements/cpu/session12_faults.py bench_detect.YoloDetect.time_detect cpu float32 640"""
import collections
import resource
import sys

sys.path.insert(0, ".")
from bench.cpu_ab import setup_bench  # noqa: E402

fn, args = setup_bench(sys.argv[1], "engine", sys.argv[2:5])
fn(*args)
import engine  # noqa: E402

cls = type(engine.backend("cpu"))
flt, depth = collections.Counter(), [0]


def key(name, a):
    if name in ("conv", "conv_act"):
        return f"{name} x{tuple(a[0].shape)} w{tuple(a[1].shape)} s{tuple(a[3])}"
    return f"{name} {tuple(a[0].shape)}" if name == "interpolate" else name


for n in [m for m in dir(cls) if not m.startswith("_") and callable(getattr(cls, m))]:
    def wrapped(self, *a, _f=getattr(cls, n), _n=n, **k):
        if depth[0]:
            return _f(self, *a, **k)
        depth[0] += 1
        r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        try:
            return _f(self, *a, **k)
        finally:
            depth[0] -= 1
            flt[key(_n, a)] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0
    setattr(cls, n, wrapped)

r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    fn(*args)
print(f"minor faults per call {(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 5:.0f}")
for k, v in flt.most_common(15):
    print(f"{v / 5:8.0f} {k}")
