"""Probe what the GPU machine's cupy can do (bf16, erf, allocator hook, DLPack with torch)."""
import json, os, sys, traceback
out = {}
def probe(name, fn):
    try:
        out[name] = fn()
    except Exception as e:
        out[name] = f"FAIL {type(e).__name__}: {str(e)[:200]}"
import cupy, numpy as np, ml_dtypes
out["cupy"] = cupy.__version__
out["numpy"] = np.__version__
out["ml_dtypes"] = ml_dtypes.__version__
probe("bf16_zeros", lambda: str(cupy.zeros(4, dtype=ml_dtypes.bfloat16).dtype))
probe("bf16_add", lambda: str((cupy.ones(4, dtype=ml_dtypes.bfloat16) + 1).get()))
probe("bf16_astype_f32", lambda: str(cupy.ones(4, dtype=ml_dtypes.bfloat16).astype(cupy.float32).get()))
probe("bf16_matmul", lambda: str((cupy.ones((4,4), dtype=ml_dtypes.bfloat16) @ cupy.ones((4,4), dtype=ml_dtypes.bfloat16)).get()[0]))
probe("cupy_bfloat16_attr", lambda: str(getattr(cupy, "bfloat16", None)))
probe("erf", lambda: str(__import__("cupyx.scipy.special", fromlist=["erf"]).erf(cupy.ones(2)).get()))
probe("memory_Memory", lambda: str(cupy.cuda.memory.Memory(1 << 20).ptr > 0))
probe("fp16_matmul", lambda: str((cupy.ones((64,64), dtype=cupy.float16) @ cupy.ones((64,64), dtype=cupy.float16)).get()[0,0]))
def dl():
    import torch
    t = torch.ones(3, dtype=torch.bfloat16, device="cuda")
    c = cupy.from_dlpack(t)
    return str(c.dtype)
probe("dlpack_torch_bf16", dl)
def capture():
    s = cupy.cuda.Stream(non_blocking=True)
    a = cupy.ones((64, 64), dtype=cupy.float32)
    with s:
        s.begin_capture()
        b = a * 2
        g = s.end_capture()
    g.launch(s); s.synchronize()
    return "ok " + str(float(b[0,0]))
probe("graph_capture_elementwise", capture)
def capture_mm():
    s = cupy.cuda.Stream(non_blocking=True)
    a = cupy.ones((64, 64), dtype=cupy.float32)
    with s:
        s.begin_capture()
        b = a @ a
        g = s.end_capture()
    return "ok"
probe("graph_capture_matmul", capture_mm)
probe("nvidia_smi", lambda: os.popen("nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv,noheader").read().strip())
probe("nvcc", lambda: os.popen("nvcc --version | tail -2").read().strip())
import torch; out["torch"] = torch.__version__
try:
    import transformers; out["transformers"] = transformers.__version__
except Exception as e:
    out["transformers"] = str(e)
print(json.dumps(out, indent=1))
json.dump(out, open(os.path.join(os.environ.get("OUT", "."), "probe.json"), "w"), indent=1)
