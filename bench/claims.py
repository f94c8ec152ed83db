"""Re-measure the article's headline claims on this machine, engine against PyTorch (`taper claims`).

Every measurement runs in a child process of its own, one implementation at a time, so that peak
memory is per implementation and neither library's threads (torch's OpenMP workers busy-wait after
each parallel region) slow the other down. The verdict rule and the claims themselves are in
reports/claims.py.

Workloads (stated in the output):
- load, memory: a Llama-style decoder checkpoint with random weights written once to a temporary
  directory in both formats; torch: torch.load(model.pt, weights_only=True), engine: engine.io
  safetensors (mmap). Memory = peak RSS of a process that loads it and runs a prefill and a few
  greedy decode steps through the same functional decoder (suites.common.Decoder) on each side
  (on cuda: peak device bytes, engine pool vs torch.cuda.max_memory_allocated).
- cpu_inference, llama7b: decode tokens/s at batch 1, greedy; engine.models vs transformers eager
  (the adapters of suites/bench_llm.py) when transformers is installed, else the functional decoder
  on both sides.
- gpu_util: NVML utilisation sampled during the llama7b decode.
- alloc: allocations of small tensors (256 B to 16 KiB, 16 alive at a time) per second.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

from bench.discovery import ROOT
from bench.measure import peak_rss

CHILD_CODE = "import sys; from bench.claims import child_main; sys.exit(child_main(sys.argv[1]))"
GIB = 1 << 30


# ---- children --------------------------------------------------------------------------------------------
def _rss_now() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _child_load(spec):
    from suites.common import drop_page_cache, get_impl, warm_page_cache

    im = get_impl(spec["impl"], spec["device"])
    path = spec["path"]
    warm_page_cache([path])
    times = []
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        out = im.load_checkpoint(path)
        times.append(time.perf_counter() - t0)
        del out
        gc.collect()
    res = {"warm_s": sorted(times)[len(times) // 2], "warm_samples": times}
    reason = drop_page_cache([path])
    if reason is None:
        t0 = time.perf_counter()
        out = im.load_checkpoint(path)
        res["cold_s"] = time.perf_counter() - t0
        del out
    else:
        res["cold_reason"] = reason
    return res


def _child_memory(spec):
    import numpy as np

    from suites.common import DECODERS, Decoder, get_impl

    im = get_impl(spec["impl"], spec["device"], spec["dtype"])
    base = _rss_now()
    im.reset_peak()
    weights = im.load_checkpoint(spec["path"])
    dec = Decoder(im, DECODERS[spec["model"]], weights)
    prompt = np.random.default_rng(0).integers(0, dec.shape.vocab_size, spec["prompt_len"]).tolist()
    dec.generate(prompt, spec["new_tokens"])
    im.synchronize()
    return {"peak_rss_bytes": peak_rss(), "baseline_rss_bytes": base,
            "device_peak_bytes": im.memory_stats().get("peak_bytes")}


def _decode_functional(im, spec):
    import numpy as np

    from suites.common import DECODERS, Decoder

    t0 = time.perf_counter()
    dec = Decoder.random(im, DECODERS[spec["model"]])
    im.synchronize()
    build = time.perf_counter() - t0
    P = spec["prompt_len"]
    prompt = np.random.default_rng(0).integers(0, dec.shape.vocab_size, (1, P))
    cache = []
    t0 = time.perf_counter()
    tok = dec.next_token(dec.forward(im.ids(prompt), cache))
    prefill = time.perf_counter() - t0

    def crop():
        for i, (k, v) in enumerate(cache):
            cache[i] = [k[:, :, :P], v[:, :, :P]]

    def step(t):
        return dec.next_token(dec.forward(im.ids([[t]]), cache))
    return build, prefill, tok, step, crop


def _decode_models(im, spec):
    """The implementation's own decode loop (impls: the engine's captured Decoder on a GPU,
    transformers' cache loop for torch) on a preset with random weights."""
    import numpy as np

    t0 = time.perf_counter()
    lm = im.load(spec["model"])
    im.synchronize()
    build = time.perf_counter() - t0
    P, n = spec["prompt_len"], spec["new_tokens"]
    prompt = np.random.default_rng(0).integers(0, lm.config["vocab_size"], (1, P))
    # compile / capture outside the timed steps, at the timed shape (prompt + n + 1: the decoder, its
    # static cache and captured step serve every run of one shape) and through n steps, as timed
    lm.generate(prompt, n + 1)
    t0 = time.perf_counter()
    tok = int(lm.start(prompt, n + 1)[0])
    prefill = time.perf_counter() - t0

    def step(t):
        lm.step()
        lm.impl.synchronize()  # each step is synchronised; the token stays on the device
        return t

    def crop():
        lm.start(prompt, n + 1)
    return build, prefill, tok, step, crop


