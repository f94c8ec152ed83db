"""LLaMA-shape decode, prefill, load and memory on one GPU: engine graph decoder beside transformers
eager, in the same process on the same card, with random fp16/bf16 weights shared between the two
(zero-copy through DLPack, so both fit in memory at 7B).

    python suites/gpu_decode.py --shape llama-2-7b --out results.json [--load] [--memory]

Prints one JSON object per shape with tokens/s, ms, GB/s against the measured copy roofline, peak
memory and the card. suites/bench_decode.py wraps the same functions for asv.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

SHAPES = {
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, rms_norm_eps=1e-5, rope_theta=10000.0),
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0),
    "mistral-7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=32000, rms_norm_eps=1e-5, rope_theta=10000.0,
                       sliding_window=4096),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
                     tie_word_embeddings=True),
    "tiny": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=2, vocab_size=4096, rms_norm_eps=1e-5, rope_theta=10000.0),
}


def card_info() -> dict:
    q = "name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,memory.total"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout.strip().splitlines()[0]
        return dict(zip(q.split(","), [s.strip() for s in out.split(",")]))
    except Exception as e:  # no nvidia-smi
        return {"error": str(e)}


def copy_bandwidth(cupy) -> float:
    """Device-to-device copy of 4 GiB, bytes read + written per second (the decode roofline)."""
    n = 1 << 31
    a = cupy.empty(n, cupy.uint8)
    b = cupy.empty(n, cupy.uint8)
    b[...] = a
    cupy.cuda.Device().synchronize()
    s, e = cupy.cuda.Event(), cupy.cuda.Event()
    s.record()
    for _ in range(10):
        b[...] = a
    e.record()
    e.synchronize()
    ms = cupy.cuda.get_elapsed_time(s, e) / 10
    del a, b
    return 2 * n / (ms / 1e3)


def build(cfg: dict, dtype: str, seed: int = 0):
    """Random weights on the GPU with HF names; q/k/v and gate/up are views of fused buffers."""
    import cupy
    rng = cupy.random.default_rng(seed)
    dt = cupy.float16 if dtype == "float16" else __import__("ml_dtypes").bfloat16
    H, I = cfg["hidden_size"], cfg["intermediate_size"]
    hq, hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = H // hq

    def rand(*shape, std=0.02):
        return (rng.standard_normal(shape, dtype=cupy.float32) * std).astype(dt)
    sd, fused = {}, []
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        qkv = rand((hq + 2 * hkv) * d, H)
        gu = rand(2 * I, H)
        sd[p + "self_attn.q_proj.weight"] = qkv[:hq * d]
        sd[p + "self_attn.k_proj.weight"] = qkv[hq * d:(hq + hkv) * d]
        sd[p + "self_attn.v_proj.weight"] = qkv[(hq + hkv) * d:]
        sd[p + "self_attn.o_proj.weight"] = rand(H, hq * d)
        sd[p + "mlp.gate_proj.weight"] = gu[:I]
        sd[p + "mlp.up_proj.weight"] = gu[I:]
        sd[p + "mlp.down_proj.weight"] = rand(H, I)
        sd[p + "input_layernorm.weight"] = (1 + rand(H, std=0.1)).astype(dt)
        sd[p + "post_attention_layernorm.weight"] = (1 + rand(H, std=0.1)).astype(dt)
        fused.append((qkv, gu))
        del qkv, gu
    sd["model.embed_tokens.weight"] = rand(cfg["vocab_size"], H, std=1.0)
    sd["model.norm.weight"] = (1 + rand(H, std=0.1)).astype(dt)
    if not cfg.get("tie_word_embeddings"):
        sd["lm_head.weight"] = rand(cfg["vocab_size"], H)
    return sd, fused


def engine_decoder(cfg, sd, fused, max_seq):
    import cupy
    from engine.backends import cupy_kernels as K
    from engine.models.llama_graph import GraphDecoder, Shape, rope_tables
    shape = Shape.from_config(cfg)
    layers = []
    for i, (qkv, gu) in enumerate(fused):
        p = f"model.layers.{i}."
        layers.append({"qkv": qkv, "gate_up": K.interleave_glu(gu[:shape.intermediate_size], gu[shape.intermediate_size:]),
                       "o": sd[p + "self_attn.o_proj.weight"],
                       "down": sd[p + "mlp.down_proj.weight"], "ln1": sd[p + "input_layernorm.weight"],
                       "ln2": sd[p + "post_attention_layernorm.weight"]})
    glob = {"embed": sd["model.embed_tokens.weight"], "norm": sd["model.norm.weight"],
            "lm_head": sd.get("lm_head.weight", sd["model.embed_tokens.weight"])}
    d = shape.head_dim
    inv = 1.0 / (cfg.get("rope_theta", 10000.0) ** (np.arange(0, d, 2, dtype=np.float64) / d))
    cos, sin = rope_tables(inv, max_seq)
    return GraphDecoder(layers, glob, shape, cos, sin, max_seq=max_seq)


def hf_model(cfg, sd, dtype):
    import torch
    import transformers
    conf = transformers.LlamaConfig(**cfg, max_position_embeddings=8192)
    conf.torch_dtype = getattr(torch, dtype)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(conf)
    tsd = {k: torch.from_dlpack(v) for k, v in sd.items()}
    model.load_state_dict(tsd, strict=False, assign=True)
    if cfg.get("tie_word_embeddings"):
        model.tie_weights()
    model.model.rotary_emb = type(model.model.rotary_emb)(config=conf, device="cuda")
    return model.eval()


def measure_engine_decode(dec, prompt, new_tokens, reps=3):
    import cupy
    dec.generate(prompt, 8, captured=True)  # compile + capture
    best = None
    for _ in range(reps):
        dec.prefill(prompt)
        dec.step_i[0] = 0
        cupy.cuda.Device().synchronize()
        s, e = cupy.cuda.Event(), cupy.cuda.Event()
        s.record(dec.stream)
        for _ in range(new_tokens):
            dec.run_step(True)
        e.record(dec.stream)
        e.synchronize()
        ms = cupy.cuda.get_elapsed_time(s, e) / new_tokens
        best = ms if best is None else min(best, ms)
    return best


def measure_engine_prefill(dec, ids, reps=3):
    import cupy
    dec.prefill(ids)
    ts = []
    for _ in range(reps):
        cupy.cuda.Device().synchronize()
        t = time.perf_counter()
        dec.prefill(ids)
        cupy.cuda.Device().synchronize()
        ts.append((time.perf_counter() - t) * 1e3)
    return min(ts)


def measure_torch_generate(model, prompt, new_tokens):
    """transformers eager, DynamicCache: ms per decoded token (prefill excluded) and prefill ms."""
    import torch
    ids = torch.tensor(prompt)[None].cuda()
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm-up
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        torch.cuda.synchronize()
        t1 = time.perf_counter() - t
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=new_tokens + 1, min_new_tokens=new_tokens + 1, do_sample=False)
        torch.cuda.synchronize()
        tn = time.perf_counter() - t
    return (tn - t1) / new_tokens * 1e3


def measure_torch_loop(model, prompt, new_tokens, reps=2):
    """transformers eager as a hand-written greedy loop (DynamicCache, argmax on the GPU, no host
    sync per token): ms per decoded token. Reported beside generate() so the baseline is fair."""
    import torch
    from transformers import DynamicCache
    ids = torch.tensor(prompt)[None].cuda()
    best = None
    with torch.no_grad():
        for _ in range(reps):
            cache = DynamicCache()
            out = model(input_ids=ids, past_key_values=cache, use_cache=True)
            tok = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(new_tokens):
                out = model(input_ids=tok, past_key_values=cache, use_cache=True)
                tok = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            ms = (time.perf_counter() - t) / new_tokens * 1e3
            best = ms if best is None else min(best, ms)
    return best


def measure_torch_prefill(model, ids, reps=3):
    import torch
    x = torch.tensor(ids)[None].cuda()
    ts = []
    with torch.no_grad():
        model(x)
        for _ in range(reps):
            torch.cuda.synchronize()
            t = time.perf_counter()
            model(x)
            torch.cuda.synchronize()
            ts.append((time.perf_counter() - t) * 1e3)
    return min(ts)


def run_memory(cfg, dtype, impl, prompt_len=64, total=4096):
    """Peak device memory while decoding from a `prompt_len` prompt to `total` tokens, one
    implementation per process. engine: the engine pool's peak (every cupy allocation goes through
    it); torch: torch.cuda.max_memory_allocated."""
    import cupy
    prompt = np.random.default_rng(2).integers(0, cfg["vocab_size"], prompt_len).tolist()
    hq, hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg["hidden_size"] // hq
    item = 2
    kv_bytes = 2 * cfg["num_hidden_layers"] * hkv * total * d * item
    out = {"impl": impl, "prompt": prompt_len, "total_tokens": total, "kv_bytes": kv_bytes}
    if impl == "engine":
        import engine
        engine.backend("cuda")  # routes cupy's allocations through the engine pool
        sd, fused = build(cfg, dtype)
        dec = engine_decoder(cfg, sd, fused, max_seq=total)
        for k in [k for k in sd if ".mlp.gate_proj" in k or ".mlp.up_proj" in k]:
            del sd[k]  # the interleaved gate_up copy is the engine's; HF's views go
        fused.clear()
        cupy.get_default_memory_pool().free_all_blocks()
        weights = sum(v.nbytes for v in sd.values()) + sum(L["gate_up"].nbytes for L in dec.layers)
        engine.empty_cache("cuda")
        engine.backend("cuda").pool.reset_peak()
        dec.generate(prompt, total - prompt_len, captured=True)
        st = engine.memory_stats("cuda")
        out.update(weight_bytes=weights, peak_bytes=st["peak_bytes"], floor_bytes=weights + kv_bytes,
                   over_floor=st["peak_bytes"] / (weights + kv_bytes) - 1)
    else:  # transformers eager: 64 decode steps that end at `total` tokens of KV, peak over those steps
        import torch
        from transformers import DynamicCache
        sd, _ = build(cfg, dtype)
        model = hf_model(cfg, sd, dtype)
        weights = sum(v.nbytes for v in sd.values())
        long_prompt = np.random.default_rng(3).integers(0, cfg["vocab_size"], total - 64).tolist()
        with torch.no_grad():
            cache = DynamicCache()
            tok = model(input_ids=torch.tensor(long_prompt)[None].cuda(), past_key_values=cache,
                        use_cache=True).logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            for _ in range(64):
                tok = model(input_ids=tok, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        # weights live in cupy memory shared through DLPack, outside torch's allocator: add them
        out.update(method="decode-phase peak, last 64 steps up to total tokens", weight_bytes=weights,
                   torch_allocator_peak=peak, peak_bytes=weights + peak, floor_bytes=weights + kv_bytes,
                   over_floor=(weights + peak) / (weights + kv_bytes) - 1)
    return out


def run_load(cfg, dtype, path):
    """Seconds to get a checkpoint ready on the GPU from a warm page cache: engine's threaded pinned
    upload vs safetensors.torch.load_file(device='cuda')."""
    import cupy
    import torch
    from safetensors.torch import load_file

    from engine.io.device_load import load_to_device
    from engine.io.safetensors import SafetensorsWriter
    sd, _ = build(cfg, dtype)
    specs = [(k, v.dtype, v.shape) for k, v in sd.items()]
    with SafetensorsWriter(path, specs, {"format": "pt"}) as w:
        for k, v in sd.items():
            w.write(k, cupy.asnumpy(v))
    nbytes = sum(v.nbytes for v in sd.values())
    del sd
    cupy.get_default_memory_pool().free_all_blocks()
    subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    out = {"checkpoint_bytes": nbytes}
    for rep in range(3):
        cupy.cuda.Device().synchronize()
        t = time.perf_counter()
        ts = load_to_device(path, "cuda")
        cupy.cuda.Device().synchronize()
        out[f"engine_load_s_{rep}"] = time.perf_counter() - t
        del ts
        cupy.get_default_memory_pool().free_all_blocks()
        import engine
        engine.empty_cache("cuda")
        torch.cuda.synchronize()
        t = time.perf_counter()
        tt = load_file(path, device="cuda")
        torch.cuda.synchronize()
        out[f"safetensors_load_s_{rep}"] = time.perf_counter() - t
        del tt
        torch.cuda.empty_cache()
    # run 0 also pins the staging buffers (kept by the backend); later runs reuse them
    out["engine_first_load_s"] = out["engine_load_s_0"]
    out["engine_load_s"] = min(out["engine_load_s_1"], out["engine_load_s_2"])
    out["safetensors_load_s"] = min(out[f"safetensors_load_s_{i}"] for i in range(3))
    out["engine_load_gb_per_s"] = nbytes / out["engine_load_s"] / 1e9
    os.remove(path)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-2-7b", choices=sorted(SHAPES))
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--memory", choices=["engine", "torch"], default=None,
                    help="only measure peak memory of one implementation for a 4096-token decode")
    ap.add_argument("--load", default=None, metavar="PATH", help="only measure checkpoint load time via PATH")
    a = ap.parse_args(argv)
    import cupy
    import torch
    if a.memory or a.load:
        cfg = SHAPES[a.shape]
        res = run_memory(cfg, a.dtype, a.memory) if a.memory else run_load(cfg, a.dtype, a.load)
        res.update(shape=a.shape, dtype=a.dtype, card=card_info())
        print(json.dumps(res))
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(res) + "\n")
        return res
    res = {"shape": a.shape, "dtype": a.dtype, "card": card_info(), "torch": torch.__version__,
           "cupy": cupy.__version__, "prompt_tokens": a.prompt, "new_tokens": a.new}
    res["copy_gb_per_s"] = copy_bandwidth(cupy) / 1e9
    cfg = SHAPES[a.shape]
    sd, fused = build(cfg, a.dtype)
    weight_bytes = sum(v.nbytes for v in sd.values())
    res["weight_bytes"] = weight_bytes
    res["roofline_tokens_per_s"] = res["copy_gb_per_s"] * 1e9 / weight_bytes
    dec = engine_decoder(cfg, sd, fused, max_seq=max(a.prompt + a.new + 8, a.prefill + 8))
    prompt = np.random.default_rng(0).integers(0, cfg["vocab_size"], a.prompt).tolist()
    ms = measure_engine_decode(dec, prompt, a.new)
    res["engine_ms_per_token"] = ms
    res["engine_tokens_per_s"] = 1e3 / ms
    res["engine_achieved_gb_per_s"] = weight_bytes * res["engine_tokens_per_s"] / 1e9
    pre = np.random.default_rng(1).integers(0, cfg["vocab_size"], a.prefill).tolist()
    res["engine_prefill_ms"] = measure_engine_prefill(dec, pre)
    # the graph path equals the same kernels run eagerly, token for token
    g = dec.generate(prompt[:32], 24, captured=True)
    e = dec.generate(prompt[:32], 24, captured=False)
    res["graph_equals_eager"] = g == e
    del dec
    if not a.no_hf:
        model = hf_model(cfg, sd, a.dtype)
        res["torch_generate_ms_per_token"] = measure_torch_generate(model, prompt, a.new)
        res["torch_loop_ms_per_token"] = measure_torch_loop(model, prompt, a.new)
        hms = min(res["torch_generate_ms_per_token"], res["torch_loop_ms_per_token"])
        res["torch_ms_per_token"] = hms
        res["torch_tokens_per_s"] = 1e3 / hms
        res["torch_prefill_ms"] = measure_torch_prefill(model, pre)
        res["decode_speedup"] = res["engine_tokens_per_s"] / res["torch_tokens_per_s"]
        res["prefill_ratio_engine_over_torch"] = res["engine_prefill_ms"] / res["torch_prefill_ms"]
    print(json.dumps(res))
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(res) + "\n")
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
