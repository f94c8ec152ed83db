"""In-process A/B of the four decode changes: toggles set per run, alternating, wall and thread-CPU ms/step."""
import os, sys, time, statistics, math
import numpy as np
from suites.bench_whisper import load, decode_seconds, prompt_ids
from suites.common import speech_features
from engine.backends.numpy_attention import AttentionKernels
from engine.backends.numpy_nn import NnKernels
import engine.models.whisper.model as WM

model, rounds, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
variants = sys.argv[4].split(",")  # names: all, no1, no2, no3, no4, none
lm = load("engine", "cpu", "float32", model)
feats = speech_features(lm.config["num_mel_bins"])
lm.encode(feats)
orig_one = AttentionKernels._attention_one
orig_small = NnKernels.NORM_SMALL
class _M:  # math with frexp saying "not a power of two"
    def __getattr__(self, n): return getattr(math, n)
    @staticmethod
    def frexp(x): return (0.75, 0)
orig_linear = NnKernels.linear
from engine.backends.numpy_threads import ROW_THREADS
from engine.backends.blas_threads import BLAS_THREADS as BT
def split_linear(self, x, w, b, out_dtype):
    if w.shape[0] >= 32768 and x.size == x.shape[-1] and b is None:
        out = self.empty(x.shape[:-1] + (w.shape[0],), out_dtype)
        o2, x2 = out.reshape(1, -1), x.reshape(1, -1)
        def run(lo, hi, piece):
            np.matmul(x2, w[lo:hi].T, out=o2[:, lo:hi])
        with BT.forced_one():
            ROW_THREADS.run(run, w.shape[0], 2)
        return out
    return orig_linear(self, x, w, b, out_dtype)
from engine.nn.linear import Linear
mod = lm.module
lins = [m for m in list(mod.model.decoder.modules()) + [mod.proj_out] if isinstance(m, Linear)]
im = {id(m): m.weight for m in lins}
om = {id(m): (m.weight.contiguous() if m.weight.is_contiguous() is False else m.weight) for m in lins}
def layout(v):
    d = om if v == "om" else im
    for m in lins: m.weight = d[id(m)]
    mod.model.decoder.embed_tokens.weight = mod.proj_out.weight
def setv(v):
    layout(v)
    NnKernels.linear = split_linear if v == "split" else orig_linear
    AttentionKernels._attention_one = (lambda self, q, k, v_, mask, sc, od: self._attention_rows(q, k, v_, mask, sc, od)) if v in ("no1", "none") else orig_one
    AttentionKernels.attention_keys_transposed = property(lambda self: v not in ("no2", "none") and self.xp is np)
    NnKernels.NORM_SMALL = 0 if v in ("no3", "none") else orig_small
    WM.math = _M() if v in ("no4", "none") else math
    from engine.backends.blas_threads import BLAS_THREADS
    BLAS_THREADS.BUSY_GEMM = 16e6 if v == "bg16" else float("inf")
    BLAS_THREADS.busy = (lambda: False) if v == "idle" else (lambda: True) if v == "busy" else type(BLAS_THREADS).busy.__get__(BLAS_THREADS)
    pass
res = {v: [] for v in variants}
ids = prompt_ids(lm.config)
for r in range(rounds):
    for v in (variants if r % 2 == 0 else variants[::-1]):
        setv(v)
        decode_seconds(lm, 8)
        lm.start(ids, steps + 1)
        ts = []
        for _ in range(steps):
            t0 = time.perf_counter(); lm.step(); ts.append(time.perf_counter() - t0)
        lm.tokens()
        res[v].append(np.array(ts) * 1e3)
summ = {}
for v in variants:
    a = np.array(res[v])  # (rounds, steps)
    floor = a.min(axis=0).mean()  # per position the best of the rounds, averaged over positions
    summ[v] = floor
    print(f"{v:5s} per-step ms: floor {floor:.3f}  p20 {np.percentile(a, 20):.3f}  median {np.median(a):.3f}  mean-of-round-medians {np.median(np.median(a, axis=1)):.3f}")
base = variants[0]
for v in variants[1:]:
    print(f"{v}/{base}: floor ratio {summ[v] / summ[base]:.3f}  p20 ratio {np.percentile(np.array(res[v]), 20) / np.percentile(np.array(res[base]), 20):.3f}")
print("load", os.getloadavg())
