# Kept decode-layout bytes and the process's max RSS after loading SmolLM2 Q4_1 and decoding 8 tokens: `python mem.py TREE`.
import sys, resource, os
sys.path.insert(0, sys.argv[1])
from suites.bench_gguf import gguf_path
from engine import models
from engine.generation import generate
m = models.from_pretrained(gguf_path("smollm2-135m-q4_1"))
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
generate(m, [[1, 2, 3, 4]], max_new_tokens=8)
r1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import engine.backends.numpy_quant as nq
params = list({id(p): p for p in m.parameters()}.values())
fn = getattr(nq, "kept_layout_bytes", None) or getattr(nq, "kept_scale_bytes")
kept = sum(fn(p.data.array) for p in params if getattr(p, "is_quantized", False))
w = sum(p.nbytes for p in params)
print(f"{sys.argv[1]}: weights {w/1e6:.1f} MB, kept {kept/1e6:.1f} MB, maxrss after load {r0/1e3:.0f} MB, after decode {r1/1e3:.0f} MB")
