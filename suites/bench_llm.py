"""LLM decode and prefill through impls/: the engine beside torch eager, torch.compile and ONNX Runtime,
the same preset shape (engine.models' presets, the one table of model shapes) with random weights.

- ``Decode``: greedy decode at batch B from a PROMPT-token prompt through each implementation's own
  loop (engine: engine.generation.Decoder, a captured CUDA graph on a GPU; ``loop="eager"`` runs the
  engine's same step uncaptured; torch: transformers with a DynamicCache; torch-compile: a StaticCache
  under torch.compile(mode="reduce-overhead") on CUDA; ONNX Runtime has no decode loop: skipped).
  An untimed warm-up run compiles or captures first (track_warmup_s); the timed run is N steps.
  Units: tokens_per_s (per row), ms_per_token, achieved_gb_per_s (weight bytes a step reads x steps/s;
  a mixture of experts reads only its routed experts: step_bytes).
- ``Prefill``: PROMPT tokens to the first token (track_prefill_ms).
- ``Memory`` (cuda): peak allocator bytes of a LONG-token decode at batch 1 beside the floor of
  weights + KV cache (track_peak_device_bytes, track_overhead_percent).

As a script: every implementation in one process, interleaved round by round (the box may be shared);
one JSON line per measurement, then the engine's ratio to the best other:

    python -m suites.bench_llm --model llama:llama-2-7b --device cuda --dtype float16 \\
        --impl engine,torch,torch-compile [--batch 1,8] [--prefill 512] [--memory 4096] [--out FILE]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import numpy as np

from impls import ALTERNATIVES, CANDIDATE
from suites.common import DEVICES, IMPLS, QUICK, get_impl, measured, prepared, reset, sizes
from suites.timing import step_seconds

PROMPT = 128
STEPS = sizes([128], [8])[0]
PREFILL = {"cpu": 128, "cuda": 512}
LONG = 4096
MODELS = sizes(["llama:tiny", "llama:tinyllama-1.1b", "llama:llama-2-7b", "mistral:mistral-7b", "qwen2:qwen2-7b",
                "gemma:gemma-7b", "phi3:phi-3-mini-4k", "mixtral:mixtral-8x7b"], ["llama:tiny"])
CPU_MODELS = ("llama:tiny", "llama:tinyllama-1.1b")
LOOPS = ["default", "eager"]
BATCHES = [1, 8]


def check(impl: str, device: str, dtype: str, model: str, batch: int = 1, loop: str = "default") -> None:
    """NotImplementedError (a skip) for combinations not measured: 7B-class models on the cpu, tiny
    ones on a GPU (except under TAPER_BENCH_QUICK), 16-bit on the cpu beyond tiny. (A loop an
    implementation does not have is its own Unavailable, from load.)"""
    tiny = model.endswith(":tiny")
    if device == "cpu" and model not in CPU_MODELS:
        raise NotImplementedError(f"{model} is measured on a GPU")
    if device == "cuda" and model in CPU_MODELS and not (QUICK and tiny):
        raise NotImplementedError(f"{model} is measured on the cpu")
    if device == "cpu" and dtype != "float32" and not tiny:
        raise NotImplementedError(f"{dtype} on the cpu is only measured for tiny models (16-bit matmuls upcast)")
    if batch > 1 and device == "cpu" and not tiny:
        raise NotImplementedError("batched decode is measured on a GPU")


def load(impl: str, device: str, dtype: str, model: str, loop: str = "default"):
    """The loaded model (memoised per process)."""
    def build():
        return get_impl(impl, device, dtype).load(model, loop=loop)
    return prepared(("llm", impl, device, dtype, model, loop), build)


def prompt_ids(vocab: int, batch: int, length: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, vocab, (batch, length))


# ---- measurements (the asv classes and the script share them) ------------------------------------------------
def warm_up(lm, batch: int, steps: int = STEPS) -> float:
    """An untimed run of the timed loop itself, at the timed shape (it compiles / captures everything
    the loop uses, once: a decoder serves every run of one shape); seconds."""
    t0 = time.perf_counter()
    decode_seconds(lm, batch, steps)
    lm.impl.synchronize()
    return time.perf_counter() - t0


def decode_seconds(lm, batch: int, steps: int = STEPS) -> float:
    """Seconds per step over `steps` decode steps after a prefill (the host reads no token between)."""
    return step_seconds(lm, prompt_ids(lm.config["vocab_size"], batch, PROMPT), steps)


def prefill_seconds(lm, length: int) -> float:
    ids = prompt_ids(lm.config["vocab_size"], 1, length)
    lm.impl.synchronize()
    t0 = time.perf_counter()
    lm.prefill(ids)
    lm.impl.synchronize()
    return time.perf_counter() - t0


def kv_bytes(config: dict, batch: int, length: int, itemsize: int) -> int:
    heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    hd = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return 2 * config["num_hidden_layers"] * batch * heads * length * hd * itemsize


def step_bytes(config: dict, weight_bytes: int, itemsize: int, batch: int) -> int:
    """The weight bytes one decode step reads: all of them, except a mixture of experts' experts that no
    row routes to (batch rows pick at most batch * num_experts_per_tok of num_local_experts)."""
    n_exp, k = config.get("num_local_experts") or 0, config.get("num_experts_per_tok") or 0
    if not n_exp or not k:
        return weight_bytes
    expert = 3 * config["hidden_size"] * config["intermediate_size"] * itemsize  # w1, w3 (gate, up), w2 (down)
    return weight_bytes - config["num_hidden_layers"] * (n_exp - min(n_exp, k * batch)) * expert


def memory_peak(lm, length: int = LONG) -> dict:
    """Peak allocator bytes over a decode to `length` tokens (weights included) and the floor."""
    im = lm.impl
    im.reset_peak()
    before = im.memory_stats().get("allocated_bytes")
    if before is None:
        raise NotImplementedError(f"{im.name} keeps no allocator statistics on {im.device}")
    ids = prompt_ids(lm.config["vocab_size"], 1, PROMPT)
    lm.generate(ids, length - PROMPT)
    im.synchronize()
    peak = im.memory_stats()["peak_bytes"]
    floor = lm.weight_bytes + kv_bytes(lm.config, 1, length, np.dtype(im.np_dtype).itemsize)
    return {"peak_bytes": float(peak - before + lm.weight_bytes), "floor_bytes": float(floor)}


# ---- asv ----------------------------------------------------------------------------------------------------------
def measure_decode(impl, device, dtype, model, batch, loop) -> dict:
    lm = load(impl, device, dtype, model, loop)
    w = warm_up(lm, batch)
    s = float(np.median([decode_seconds(lm, batch) for _ in range(3)]))
    read = step_bytes(lm.config, lm.weight_bytes, np.dtype(lm.impl.np_dtype).itemsize, batch)
    return {"tokens_per_s": 1.0 / s, "ms_per_token": s * 1e3, "gb_per_s": read / s / 1e9, "warmup_s": w}


class Decode:
    params = (IMPLS, DEVICES, ["float16", "bfloat16", "float32"], MODELS, BATCHES, LOOPS)
    param_names = ["impl", "device", "dtype", "model", "batch", "loop"]
    timeout = 1800

    def setup(self, impl, device, dtype, model, batch, loop):
        check(impl, device, dtype, model, batch, loop)
        self.r = measured(("decode", impl, device, dtype, model, batch, loop),
                          lambda: measure_decode(impl, device, dtype, model, batch, loop))

    def track_tokens_per_s(self, impl, device, dtype, model, batch, loop):
        return self.r["tokens_per_s"]
    track_tokens_per_s.unit = "tokens_per_s"

    def track_ms_per_token(self, impl, device, dtype, model, batch, loop):
        return self.r["ms_per_token"]
    track_ms_per_token.unit = "ms_per_token"

    def track_achieved_gb_per_s(self, impl, device, dtype, model, batch, loop):
        """Weight bytes x decode steps per second."""
        return self.r["gb_per_s"]
    track_achieved_gb_per_s.unit = "gb_per_s"

    def track_warmup_s(self, impl, device, dtype, model, batch, loop):
        """Compile or capture time of the first runs (kept apart from the timed steps)."""
        return self.r["warmup_s"]
    track_warmup_s.unit = "s"


class Prefill:
    params = (IMPLS, DEVICES, ["float16", "bfloat16", "float32"], MODELS)
    param_names = ["impl", "device", "dtype", "model"]
    timeout = 1800

    def setup(self, impl, device, dtype, model):
        check(impl, device, dtype, model)
        n = PREFILL[device] if not QUICK else 16

        def run():
            lm = load(impl, device, dtype, model)
            for _ in range(2):  # warm-up: compilation, export; the engine captures a recurring prompt shape at its
                prefill_seconds(lm, n)  # second prefill (engine.generation), TAPER_ENGINE_CAPTURE=0 times it eagerly
            return float(np.median([prefill_seconds(lm, n) for _ in range(3)]) * 1e3)
        self.ms = measured(("prefill", impl, device, dtype, model), run)

    def track_prefill_ms(self, impl, device, dtype, model):
        return self.ms
    track_prefill_ms.unit = "ms"


class Memory:
    params = (IMPLS, DEVICES, ["float16"], MODELS)
    param_names = ["impl", "device", "dtype", "model"]
    timeout = 1800

    def setup(self, impl, device, dtype, model):
        if device != "cuda":
            raise NotImplementedError("GPU-only: peak device memory is measured on a GPU")
        check(impl, device, dtype, model)
        self.m = measured(("mem", impl, device, dtype, model),
                          lambda: memory_peak(load(impl, device, dtype, model), LONG if not QUICK else 64))

    def track_peak_device_bytes(self, impl, device, dtype, model):
        return self.m["peak_bytes"]
    track_peak_device_bytes.unit = "bytes"

    def track_overhead_percent(self, impl, device, dtype, model):
        """Peak over the floor of weights + KV cache, in percent (lower is better)."""
        return 100.0 * (self.m["peak_bytes"] / self.m["floor_bytes"] - 1.0)
    track_overhead_percent.unit = "percent_over_floor"


# ---- script ----------------------------------------------------------------------------------------------------
def _env(device: str) -> dict:
    from bench.probes import cpu_name, gpu_info
    out = {"cpu": cpu_name(), "cores": os.cpu_count()}
    if device == "cuda":
        g = gpu_info() or {}
        out.update(card=g.get("card") or g.get("name"), driver=g.get("driver"))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama:tinyllama-1.1b", help="a preset, model_type:preset")
    p.add_argument("--impl", default="engine,torch,torch-compile")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--eager", action="store_true", help="also the engine's uncaptured decode (loop=eager)")
    p.add_argument("--prefill", type=int, default=0, help="also time a prefill of this many tokens")
    p.add_argument("--memory", type=int, default=0, help="also the peak memory of a decode to this length")
    p.add_argument("--sequential", action="store_true",
                   help="one implementation at a time, freed before the next (models too big for two copies)")
    p.add_argument("--out", help="append the JSON lines to this file too")
    a = p.parse_args(argv)
    variants = [(i, "default") for i in a.impl.split(",") if i]
    variants += [(i, "eager") for i in a.impl.split(",") if i and a.eager]
    base = {"model": a.model, "device": a.device, "dtype": a.dtype, **_env(a.device)}
    out = open(a.out, "a") if a.out else None

    def emit(**kw):
        line = json.dumps({**base, **kw})
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    bw = get_impl(CANDIDATE, a.device, a.dtype).copy_gb_per_s()
    if bw:
        emit(metric="copy_gb_per_s", value=round(bw, 1))

    def label(impl, loop):
        return impl if loop == "default" else f"{impl} ({loop} loop)"

    def measure(group):
        lms = {}
        for impl, loop in group:
            for batch in map(int, a.batch.split(",")):
                try:
                    check(impl, a.device, a.dtype, a.model, batch, loop)
                    t0 = time.perf_counter()
                    lm = load(impl, a.device, a.dtype, a.model, loop)
                    if (impl, loop) not in {k[:2] for k in lms}:
                        emit(impl=label(impl, loop), metric="load_s", value=round(time.perf_counter() - t0, 2),
                             weight_bytes=lm.weight_bytes)
                    emit(impl=label(impl, loop), batch=batch, metric="warmup_s", value=round(warm_up(lm, batch), 2))
                    lms[(impl, loop, batch)] = lm
                except NotImplementedError as e:
                    emit(impl=label(impl, loop), batch=batch, metric="skipped", reason=str(e)[:300])
        samples = {k: [] for k in lms}
        for _ in range(a.rounds):
            for k, lm in lms.items():
                samples[k].append(decode_seconds(lm, k[2], a.steps))
        res = {}
        for (impl, loop, batch), lm in lms.items():
            s = float(np.median(samples[(impl, loop, batch)]))
            res[(label(impl, loop), batch)] = 1 / s
            extra = {"roofline_tokens_per_s": round(bw * 1e9 / lm.weight_bytes, 1)} if bw else {}
            emit(impl=label(impl, loop), batch=batch, metric="decode_tokens_per_s", value=round(1 / s, 2),
                 best=round(1 / min(samples[(impl, loop, batch)]), 2), ms_per_token=round(s * 1e3, 3),
                 achieved_gb_per_s=round(lm.weight_bytes / s / 1e9, 1), steps=a.steps, rounds=a.rounds,
                 context=f"{PROMPT}..{PROMPT + a.steps}", **extra)
        if a.prefill:
            for (impl, loop, batch), lm in lms.items():
                if batch != 1 or loop != "default":
                    continue
                try:
                    prefill_seconds(lm, a.prefill)
                    ts = [prefill_seconds(lm, a.prefill) for _ in range(3)]
                    emit(impl=impl, metric="prefill_ms", value=round(float(np.median(ts)) * 1e3, 2), tokens=a.prefill)
                except NotImplementedError as e:
                    emit(impl=impl, metric="prefill_ms", skipped=str(e)[:300])
        if a.memory:
            for (impl, loop, batch), lm in lms.items():
                if batch != 1 or loop != "default":
                    continue
                try:
                    m = memory_peak(lm, a.memory)
                    emit(impl=impl, metric="peak_device_bytes", value=int(m["peak_bytes"]),
                         floor_bytes=int(m["floor_bytes"]), over_floor_percent=round(100 * (m["peak_bytes"] /
                                                                                          m["floor_bytes"] - 1), 3),
                         tokens=a.memory)
                except NotImplementedError as e:
                    emit(impl=impl, metric="peak_device_bytes", skipped=str(e)[:300])
        return res

    res = {}
    for group in ([[v] for v in variants] if a.sequential else [variants]):
        res.update(measure(group))
        if a.sequential:
            reset()
            gc.collect()
    for batch in map(int, a.batch.split(",")):
        e = res.get((CANDIDATE, batch))
        others = {k: v for (k, b), v in res.items() if b == batch and k in ALTERNATIVES}
        if e and others:
            best = max(others, key=others.get)
            emit(impl=CANDIDATE, batch=batch, metric="ratio_to_best_other", value=round(e / others[best], 3),
                 best_other=best, **{f"vs_{k}": round(e / v, 3) for k, v in others.items()})
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
