"""Session 23, prepared in session 22: why bench/tp_torch.py's TP = 1 decode of the Llama-2-7B shape ran 10.6 tok/s on
one H200 where the llm suite's torch eager runner ran 43 (measurements/h200/NOTES.md, session 22). Builds the model
as tp_torch does (no mesh), decodes a few steps, then profiles 8 steps with torch.profiler (CPU and CUDA) and prints
the ops by self CPU time and by CUDA time, and the step time with and without the host read a token.
Usage: python tp_torch_profile.py [MODEL] (default llama:llama-2-7b)"""
import sys
import time

import torch
import transformers

sys.path.insert(0, ".")
from bench.tp_torch import build  # noqa: E402

spec = sys.argv[1] if len(sys.argv) > 1 else "llama:llama-2-7b"
dev = torch.device("cuda", 0)
model, cfg, _ = build(spec, torch.float16, dev, None)
print("attn", model.config._attn_implementation, "dtype", next(model.parameters()).dtype,
      "device", next(model.parameters()).device, flush=True)
with torch.no_grad():
    for read in (True, False):
        cache = transformers.DynamicCache(config=model.config)
        out = model(input_ids=torch.arange(3, 19, device=dev)[None], past_key_values=cache, use_cache=True)
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        for i in range(24):
            if i == 8:
                torch.cuda.synchronize()
                t0 = time.perf_counter()
            out = model(input_ids=tok, past_key_values=out.past_key_values, use_cache=True)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            if read:
                int(tok)
        torch.cuda.synchronize()
        print(f"host read a token {read}: {(time.perf_counter() - t0) / 16 * 1e3:.1f} ms a step", flush=True)
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(8):
            out = model(input_ids=tok, past_key_values=out.past_key_values, use_cache=True)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
        torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))
