"""LLM decode and prefill: engine models (engine.models) beside transformers eager, same preset shape,
random weights (N(0, 0.02), norms 1).

- decode: one token per step at batch 1 with a KV cache holding a 128-token prompt (the cache is cut
  back to 128 before each timed step, so every sample sees the same context length);
- prefill: a 128-token prompt into a fresh cache, logits of the last position only (what generation
  needs; transformers with logits_to_keep=1).

asv: classes Decode, Prefill, Memory with params impl x device x dtype x model. An implementation or
device that is missing is skipped (NotImplementedError in setup); so are 16-bit dtypes on the CPU
for the non-tiny models (both sides upcast per matmul there; not a configuration anyone runs).

As a script, engine and transformers are timed in the same process, interleaved round by round
(the box may be shared), and one JSON line per measurement is printed, then the ratios:

    python suites/bench_llm.py --model tinyllama-1.1b --impl engine,torch [--steps 16 --rounds 3]
    python suites/bench_llm.py --model tinyllama-1.1b --isolate      # one process per implementation

In one process, torch's OpenMP workers busy-wait after each parallel region and take the cores from
numpy's BLAS threads (seen here: engine decode 12 -> 9 tokens/s, a 13 s first prefill). So the script
sets OMP_WAIT_POLICY=PASSIVE unless it is set already (torch alone measured the same either way, within
noise); --isolate instead runs each implementation alone in a child process with library defaults.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict

import numpy as np

if __package__ in (None, ""):  # run as a script: make `suites` and `engine` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if __name__ == "__main__":  # before torch is imported (suites.common imports it)
    USER_OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")
    if not os.environ.get("TAPER_BENCH_LLM_CHILD"):  # --isolate children keep the library defaults
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import engine  # noqa: E402
from engine import models  # noqa: E402
from suites.common import DEVICES, DTYPES, IMPLS, get_impl, prepared, sizes  # noqa: E402

PROMPT_LEN = 128
MODELS = sizes(["llama:tiny", "llama:tinyllama-1.1b"], ["llama:tiny"])


# ---- adapters: one LLM interface over each implementation ---------------------------------------------
class LLM:
    """build(); prefill() -> next token; decode_step(token) -> next token; reset_decode();
    memory_stats(). Weights are random; greedy argmax is read on the host after each step."""

    def __init__(self, im, model: str, prompt_len: int = PROMPT_LEN, max_new: int = 64):
        self.im, self.name = im, model
        self.model_type, self.preset = models.find_preset(model)
        cls = models.model_class(self.model_type)
        self.config = cls.Config.from_dict(dict(cls.PRESETS[self.preset]))
        self.prompt_len, self.max_new = prompt_len, max_new
        rng = np.random.default_rng(0)
        self.prompt = rng.integers(0, self.config.vocab_size, (1, prompt_len))
        self.weight_bytes = 0

    def memory_stats(self) -> dict:
        return self.im.memory_stats()


class EngineLLM(LLM):
    def build(self):
        self.model = models.from_preset(self.model_type, self.preset, dtype=self.im.edtype, device=self.im.device)
        self.weight_bytes = sum({id(p): p.nbytes for p in self.model.parameters()}.values())
        self.cache = self.model.new_cache(1, self.prompt_len + self.max_new)
        self.ids = engine.tensor(self.prompt, device=self.im.device)
        return self

    def prefill(self) -> int:
        self.cache.reset()
        h = self.model.model(self.ids, self.cache)  # (1, L, hidden)
        logits = self.model.lm_head(h[:, -1:])  # (1, 1, V): last position only
        return int(logits.float().numpy().reshape(-1).argmax())

    def reset_decode(self):
        self.cache.seen = self.prompt_len

    def decode_step(self, token: int) -> int:
        logits = self.model(engine.tensor([[token]], device=self.im.device), self.cache)
        return int(logits.float().numpy().reshape(-1).argmax())


class TorchLLM(LLM):
    def build(self):
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
        self.torch = torch
        fields = {k: v for k, v in asdict(self.config).items() if v is not None and k != "model_type"}
        hf_cfg = CONFIG_MAPPING[self.model_type](**fields)
        hf_cfg._attn_implementation = "eager"
        torch.manual_seed(0)
        with torch.device(self.im.tdevice):  # initialise on the device: a 7B random init on the host takes minutes
            self.model = AutoModelForCausalLM.from_config(hf_cfg, dtype=self.im.tdtype).eval()
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.ids = torch.as_tensor(self.prompt, device=self.im.tdevice)
        self.cache = None
        return self

    def prefill(self) -> int:
        from transformers import DynamicCache
        self.cache = DynamicCache(config=self.model.config)
        with self.torch.inference_mode():
            out = self.model(self.ids, cache=self.cache, use_cache=True, logits_to_keep=1)
        return int(out.logits[0, -1].argmax())

    def reset_decode(self):
        extra = self.cache.get_seq_length() - self.prompt_len
        if extra:
            self.cache.crop(-extra)  # transformers 5: a negative count of tokens to drop

    def decode_step(self, token: int) -> int:
        t = self.torch.tensor([[token]], device=self.im.tdevice)
        with self.torch.inference_mode():
            out = self.model(t, cache=self.cache, use_cache=True)
        return int(out.logits[0, -1].argmax())


LLMS = {"engine": EngineLLM, "torch": TorchLLM}


def load_llm(impl: str, device: str, dtype: str, model: str) -> LLM:
    """The built model for a parameter set (memoised: asv re-runs setup before every timed call)."""
    im = get_impl(impl, device, dtype)
    if device == "cpu" and dtype != "float32" and not model.endswith(":tiny"):
        raise NotImplementedError(f"{dtype} on the cpu is only benchmarked for tiny models (16-bit matmuls "
                                  "upcast per call on both sides)")
    return prepared(("llm", impl, device, dtype, model), lambda: LLMS[impl](im, model).build())


# ---- asv ------------------------------------------------------------------------------------------------
class Decode:
    params = (IMPLS, DEVICES, DTYPES, MODELS)
    param_names = ["impl", "device", "dtype", "model"]
    number = 1
    repeat = (3, 10, 60.0)
    warmup_time = 0.0
    timeout = 900

    def setup(self, impl, device, dtype, model):
        self.llm = load_llm(impl, device, dtype, model)
        self.token = self.llm.prefill()

    def time_decode_step(self, impl, device, dtype, model):
        self.llm.reset_decode()
        self.llm.decode_step(self.token)

    def track_ms_per_token(self, impl, device, dtype, model):
        times = []
        for _ in range(8):
            self.llm.reset_decode()
            t0 = time.perf_counter()
            self.llm.decode_step(self.token)
            times.append(time.perf_counter() - t0)
        return float(np.median(times) * 1e3)

    track_ms_per_token.unit = "ms_per_token"


class Prefill:
    params = (IMPLS, DEVICES, DTYPES, MODELS)
    param_names = ["impl", "device", "dtype", "model"]
    number = 1
    repeat = (2, 5, 60.0)
    warmup_time = 0.0
    timeout = 900

    def setup(self, impl, device, dtype, model):
        self.llm = load_llm(impl, device, dtype, model)
        self.llm.prefill()  # warm-up

    def time_prefill_128(self, impl, device, dtype, model):
        self.llm.prefill()


class Memory:
    params = (IMPLS, DEVICES, DTYPES, MODELS)
    param_names = ["impl", "device", "dtype", "model"]
    timeout = 900

    def setup(self, impl, device, dtype, model):
        self.llm = load_llm(impl, device, dtype, model)
        if self.llm.memory_stats().get("peak_bytes") is None and self.llm.memory_stats().get("allocated_bytes") is None:
            raise NotImplementedError(f"{impl} keeps no allocator statistics on {device}")

    def track_peak_bytes(self, impl, device, dtype, model):
        """Peak allocator bytes over a 128-token prefill and 16 decode steps, weights included."""
        im = self.llm.im
        im.reset_peak()
        before = im.memory_stats()["allocated_bytes"] or 0
        tok = self.llm.prefill()
        for _ in range(16):
            tok = self.llm.decode_step(tok)
        peak = im.memory_stats()["peak_bytes"]
        # zero-copy (mmapped or host-made) weights are not pool allocations: count them explicitly
        return float(peak - before + self.llm.weight_bytes)

    track_peak_bytes.unit = "bytes"


# ---- script ------------------------------------------------------------------------------------------------
def _machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"machine": platform.node(), "cpu": cpu, "cores": os.cpu_count()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tinyllama-1.1b", help="preset name (unique) or model_type:preset")
    p.add_argument("--impl", default="engine,torch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--prompt-len", type=int, default=PROMPT_LEN)
    p.add_argument("--steps", type=int, default=16, help="decode steps per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (one prefill + steps each)")
    p.add_argument("--isolate", action="store_true",
                   help="time each implementation alone in a child process (library defaults)")
    a = p.parse_args(argv)
    mt, preset = models.find_preset(a.model)
    name = f"{mt}:{preset}"
    impls = [s for s in a.impl.split(",") if s]
    import torch
    base = {"model": name, "device": a.device, "dtype": a.dtype, **_machine(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "torch_threads": torch.get_num_threads(),
            "mode": "isolated" if a.isolate else "interleaved"}

    def emit(**kw):
        print(json.dumps({**base, **kw}), flush=True)

    if a.isolate:
        return _isolated(a, argv, impls, emit)
    llms = {}

    for impl in impls:
        try:
            t0 = time.perf_counter()
            llms[impl] = LLMS[impl](get_impl(impl, a.device, a.dtype), name, a.prompt_len, a.steps + 1).build()
            emit(impl=impl, metric="build_s", value=round(time.perf_counter() - t0, 2),
                 weight_bytes=llms[impl].weight_bytes)
        except NotImplementedError as e:
            emit(impl=impl, metric="skipped", reason=str(e))
    prefill = {k: [] for k in llms}
    decode = {k: [] for k in llms}
    for k, llm in llms.items():  # warm-up, reported apart
        t0 = time.perf_counter()
        tok = llm.prefill()
        llm.decode_step(tok)
        emit(impl=k, metric="warmup_s", value=round(time.perf_counter() - t0, 3))
    for _ in range(a.rounds):
        for k, llm in llms.items():
            t0 = time.perf_counter()
            tok = llm.prefill()
            prefill[k].append(time.perf_counter() - t0)
            for _ in range(a.steps):
                t0 = time.perf_counter()
                tok = llm.decode_step(tok)
                decode[k].append(time.perf_counter() - t0)
    res = {}
    for k, llm in llms.items():
        ms_tok = float(np.median(decode[k]) * 1e3)
        tps = 1e3 / ms_tok
        pre = float(np.median(prefill[k]) * 1e3)
        res[k] = (tps, pre, float(np.min(prefill[k]) * 1e3), 1e3 / float(np.min(decode[k]) * 1e3))
        emit(impl=k, metric="decode_tokens_per_s", value=round(tps, 3), ms_per_token=round(ms_tok, 2),
             best_tokens_per_s=round(res[k][3], 3),
             achieved_gb_per_s=round(llm.weight_bytes * tps / 1e9, 2), batch=1, steps=len(decode[k]),
             context=f"{a.prompt_len}..{a.prompt_len + a.steps}")
        emit(impl=k, metric="prefill_ms", value=round(pre, 1), min_ms=round(res[k][2], 1), tokens=a.prompt_len,
             samples=len(prefill[k]))
        stats = llm.memory_stats()
        if stats.get("peak_bytes") is not None:
            emit(impl=k, metric="peak_bytes", value=int(stats["peak_bytes"]) + llm.weight_bytes,
                 source=stats.get("source"), note="allocator peak over the run plus weight bytes")
    _ratios(res, emit)
    return 0


def _ratios(res: dict, emit) -> None:
    """Medians are the headline; the ratio of the best samples is printed beside (a shared box adds
    noise that only ever slows a sample down)."""
    if "engine" in res and "torch" in res:
        e, t = res["engine"], res["torch"]
        emit(impl="engine/torch", metric="decode_tokens_per_s_ratio", value=round(e[0] / t[0], 3),
             best_ratio=round(e[3] / t[3], 3) if len(e) > 3 else None)
        emit(impl="engine/torch", metric="prefill_ms_ratio", value=round(e[1] / t[1], 3),
             best_ratio=round(e[2] / t[2], 3) if len(e) > 2 else None)


def _isolated(a, argv, impls, emit) -> int:
    """Each implementation in its own process, one after the other; ratios from their lines."""
    import subprocess
    env = dict(os.environ)
    if USER_OMP_WAIT_POLICY is None:
        env.pop("OMP_WAIT_POLICY", None)
    env["TAPER_BENCH_LLM_CHILD"] = "1"
    args = [x for x in (argv if argv is not None else sys.argv[1:]) if x != "--isolate"]
    res = {}
    for impl in impls:
        i = args.index("--impl") if "--impl" in args else None
        child = (args[:i] + args[i + 2:] if i is not None else args) + ["--impl", impl]
        out = subprocess.run([sys.executable, os.path.abspath(__file__), *child], env=env, capture_output=True,
                             text=True)
        vals, extra = {}, {}
        for line in out.stdout.splitlines():
            rec = json.loads(line)
            rec["mode"] = "isolated"
            print(json.dumps(rec), flush=True)
            vals[rec["metric"]] = rec.get("value")
            extra.update({(rec["metric"], k): v for k, v in rec.items()})
        if out.returncode:
            emit(impl=impl, metric="failed", reason=out.stderr[-2000:])
        elif "decode_tokens_per_s" in vals:
            res[impl] = (vals["decode_tokens_per_s"], vals["prefill_ms"], extra[("prefill_ms", "min_ms")],
                         extra[("decode_tokens_per_s", "best_tokens_per_s")])
    _ratios(res, lambda **kw: emit(**kw, omp_wait_policy="each child: library default"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
