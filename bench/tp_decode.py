"""Tensor-parallel decode (engine.distributed): TP=N against TP=1, and decode speed, one JSON file.

    python3 -m bench.tp_decode --out $OUT/tp_decode.json                 # nvidia-h200-x2 (defaults)
    python -m bench.tp_decode --device cpu --equal llama:tiny --speed llama:small --out /tmp/tp.json
    python3 -m bench.tp_decode --one-gpu --out $OUT/tp_decode.json       # nvidia-h200: correctness only

Random weights drawn on each rank's device at full size and sliced (engine.distributed.from_preset),
so every world size holds the same model; nothing is read from disk. Jobs, each one launch:

  equal   for each shape and dtype (fp16, fp32): TP=1 then TP=N. Greedy tokens (the normal captured
          decode: engine.generation.generate) compared token for token; teacher-forced logits over
          prompt + TP=1's fp16 tokens, compared (max abs error, cosine; TP=N's fp16 error against the
          fp32 TP=1 logits beside TP=1's own fp16 error, the engine's rule for reduced precision). With
          random weights near-flat logits can flip a greedy token on rounding noise: where the tokens
          differ, the TP=1 top-2 margin at the first difference is reported next to the logit error.
  speed   fp16 batch 1 decode at TP=N: steady-state tokens/s over captured steps (the all-reduces
          inside the CUDA graph), weight bytes per rank, achieved GB/s per GPU, the card's copy
          bandwidth measured in the same process (the roofline), and the all-reduce cost per step: a
          graph of 2 x num_hidden_layers all-reduces of one hidden vector, replayed (and eager).
  scale   the equal jobs' fp16 shape timed at TP=1 and TP=N (from the equal jobs themselves).

A job that fails is recorded with its error and the next one runs; --budget-s skips jobs that would
start after that many seconds. --one-gpu (a machine with one GPU): every rank on cuda:0 through the
shared-memory communicator, steps launched eagerly (no graphs, no speed job): the equal jobs only.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

PROMPT = [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203, 29889, 13, 1576, 3303, 310]


# ---- what runs in every rank --------------------------------------------------------------------------------
def _job_rank(comm, job: dict) -> dict:
    import engine
    from engine.distributed import from_preset
    from engine.generation import Decoder, generate
    dev = comm.device
    mt, preset = job["model"].split(":")
    t0 = time.perf_counter()
    model = from_preset(mt, preset, comm, dtype=getattr(engine, job["dtype"]), seed=job.get("seed", 0),
                        **job.get("overrides", {}))
    engine.synchronize(dev)
    comm.barrier()
    out = {"rank": comm.rank, "device": dev, "load_s": time.perf_counter() - t0,
           "weight_bytes": sum(p.nbytes for p in {id(p): p for p in model.parameters()}.values()),
           "card": _card(dev)}
    prompt = [t % model.config.vocab_size for t in job.get("prompt", PROMPT)]  # tiny vocabularies too
    if job.get("new_tokens"):
        res = generate(model, prompt, max_new_tokens=job["new_tokens"], stop_token_ids=[], capture=job.get("capture"))
        out["tokens"] = res.tokens[0]
    teacher = out.get("tokens") if job.get("teacher") == "self" else job.get("teacher")
    if teacher is not None:
        seq = engine.tensor(np.array([prompt + teacher], np.int64), device=dev)
        logits = model(seq)[0, len(prompt) - 1:-1]  # (new, vocab): the logits that chose each new token
        if comm.rank == 0:
            out["teacher_logits"] = logits.float().numpy()
    if job.get("time_steps"):
        steps = job["time_steps"]
        dec = Decoder(model, 1, max_len=len(prompt) + steps + 8)
        dec.prefill(engine.tensor(np.array([prompt], np.int64), device=dev))
        for _ in range(4):  # eager, record, plan + capture, first replay
            dec.step()
        engine.synchronize(dev)
        comm.barrier()
        t1 = time.perf_counter()
        for _ in range(steps):
            dec.step()
        engine.synchronize(dev)
        dt = time.perf_counter() - t1
        out.update(decode_tokens_per_s=steps / dt, ms_per_token=dt / steps * 1e3, capture_s=dec.capture_s,
                   peak_bytes=int(engine.memory_stats(dev)["peak_bytes"]))
        out["achieved_gb_per_s"] = out["weight_bytes"] * out["decode_tokens_per_s"] / 1e9
    if job.get("allreduce") and comm.world_size > 1:
        out.update(_allreduce_cost(comm, model))
    if job.get("copy_bandwidth"):
        out["copy_gb_per_s"] = _copy_bandwidth(dev)
    return out


def _smoke_rank(comm, graphs: bool = True) -> dict:
    """One all-reduce eager and one replayed from a captured graph: the sum of rank + 1 over the ranks."""
    import engine
    from engine.capture import Captured
    x = engine.zeros(8, 256, dtype=engine.float16, device=comm.device)
    step = Captured(lambda: comm.all_reduce(x), device=comm.device, graphs=graphs)
    sums = []
    for _ in range(5):
        x.fill_(comm.rank + 1)
        step()
        sums.append(float(x.float().mean().item()))
    return {"sums": sums, "graph": step.graph is not None, "card": _card(comm.device)}


def _allreduce_cost(comm, model) -> dict:
    """2 x layers all-reduces of one (1, 1, hidden) vector, as a decode step makes them: eager, and
    replayed as one captured graph."""
    import engine
    from engine.capture import Captured
    dev, cfg = comm.device, model.config
    n = 2 * cfg.num_hidden_layers
    x = engine.zeros(1, 1, cfg.hidden_size, dtype=model.dtype, device=dev)  # zeros stay zeros

    def step():
        for _ in range(n):
            comm.all_reduce(x)
    engine.synchronize(dev)
    comm.barrier()
    t = time.perf_counter()
    for _ in range(5):
        step()
    engine.synchronize(dev)
    eager = (time.perf_counter() - t) / 5
    cap = Captured(step, device=dev)
    for _ in range(4):
        cap()
    engine.synchronize(dev)
    comm.barrier()
    reps = 50
    t = time.perf_counter()
    for _ in range(reps):
        cap()
    engine.synchronize(dev)
    graph = (time.perf_counter() - t) / reps
    return {"allreduce_per_step": n, "allreduce_bytes": cfg.hidden_size * model.dtype.itemsize,
            "allreduce_ms_per_step_graph": graph * 1e3, "allreduce_us_each_graph": graph / n * 1e6,
            "allreduce_ms_per_step_eager": eager * 1e3, "allreduce_us_each_eager": eager / n * 1e6,
            "allreduce_in_graph": cap.graph is not None}


def _card(dev: str) -> str:
    if not dev.startswith("cuda"):
        return "cpu"
    import cupy
    p = cupy.cuda.runtime.getDeviceProperties(int(dev.split(":")[1]))
    return p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])


def _copy_bandwidth(dev: str, nbytes: int = 2 << 30) -> float | None:
    """Device-to-device copy GB/s (bytes read + written, as the roofline in DESIGN.md counts them)."""
    if not dev.startswith("cuda"):
        return None
    import cupy
    a = cupy.ones(nbytes // 2, cupy.float16)
    b = cupy.empty_like(a)
    b[...] = a
    e0, e1 = cupy.cuda.Event(), cupy.cuda.Event()
    e0.record()
    for _ in range(10):
        b[...] = a
    e1.record()
    e1.synchronize()
    s = cupy.cuda.get_elapsed_time(e0, e1) / 1e3 / 10
    del a, b
    return 2 * nbytes / s / 1e9


# ---- the jobs ------------------------------------------------------------------------------------------------
ISOLATE = {"on": False}  # set by the smoke test when NCCL works only with one GPU visible per rank
SHARED = {"on": False}  # --one-gpu: every rank on cuda:0, shared-memory communicator, no graphs


def smoke(tp: int, device: str, log) -> dict:
    """The collective alone, first with every GPU visible (rank r on cuda:r), else with each rank seeing
    only its own GPU; the jobs then run the way that worked."""
    from engine.distributed import TensorParallelError, launch
    out = {}
    for isolate in ((False, True) if device == "cuda" and not SHARED["on"] else (False,)):
        t = time.perf_counter()
        try:
            ranks = launch(_smoke_rank, tp, device, args=(not SHARED["on"],), timeout=180, grace=5.0,
                           isolate=isolate, shared_gpu=SHARED["on"])
        except TensorParallelError as e:  # a LaunchError (a rank failed), or too few GPUs
            tbs = getattr(e, "tracebacks", {})
            out[f"isolate={isolate}"] = {"error": str(e), "tracebacks": {str(k): v for k, v in tbs.items()}}
            log(f"smoke (isolate={isolate}) FAILED: {e}")
            continue
        ok = all(r["sums"] == [tp * (tp + 1) / 2] * 5 for r in ranks)
        out[f"isolate={isolate}"] = {"ranks": ranks, "correct": ok, "wall_s": time.perf_counter() - t}
        log(f"smoke (isolate={isolate}): all-reduce {'correct' if ok else 'WRONG'}, in graph {ranks[0]['graph']}, "
            f"cards {[r['card'] for r in ranks]}")
        if ok:
            ISOLATE["on"] = isolate
            out["isolate"] = isolate
            break
    return out


def _run(job: dict, device: str, log) -> dict:
    from engine.distributed import TensorParallelError, launch
    t = time.perf_counter()
    try:
        ranks = launch(_job_rank, job["tp"], device, args=(job,), timeout=job.get("timeout", 420), grace=5.0,
                       isolate=ISOLATE["on"], shared_gpu=SHARED["on"] and job["tp"] > 1)
    except TensorParallelError as e:  # a LaunchError (a rank failed), or too few GPUs
        log(f"  FAILED: {e}")
        return {**_public(job), "error": str(e),
                "tracebacks": {str(k): v for k, v in getattr(e, "tracebacks", {}).items()},
                "wall_s": time.perf_counter() - t}
    r0 = ranks[0]
    res = {**_public(job), **{k: v for k, v in r0.items() if k != "teacher_logits"}, "wall_s": time.perf_counter() - t}
    if "decode_tokens_per_s" in r0:
        res["decode_tokens_per_s_min_rank"] = min(r["decode_tokens_per_s"] for r in ranks)
    if len(ranks) > 1 and "tokens" in r0:
        res["ranks_agree"] = all(r["tokens"] == r0["tokens"] for r in ranks)
    res["_logits"] = r0.get("teacher_logits")
    log(f"  done in {res['wall_s']:.1f} s" + (f": {r0['decode_tokens_per_s']:.1f} tokens/s" if "decode_tokens_per_s" in r0 else ""))
    return res


def _public(job: dict) -> dict:
    return {k: v for k, v in job.items() if k not in ("teacher",)}


def _compare(a: np.ndarray, b: np.ndarray) -> dict:
    a, b = a.astype(np.float64), b.astype(np.float64)
    cos = float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))
    return {"max_abs_err": float(np.abs(a - b).max()), "logit_abs_max": float(np.abs(b).max()), "cosine": cos,
            "top1_agree": float((a.argmax(-1) == b.argmax(-1)).mean())}


def _first_diff(x: list, y: list):
    return next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), None if len(x) == len(y) else min(len(x), len(y)))


def equal_jobs(model: str, tp: int, new: int, budget_ok, log, device: str, overrides=None, time_steps=0) -> dict:
    """fp16 TP=1, fp16 TP=N, fp32 TP=1, fp32 TP=N on one shape; the comparison."""
    base = {"model": model, "new_tokens": new, "overrides": overrides or {}, "copy_bandwidth": bool(time_steps),
            "capture": False if SHARED["on"] else None}
    out = {"model": model, "tp": tp, "runs": []}
    teacher = None
    got = {}
    for dtype in ("float16", "float32"):
        for world in (1, tp):
            if not budget_ok():
                out["runs"].append({"dtype": dtype, "tp": world, "skipped": "time budget"})
                continue
            job = {**base, "dtype": dtype, "tp": world, "teacher": teacher,
                   "time_steps": time_steps if dtype == "float16" else 0}
            log(f"equal {model} {dtype} tp={world}")
            if teacher is None:
                job["teacher"] = "self"  # the first run: teacher-forced on its own greedy tokens
            r = _run(job, device, log)
            logits = r.pop("_logits", None)
            if teacher is None and "tokens" in r:
                teacher = r["tokens"]  # every later run is teacher-forced on TP=1's fp16 tokens
            got[(dtype, world)] = (r, logits)
            out["runs"].append(r)
    cmp = {}
    for dtype in ("float16", "float32"):
        (a, la), (b, lb) = got.get((dtype, 1), ({}, None)), got.get((dtype, tp), ({}, None))
        c = {}
        if "tokens" in a and "tokens" in b:
            c["greedy_tokens_equal"] = a["tokens"] == b["tokens"]
            c["first_difference"] = _first_diff(a["tokens"], b["tokens"])
            c["tokens_tp1"], c["tokens_tpN"] = a["tokens"], b["tokens"]
        if la is not None and lb is not None:
            c.update({f"logits_{k}": v for k, v in _compare(lb, la).items()})
            i = c.get("first_difference")
            if i is not None and dtype == "float16" and i < len(la):
                top = np.sort(la[i].astype(np.float64))[-2:]
                c["tp1_top2_margin_at_first_difference"] = float(top[1] - top[0])
        cmp[dtype] = c
    ref = got.get(("float32", 1), ({}, None))[1]
    if ref is not None:
        for world in (1, tp):
            l16 = got.get(("float16", world), ({}, None))[1]
            if l16 is not None:
                cmp["float16"][f"tp{world}_fp16_vs_fp32_tp1_max_abs_err"] = _compare(l16, ref)["max_abs_err"]
    out["compare"] = cmp
    if time_steps:
        s1, sn = got.get(("float16", 1), ({}, None))[0], got.get(("float16", tp), ({}, None))[0]
        if "decode_tokens_per_s" in s1 and "decode_tokens_per_s" in sn:
            out["scaling"] = {"tp1_tokens_per_s": s1["decode_tokens_per_s"], "tpN_tokens_per_s": sn["decode_tokens_per_s"],
                              "speedup": sn["decode_tokens_per_s"] / s1["decode_tokens_per_s"]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tp", type=int, default=2)
    p.add_argument("--equal", default="llama:tiny,llama:llama-2-7b", help="shapes for TP=N vs TP=1 (comma-separated)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--scale", default="llama:llama-2-7b", help="the equal shape whose fp16 decode is also timed")
    p.add_argument("--speed", default="llama:llama-2-70b", help="fp16 decode speed at TP=N")
    p.add_argument("--time-steps", type=int, default=128)
    p.add_argument("--budget-s", type=float, default=440.0)
    p.add_argument("--one-gpu", action="store_true",
                   help="all ranks on cuda:0 (shared memory, eager steps): TP=N vs TP=1 on a one-GPU machine")
    args = p.parse_args(argv)
    SHARED["on"] = args.one_gpu
    if args.one_gpu:
        args.device, args.speed, args.scale = "cuda", "", ""
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.1f} s] {msg}", flush=True)

    def budget_ok():
        return time.perf_counter() - t_start < args.budget_s

    import os
    from engine.distributed import SAFE_ENV
    from engine.distributed.launch import TUNING_ENV, apply_env
    apply_env()
    os.environ.setdefault("NCCL_DEBUG", "WARN")
    result = {"bench": "tp_decode", "device": args.device, "tp": args.tp, "env": {k: os.environ[k] for k in {**SAFE_ENV, **TUNING_ENV}}, "versions": _versions(),
              "one_gpu": args.one_gpu, "equal": [], "speed": None}
    if args.tp > 1:
        result["smoke"] = smoke(args.tp, args.device, log)
        _write(args.out, result)
    scale = set(filter(None, args.scale.split(",")))
    # the big speed job first after the tiny check (it is what the run is for), then the 7B comparisons
    shapes = [s for s in args.equal.split(",") if s]
    order = [s for s in shapes if s not in scale] + ["<speed>"] + [s for s in shapes if s in scale]
    for item in order:
        if item == "<speed>":
            if not args.speed:
                continue
            if not budget_ok():
                result["speed"] = {"model": args.speed, "skipped": "time budget"}
                continue
            log(f"speed {args.speed} float16 tp={args.tp}")
            r = _run({"model": args.speed, "dtype": "float16", "tp": args.tp, "new_tokens": 16,
                      "time_steps": args.time_steps, "allreduce": True, "copy_bandwidth": True}, args.device, log)
            r.pop("_logits", None)
            if "decode_tokens_per_s" in r and r.get("copy_gb_per_s"):
                r["roofline_tokens_per_s"] = r["copy_gb_per_s"] * 1e9 / r["weight_bytes"]  # per-rank bytes at copy speed
                r["fraction_of_roofline"] = r["decode_tokens_per_s"] / r["roofline_tokens_per_s"]
                r["allreduce_share_of_step"] = r.get("allreduce_ms_per_step_graph", 0.0) / r["ms_per_token"]
            result["speed"] = r
        else:
            result["equal"].append(equal_jobs(item, args.tp, args.new_tokens, budget_ok, log, args.device,
                                              time_steps=args.time_steps if item in scale else 0))
        _write(args.out, result)  # after every job: a later failure keeps what was measured
    result["wall_s"] = time.perf_counter() - t_start
    _write(args.out, result)
    print(_summary(result), flush=True)
    return 0


def _versions() -> dict:
    out = {"python": sys.version.split()[0], "numpy": np.__version__}
    try:
        import cupy
        out["cupy"] = cupy.__version__
        from cupy.cuda import nccl
        out["nccl"] = nccl.get_version() if nccl.available else None
    except Exception as e:
        out["cupy"] = f"unavailable: {type(e).__name__}"
    return out


def _write(path: str, result: dict) -> None:
    from engine.io.atomic import atomic_write_text
    atomic_write_text(path, json.dumps(result, indent=1, default=_jsonable))


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _summary(r: dict) -> str:
    lines = [f"tp_decode on {r['device']}, tp={r['tp']}"]
    for e in r["equal"]:
        for dt, c in e.get("compare", {}).items():
            lines.append(f"  {e['model']} {dt}: greedy equal {c.get('greedy_tokens_equal')} (first difference "
                         f"{c.get('first_difference')}), logits max abs err {c.get('logits_max_abs_err', float('nan')):.3g}"
                         f" cosine {c.get('logits_cosine', float('nan')):.6f}")
        if "scaling" in e:
            s = e["scaling"]
            lines.append(f"  {e['model']} fp16 decode: tp1 {s['tp1_tokens_per_s']:.1f} tok/s, tp{r['tp']} "
                         f"{s['tpN_tokens_per_s']:.1f} tok/s, x{s['speedup']:.2f}")
    s = r.get("speed") or {}
    if "decode_tokens_per_s" in s:
        lines.append(f"  {s['model']} fp16 tp{r['tp']}: {s['decode_tokens_per_s']:.1f} tok/s, "
                     f"{s['achieved_gb_per_s']:.0f} GB/s per GPU, all-reduce {s.get('allreduce_ms_per_step_graph', 0):.3f}"
                     f" ms/step in the graph ({s.get('allreduce_us_each_graph', 0):.1f} us each)")
    elif s:
        lines.append(f"  {s.get('model')}: {s.get('error') or s.get('skipped')}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