def _child_decode(spec):
    from suites.common import get_impl

    im = get_impl(spec["impl"], spec["device"], spec["dtype"])
    kind = _decode_models if spec["workload"] == "models" else _decode_functional
    build, prefill, tok, step, crop = kind(im, spec)
    step(tok)  # warm-up step, not timed
    crop()
    sampler = None
    if spec.get("util"):
        from bench.probes import UtilizationSampler
        sampler = UtilizationSampler()
    steps = []
    t_start = time.perf_counter()
    with sampler if sampler is not None else contextlib.nullcontext():
        while len(steps) < spec["min_tokens"] or time.perf_counter() - t_start < spec["min_seconds"]:
            t = tok
            for _ in range(spec["new_tokens"]):
                t0 = time.perf_counter()
                t = step(t)  # each step is synchronised
                steps.append(time.perf_counter() - t0)
            crop()
    out = {"tokens_per_s": len(steps) / sum(steps), "ms_per_token_median": sorted(steps)[len(steps) // 2] * 1e3,
           "steps": len(steps), "build_s": build, "prefill_s": prefill, "peak_rss_bytes": peak_rss(),
           "device_peak_bytes": im.memory_stats().get("peak_bytes")}
    if sampler is not None:
        out.update(util_mean=sampler.mean, util_samples=len(sampler.samples), util_error=sampler.error)
    return out


def _child_alloc(spec):
    from suites.common import get_impl

    im = get_impl(spec["impl"], spec["device"])
    alloc = im.alloc
    sizes = [256, 1024, 4096, 16384] * 4  # 16 alive at a time, then all freed

    def burst():
        bufs = [alloc(n) for n in sizes]
        del bufs
    for _ in range(200):
        burst()
    n_bursts = spec["bursts"]
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n_bursts):
            burst()
        best = max(best, n_bursts * len(sizes) / (time.perf_counter() - t0))
    return {"allocs_per_s": best}


CHILDREN = {"load": _child_load, "memory": _child_memory, "decode": _child_decode, "alloc": _child_alloc}


def child_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    if spec.get("impl") in ("engine", "numpy", "cupy"):
        # the engine never imports torch; nor may its process here (suites.common imports it guarded),
        # or the engine's memory would include torch's
        sys.modules["torch"] = None
    try:
        out = CHILDREN[spec["kind"]](spec)
    except NotImplementedError as e:
        out = {"skip": str(e) or "not implemented"}
    print(json.dumps(out), flush=True)
    return 0


def run_child(spec: dict, timeout: float = 1800) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD_CODE, json.dumps(spec)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": tail[-1] if tail else f"exit code {proc.returncode}"}
    return json.loads(lines[-1])


# ---- the claims ------------------------------------------------------------------------------------------------
def _say(msg):
    print(f"taper claims: {msg}", file=sys.stderr, flush=True)


def _pair(specs: dict) -> tuple[dict, str | None]:
    """Run engine and torch children; (results by impl, reason when not measurable)."""
    out = {}
    for impl, spec in specs.items():
        _say(f"{spec['kind']} ({impl}, {spec.get('device')})")
        out[impl] = run_child(spec)
    for impl, r in out.items():
        if "skip" in r:
            return out, f"{impl}: {r['skip']}"
        if "error" in r:
            return out, f"{impl} measurement failed: {r['error']}"
    return out, None


def _cuda_status() -> tuple[bool, str]:
    """(usable, why not) for the engine and torch on cuda."""
    from suites.common import get_impl
    why = []
    for impl in ("engine", "torch"):
        try:
            get_impl(impl, "cuda")
        except NotImplementedError as e:
            why.append(str(e))
    return (not why), "; ".join(w.split(". ")[0] for w in why)


def _workload(choice: str) -> str:
    if choice != "auto":
        return choice
    try:
        import transformers  # noqa: F401

        import engine.models  # noqa: F401
        import suites.bench_llm  # noqa: F401
        return "models"
    except Exception:
        return "functional"


