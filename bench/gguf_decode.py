"""Quantized decode on the GPU: a Llama-2-7B-shaped model with random weights, quantised by the converter's
own quantisers (engine.quant.quantize_module -> engine.io.gguf.quantize_matrix, on the GPU), decoded
through the captured CUDA graph beside the same model in fp16, batch 1.

    python -m bench.gguf_decode --out $OUT/gguf_decode.json                 # the H200 run (a few minutes)
    python -m bench.gguf_decode --preset tiny --device cpu --steps 4        # a smoke run anywhere

For each format (fp16, q8_0, q4_k; --formats to choose, q4_k_m and q6_k too): tokens/s and ms/token
(median of --repeats timed runs of --steps steps after a --prompt-token prefill), the weight bytes one
token reads (packed blocks for the quantized formats), achieved GB/s = bytes x tokens/s, the roofline
(device copy rate, read + write, over those bytes) and the speed-up over fp16 against the targets
(Q8_0 1.7x, Q4_K 2.8x). Also the logits' agreement with fp16 on the prompt (cosine, top-1), a check
that the quantized model is the same model, and a kernel profile: qgemv per format at the model's
GEMV shapes (gate/up: the decode's fused GLU launch over both weights; launches captured in a graph,
weights rotating over more copies than L2 holds, the device idle before each) beside the fp16 gemv kernel.
Warm-up (record + capture) and quantisation time are reported apart.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np

TARGETS = {"q8_0": 1.7, "q4_k": 2.8}


def build(preset: str, device: str, seed: int):
    import engine
    from engine import models
    return models.from_preset("llama", preset, dtype=engine.float16 if device == "cuda" else engine.float32,
                              device=device, seed=seed)


def measure_decode(module, device: str, prompt: int, steps: int, repeats: int) -> dict:
    import impls
    from suites.timing import step_seconds
    impl = impls.get("engine", device, "float16" if device == "cuda" else "float32")
    lm = impl.load(None, module=module)
    vocab = module.config.vocab_size
    ids = np.random.default_rng(0).integers(0, vocab, (1, prompt))
    t0 = time.perf_counter()
    step_seconds(lm, ids, steps)  # warm-up: eager steps, record, plan, capture
    warm = time.perf_counter() - t0
    s = float(np.median([step_seconds(lm, ids, steps) for _ in range(repeats)]))
    logits = lm.logits(ids)[0]  # (prompt, vocab), float32 on the host
    lm.decoder = None
    return {"tokens_per_s": 1.0 / s, "ms_per_token": s * 1e3, "weight_bytes": int(lm.weight_bytes),
            "achieved_gb_per_s": lm.weight_bytes / s / 1e9, "warmup_s": warm, "_logits": logits}


ROUTES = ("float", "int8", "span", "int8span")


def set_route(route: str) -> None:
    """The quantized kernels' route (cupy_quant): float and int8 (the dot routes; qgemv_direct where it applies,
    else qgemv_span), span and int8span (qgemv_span alone, float or int8). qgemv_direct's settings follow as
    +key=value (cupy_quant.DIRECT's u, b, p; e.g. int8+u=2+p=1); those not given take their defaults."""
    from engine.backends import cupy_quant as Q
    route, *sets = route.split("+")
    if route not in ROUTES:
        raise SystemExit(f"unknown route {route!r}: expected one of {', '.join(ROUTES)} (+key=value settings)")
    Q.QUANT_DOT["route"] = "int8" if route.startswith("int8") else "float"
    Q.DIRECT["enabled"] = route in ("float", "int8")
    Q.DIRECT.update(Q.DIRECT_SETTINGS)
    for kv in sets:
        k, _, v = kv.partition("=")
        if k not in Q.DIRECT_SETTINGS or not v.isdigit():
            raise SystemExit(f"route setting {kv!r}: expected one of {', '.join(Q.DIRECT_SETTINGS)} = an integer")
        Q.DIRECT[k] = int(v)


def kernel_profile(preset: str, formats, iters: int = 40, dots=("float",)) -> list:
    """qgemv per format (and the fp16 gemv) at one layer's GEMV shapes and the LM head: microseconds per
    launch inside a captured graph, GB/s of the bytes read."""
    import cupy

    import engine  # noqa: F401  (the engine's pool owns cupy's memory)
    from bench.kernel_profile import graph_timed, shapes
    from engine.backends import cupy_kernels as K
    from engine.backends import cupy_quant as Q
    from engine.io.gguf import quantize_matrix
    l2 = cupy.cuda.runtime.getDeviceProperties(0)["l2CacheSize"]
    rng = cupy.random.default_rng(0)
    rows = []

    timed = graph_timed

    for name, (N, Kd, glu) in shapes(f"llama:{preset}").items():
        if glu:
            name = "gate_proj / up_proj"
        x = rng.standard_normal((1, Kd), dtype=cupy.float32).astype(cupy.float16)
        out = cupy.empty((1, N), cupy.float16)
        for fmt in formats:
            w = (rng.standard_normal((N, Kd), dtype=cupy.float32) * 0.02)
            # GLU: the decode's launch, gate and up (two copies of the weight, rotating) into one output
            if fmt == "fp16":
                one = w.astype(cupy.float16)
                run = lambda W, W2: K.gemv(x, W, out, W2=W2, act="silu" if W2 is not None else None)  # noqa: E731
            else:
                if not K.qdata_ok(one := quantize_matrix(w, fmt), fmt):
                    continue
                run = lambda W, W2, f=fmt: Q.qgemv_fused(  # noqa: E731
                    x, W, f, out, W2=W2, act="silu" if W2 is not None else None)
            del w
            per = 2 if glu else 1  # weights a launch reads
            copies = per * max(2, int(np.ceil(3 * l2 / (per * one.nbytes))))
            Ws = [one] + [one.copy() for _ in range(copies - 1)]
            for dot in (("-",) if fmt == "fp16" else dots):  # the quantized kernels: each dot route (cupy_quant)
                if dot != "-":
                    set_route(dot)
                cupy.cuda.Device().synchronize()
                us = timed(lambda i: run(Ws[(per * i) % copies], Ws[(per * i + 1) % copies] if glu else None), iters)
                nbytes = per * one.nbytes
                rows.append({"shape": name, "N": N, "K": Kd, "format": fmt, "dot": dot, "bytes": int(nbytes),
                             "us": round(us, 2), "gb_per_s": round(nbytes / (us * 1e-6) / 1e9, 1)})
                print(f"  {name:20s} {N:6d} x {Kd:6d} {fmt:5s} {dot:5s} {us:8.2f} us {rows[-1]['gb_per_s']:7.1f} GB/s",
                      flush=True)
            del Ws, one
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="llama-2-7b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--formats", default="q8_0,q4_k", help="quantized formats beside fp16 (q8_0, q4_k, q6_k, q4_0, "
                                                          "q4_1, q4_k_m)")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-profile", action="store_true", help="skip the per-kernel profile")
    p.add_argument("--dots", default="int8", help="the quantized kernels' routes to measure (set_route): int8 (the "
                                                  "engine's default: x quantised, __dp4a), float "
                                                  "(qgemv_direct where it applies), span / int8span (qgemv_span "
                                                  "alone); a format's decode runs once per route, keyed "
                                                  "FORMAT@ROUTE when there are several")
    p.add_argument("--profile-dots", help="routes of the kernel profile (default: --dots)")
    p.add_argument("--profile-only", action="store_true", help="the per-kernel profile alone (no decode runs)")
    p.add_argument("--out")
    a = p.parse_args(argv)
    dots = [d for d in a.dots.split(",") if d]
    pdots = [d for d in (a.profile_dots or a.dots).split(",") if d]
    if not dots or not pdots or any(d.split("+")[0] not in ROUTES for d in dots + pdots):
        p.error(f"--dots {a.dots!r} / --profile-dots {a.profile_dots!r}: comma-separated lists of {', '.join(ROUTES)}")
    if a.device == "cuda":  # what this benchmark measures: the quantized kernels (off by default until verified)
        from engine.backends import cupy_kernels as K
        K.QUANT_KERNELS["enabled"] = True
    import engine
    from engine.quant import quantize_module
    formats = [f for f in a.formats.split(",") if f]
    res = {"preset": a.preset, "device": a.device, "batch": 1, "prompt": a.prompt, "steps": a.steps,
           "repeats": a.repeats, "machine": platform.node(), "quant_dots": dots, "formats": {}}
    if a.device == "cuda":
        import cupy
        from bench.probes import copy_gb_per_s
        res["card"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
        res["copy_gb_per_s"] = copy_gb_per_s("cuda")
        print(f"{res['card']}: device copy {res['copy_gb_per_s']:.0f} GB/s (read + write)", flush=True)
    base_logits = None
    runs = [] if a.profile_only else [("fp16", None)] + [(f, d) for f in formats for d in dots]
    for fmt, dot in runs:
        key = fmt if dot is None or len(dots) == 1 else f"{fmt}@{dot}"
        if dot is not None and a.device == "cuda":
            set_route(dot)
        t0 = time.perf_counter()
        m = build(a.preset, a.device, seed=0)  # the same weights every time
        built = time.perf_counter() - t0
        q_s, mix = 0.0, {}
        if fmt != "fp16":
            t0 = time.perf_counter()
            mix = quantize_module(m, fmt)
            engine.backend(a.device).synchronize()
            q_s = time.perf_counter() - t0
        r = measure_decode(m, a.device, a.prompt, a.steps, a.repeats)
        logits = r.pop("_logits")
        if base_logits is None:
            base_logits = logits
        else:
            cos = np.sum(logits * base_logits, -1) / (np.linalg.norm(logits, axis=-1) * np.linalg.norm(base_logits, axis=-1))
            r["logits_cosine_vs_fp16"] = {"min": float(cos.min()), "mean": float(cos.mean())}
            r["top1_agreement_vs_fp16"] = float(np.mean(logits.argmax(-1) == base_logits.argmax(-1)))
        if dot is not None:
            r["quant_dot"] = dot if a.device == "cuda" else "numpy"  # the route the quantized kernels took (set_route)
        r.update(build_s=built, quantize_s=q_s, formats_used={f: sum(v == f for v in mix.values()) for f in set(mix.values())})
        if "copy_gb_per_s" in res:
            r["roofline_tokens_per_s"] = res["copy_gb_per_s"] * 1e9 / r["weight_bytes"]
            r["fraction_of_roofline"] = r["tokens_per_s"] / r["roofline_tokens_per_s"]
        if fmt != "fp16":
            r["speedup_vs_fp16"] = r["tokens_per_s"] / res["formats"]["fp16"]["tokens_per_s"]
            if fmt in TARGETS:
                r["target_speedup"] = TARGETS[fmt]
                r["meets_target"] = r["speedup_vs_fp16"] >= TARGETS[fmt]
        res["formats"][key] = r
        print(f"{key:11s} {r['tokens_per_s']:8.1f} tok/s {r['ms_per_token']:7.3f} ms/token "
              f"{r['weight_bytes'] / 1e9:6.2f} GB {r['achieved_gb_per_s']:7.1f} GB/s"
              + (f" x{r['speedup_vs_fp16']:.2f} vs fp16" if "speedup_vs_fp16" in r else "")
              + (f" cos {r['logits_cosine_vs_fp16']['mean']:.4f} top1 {r['top1_agreement_vs_fp16']:.2f}"
                 if "logits_cosine_vs_fp16" in r else "")
              + f" (build {built:.1f} s, quantise {q_s:.1f} s, warm-up {r['warmup_s']:.1f} s)", flush=True)
        del m
        engine.backend(a.device).pool.empty_cache()
    if a.device == "cuda" and not a.no_profile:
        print("kernel profile (graph replays):", flush=True)
        res["kernel_profile"] = kernel_profile(a.preset, ["fp16"] + [f for f in formats if f != "q4_k_m"], dots=pdots)
        for r in res["kernel_profile"]:  # the bar: >= 0.8 of the device copy rate
            r["fraction_of_copy"] = round(r["gb_per_s"] / res["copy_gb_per_s"], 3)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
