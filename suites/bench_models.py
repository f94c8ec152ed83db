"""Whole models from engine.models beside transformers: a Hugging Face model directory loaded until it is
ready on the device, and GPU utilisation while decoding.

- ``ModelLoad.time_from_pretrained``: ``engine.models.from_pretrained`` (VarBuilder over mmapped
  safetensors; zero-copy on the cpu when the dtype matches) against transformers'
  ``AutoModelForCausalLM.from_pretrained(...).to(device)``, both reading the same directory
  (config.json + model.safetensors with random weights, written by setup_cache), warm page cache,
  after one untimed load per process (lazy imports are not load time).
  On the cpu "ready" includes reading every weight page once, as in bench_load.
- ``DecodeUtilization.track_gpu_utilization_percent`` (cuda only): NVML utilisation sampled every
  50 ms over 3 s of greedy decode steps at batch 1 (the models and caches of bench_llm). Caveat: NVML
  utilisation is the share of time in which at least one kernel was running; it says a kernel was
  running, not how busy the SMs or the memory were. The unit is "percent" (neither side is "better").

16-bit dtypes on the cpu run for the tiny model only (both sides upcast per matmul there), as in
bench_llm.
"""
import os
import time

from suites.common import DEVICES, DTYPES, IMPLS, get_impl, prepared, sizes, warm_page_cache, write_model_dir

MODELS = sizes(["llama:tiny", "llama:tinyllama-1.1b"], ["llama:tiny"])
UTIL_TOKENS = 64  # new tokens per sampled generate (the warm-up runs the same length: one decoder shape)


def _cpu_16bit_skip(device, dtype, model):
    if device == "cpu" and dtype != "float32" and not model.endswith(":tiny"):
        raise NotImplementedError(f"{dtype} on the cpu is only benchmarked for tiny models")


class ModelLoad:
    params = (IMPLS, DEVICES, DTYPES, MODELS)
    param_names = ["impl", "device", "dtype", "model"]
    number = 1
    repeat = (1, 5, 60.0)
    warmup_time = 0.0
    timeout = 900

    def setup_cache(self):
        dirs = {}
        for model in MODELS:
            preset = model.partition(":")[2]
            for dtype in DTYPES:  # the cpu reads only float32 beyond tiny, the GPU all three
                dirs[f"{model}/{dtype}"] = write_model_dir(os.path.abspath(f"{preset}-{dtype}"), preset, dtype)
        return dirs

    setup_cache.timeout = 1800

    def setup(self, dirs, impl, device, dtype, model):
        _cpu_16bit_skip(device, dtype, model)
        im = get_impl(impl, device, dtype)
        path = dirs[f"{model}/{dtype}"]
        self.run = im.build(im.load, path)
        # one untimed load per process first: lazy imports (transformers' model code) are not load time
        prepared(("model-load-warmup", impl, device, dtype, model), lambda: self.run() is None)
        warm_page_cache([os.path.join(path, f) for f in os.listdir(path)])

    def time_from_pretrained(self, dirs, impl, device, dtype, model):
        self.run()


class DecodeUtilization:
    params = (IMPLS, DEVICES, DTYPES, MODELS)
    param_names = ["impl", "device", "dtype", "model"]
    timeout = 900

    def setup(self, impl, device, dtype, model):
        if device != "cuda":
            raise NotImplementedError("GPU-only: GPU utilisation needs a GPU")
        from bench.probes import UtilizationSampler
        from suites.bench_llm import check, load, prompt_ids
        check(impl, device, dtype, model)
        probe = UtilizationSampler()
        with probe:
            pass
        if probe.error:
            raise NotImplementedError(probe.error)
        self.sampler_cls = UtilizationSampler
        self.lm = load(impl, device, dtype, model)
        self.ids = prompt_ids(self.lm.config["vocab_size"], 1, 128)
        self.lm.generate(self.ids, UTIL_TOKENS)  # compile / capture first, at the sampled shape

    def track_gpu_utilization_percent(self, impl, device, dtype, model):
        lm = self.lm
        with self.sampler_cls(interval_s=0.05) as u:
            t_end = time.perf_counter() + 3.0
            while time.perf_counter() < t_end:
                lm.generate(self.ids, UTIL_TOKENS)
        return u.mean

    track_gpu_utilization_percent.unit = "utilization_percent"