def measure(args) -> list:
    from reports.claims import Measurement
    from bench.probes import gpu_info, ram_bytes
    from suites.common import DECODERS, decoder_arrays, write_checkpoint

    quick = args.quick
    wanted = set(args.only or ["load", "memory", "cpu_inference", "llama7b", "gpu_util", "alloc"])
    cuda_ok, cuda_why = _cuda_status()
    device = ("cuda" if cuda_ok else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not cuda_ok:
        raise SystemExit(f"taper claims: --device cuda, but {cuda_why}")
    workload = _workload(args.workload)
    ms = []

    # ---- load and memory: one checkpoint, both formats -----------------------------------------------------
    if wanted & {"load", "memory"}:
        shape = DECODERS["tiny" if quick else "tinyllama-1.1b"]
        dtype = "float16" if device == "cuda" else "float32"
        with tempfile.TemporaryDirectory(prefix="taper-claims-", dir=args.workdir) as tmp:
            _say(f"writing a {shape.name} checkpoint ({shape.num_parameters() / 1e6:.3g}M params, {dtype}) to {tmp}")
            arrays = decoder_arrays(shape, dtype)
            nbytes = sum(a.nbytes for a in arrays.values())
            paths = write_checkpoint(tmp, arrays)
            del arrays
            gc.collect()
            what = (f"{shape.name}-shaped Llama decoder, random weights ({shape.num_parameters() / 1e6:.4g}M params, "
                    f"{dtype}, {nbytes / (1 << 20):.4g} MiB)")
            if "load" in wanted:
                if "pt" not in paths:
                    ms.append(Measurement("load", reason="torch is not installed", device=device))
                else:
                    specs = {impl: {"kind": "load", "impl": impl, "device": device, "repeats": 2 if quick else 3,
                                    "path": paths["safetensors" if impl == "engine" else "pt"]}
                             for impl in ("engine", "torch")}
                    r, reason = _pair(specs)
                    extra = run_child({**specs["torch"], "path": paths["safetensors"]})
                    ms.append(Measurement(
                        "load", r.get("engine", {}).get("warm_s"), r.get("torch", {}).get("warm_s"), device,
                        f"{what}; torch.load(.pt, weights_only=True) vs engine.io safetensors (mmap); warm page cache; "
                        f"ready = every 4 KiB page read (cpu) or device synchronised (cuda)", reason,
                        {"engine": r.get("engine"), "torch": r.get("torch"),
                         "torch_safetensors": extra, "checkpoint_bytes": nbytes}))
            if "memory" in wanted:
                specs = {impl: {"kind": "memory", "impl": impl, "device": device, "dtype": dtype, "model": shape.name,
                                "path": paths["safetensors" if impl == "engine" else "pt"],
                                "prompt_len": 16 if quick else 32, "new_tokens": 4 if quick else 8}
                         for impl in ("engine", "torch")}
                if "pt" not in paths:
                    ms.append(Measurement("memory", reason="torch is not installed", device=device))
                else:
                    r, reason = _pair(specs)
                    key = "device_peak_bytes" if device == "cuda" else "peak_rss_bytes"
                    label = ("peak device bytes (engine pool vs torch.cuda.max_memory_allocated)" if device == "cuda"
                             else "peak RSS of the whole process (imports included; baseline after imports in details)")
                    ms.append(Measurement(
                        "memory", r.get("engine", {}).get(key), r.get("torch", {}).get(key), device,
                        f"{what}: load as above, then a {specs['engine']['prompt_len']}-token prefill and "
                        f"{specs['engine']['new_tokens']} greedy steps through the same functional decoder; {label}",
                        reason, {"engine": r.get("engine"), "torch": r.get("torch")}))

    # ---- decode on the cpu ---------------------------------------------------------------------------------------
    def decode_specs(dev, dtype, model, util=False, min_tokens=16, min_seconds=0.0, new_tokens=8, wl=workload):
        return {impl: {"kind": "decode", "impl": impl, "device": dev, "dtype": dtype, "model": model,
                       "workload": wl, "prompt_len": 16 if quick else 32, "new_tokens": new_tokens,
                       "min_tokens": min_tokens, "min_seconds": min_seconds, "util": util}
                for impl in ("engine", "torch")}

    if "cpu_inference" in wanted:
        model = ("llama:tiny" if quick else "llama:tinyllama-1.1b") if workload == "models" else \
            ("tiny" if quick else "tinyllama-1.1b")
        specs = decode_specs("cpu", "float32", model, min_tokens=4 if quick else 16)
        r, reason = _pair(specs)
        desc = ("engine.models llama vs transformers LlamaForCausalLM (eager)" if workload == "models"
                else "the functional Llama-style decoder (suites.common.Decoder) on both sides")
        ms.append(Measurement("cpu_inference", r.get("engine", {}).get("tokens_per_s"),
                              r.get("torch", {}).get("tokens_per_s"), "cpu",
                              f"{model}, float32, batch 1, greedy decode after a {specs['engine']['prompt_len']}-token "
                              f"prompt; {desc}; {os.cpu_count()} cpu cores", reason,
                              {"engine": r.get("engine"), "torch": r.get("torch")}))

    # ---- LLaMA-7B and GPU utilisation --------------------------------------------------------------------------------
    if wanted & {"llama7b", "gpu_util"}:
        ram = ram_bytes() or 0
        gpu = gpu_info()
        reason = None
        if not cuda_ok:
            reason = (f"needs a CUDA GPU with 16 GB for fp16 weights (13.5 GB), or 28 GB of RAM for fp32 weights on the "
                      f"cpu; this machine has {ram / GIB:.0f} GiB RAM and no usable CUDA device ({cuda_why})")
        elif gpu and gpu.get("memory_total_bytes") and gpu["memory_total_bytes"] < 16 * GIB:
            reason = f"the GPU has {gpu['memory_total_bytes'] / GIB:.0f} GiB; LLaMA-7B in fp16 needs about 16 GiB"
        if reason:
            for key in ("llama7b", "gpu_util"):
                if key in wanted:
                    why = reason if key == "llama7b" else "needs an NVIDIA GPU and NVML; " + reason
                    ms.append(Measurement(key, reason=why, device="cuda"))
        else:
            wl = workload if not quick else "functional"
            model = ("llama-2-7b-4l" if quick else ("llama:llama-2-7b" if wl == "models" else "llama-2-7b"))
            specs = decode_specs("cuda", "float16", model, util=True, min_tokens=8 if quick else 32,
                                 min_seconds=2.0 if quick else 5.0, new_tokens=8 if quick else 32, wl=wl)
            # the engine's GPU decode path: engine.models through the captured Decoder (impls)
            specs["engine"].update(workload="models", model="llama:tiny" if quick else "llama:llama-2-7b")
            r, why = _pair(specs)
            desc = ("engine captured decode vs " + ("transformers LlamaForCausalLM (eager, DynamicCache)"
                    if wl == "models" else "the functional Llama-style decoder in torch"))
            card = (gpu or {}).get("card") or "GPU"
            what = f"{model}, float16, batch 1, greedy decode, random weights, {desc}; {card}"
            if "llama7b" in wanted:
                ms.append(Measurement("llama7b", r.get("engine", {}).get("tokens_per_s"),
                                      r.get("torch", {}).get("tokens_per_s"), "cuda",
                                      what + ("; quick: 4 of the 32 layers" if quick else ""), why,
                                      {"engine": r.get("engine"), "torch": r.get("torch")}))
            if "gpu_util" in wanted:
                e, t = r.get("engine", {}), r.get("torch", {})
                uwhy = why or e.get("util_error") or t.get("util_error")
                ms.append(Measurement("gpu_util", e.get("util_mean"), t.get("util_mean"), "cuda",
                                      "NVML utilisation sampled every 50 ms during the decode above", uwhy,
                                      {"engine_samples": e.get("util_samples"), "torch_samples": t.get("util_samples")}))

    # ---- small-tensor allocation ------------------------------------------------------------------------------------
    if "alloc" in wanted:
        bursts = 200 if quick else 5000
        specs = {impl: {"kind": "alloc", "impl": impl, "device": device, "bursts": bursts} for impl in ("engine", "torch")}
        r, reason = _pair(specs)
        raw = "cupy" if device == "cuda" else "numpy"
        raw_r = run_child({"kind": "alloc", "impl": raw, "device": device, "bursts": bursts})
        ms.append(Measurement("alloc", r.get("engine", {}).get("allocs_per_s"), r.get("torch", {}).get("allocs_per_s"),
                              device, "allocate 16 tensors of 256 B to 16 KiB, free them, repeat (warmed up); engine "
                              "StoragePool vs torch's allocator" + (" (caching)" if device == "cuda" else " (no cache on the cpu)")
                              + f"; raw {raw} in details", reason,
                              {"engine": r.get("engine"), "torch": r.get("torch"), raw: raw_r}))
    return ms


def main(args) -> int:
    """`taper claims` with parsed arguments; returns the exit code."""
    from bench.probes import describe
    from engine.io.atomic import atomic_write_text
    from reports.claims import evaluate, notes, table, to_json

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    t0 = time.time()
    env = describe()
    ms = measure(args)
    rows = evaluate(ms)
    if args.only:
        rows = [r for r in rows if r["key"] in set(args.only)]
    text = table(rows)
    if args.json != "-":
        host = f"{env.get('host')}: {env.get('cpu')}, {env.get('num_cpu')} cores, {(env.get('ram_bytes') or 0) / GIB:.0f} GiB"
        gpu = env.get("gpu")
        print(f"claims re-measured on {host}" + (f"; {gpu['card']} (driver {gpu['driver']})" if gpu else "; no GPU"))
        print(text)
        print()
        for n in notes(rows):
            print("- " + n)
    blob = to_json(rows, env, quick=bool(args.quick), seconds=round(time.time() - t0, 1))
    if args.json == "-":
        print(blob)
    elif args.json:
        atomic_write_text(args.json, blob + "\n")
    if args.markdown:
        atomic_write_text(args.markdown, table(rows, markdown=True) + "\n\n" + "\n".join("- " + n for n in notes(rows)) + "\n")
    return 0
