"""LLaMA-shape decode on one GPU: the engine's CUDA-graph decoder beside transformers eager.

Each model shape is measured once per process by suites/gpu_decode.py (engine and torch in the same
run, on the same card, sharing the random weights through DLPack) and the track_ methods report
from that run, so a filtered run still compares like with like. CUDA only: elsewhere setup raises
NotImplementedError and asv skips. The measurement JSON lands beside the asv results via
`python suites/gpu_decode.py --out FILE` when run by hand.
"""
from __future__ import annotations

_RUNS: dict = {}


def _measure(model: str, dtype: str) -> dict:
    key = (model, dtype)
    if key not in _RUNS:
        from suites import gpu_decode
        _RUNS[key] = gpu_decode.main(["--shape", model, "--dtype", dtype])
    return _RUNS[key]


class Decode:
    params = (["engine", "torch"], ["cpu", "cuda"], ["llama-2-7b", "llama-3-8b", "mistral-7b", "llama-1b"],
              ["float16", "bfloat16"])
    param_names = ["impl", "device", "model", "dtype"]
    timeout = 1200

    def setup(self, impl, device, model, dtype):
        if device != "cuda":
            raise NotImplementedError("the graph decoder is CUDA-only (CPU decode: bench_llm)")
        if (model == "llama-3-8b") != (dtype == "bfloat16"):
            raise NotImplementedError("measured shapes: llama-3-8b in bf16, the others in fp16")
        try:
            import cupy
            import torch
            if not torch.cuda.is_available() or cupy.cuda.runtime.getDeviceCount() < 1:
                raise NotImplementedError("needs a CUDA GPU visible to torch and cupy")
        except ImportError as e:
            raise NotImplementedError(f"needs cupy and torch: {e}") from None
        self.run = _measure(model, dtype)

    def track_ms_per_token(self, impl, device, model, dtype):
        return self.run[f"{impl}_ms_per_token"]
    track_ms_per_token.unit = "ms_per_token"

    def track_prefill_512_ms(self, impl, device, model, dtype):
        return self.run[f"{impl}_prefill_ms"]
    track_prefill_512_ms.unit = "ms"

    def track_roofline_tokens_per_s(self, impl, device, model, dtype):
        """Weight bytes over the device copy bandwidth measured in the same run (a reference line)."""
        return self.run["roofline_tokens_per_s"]
    track_roofline_tokens_per_s.unit = "tokens_per_s"
