"""torch's own tensor parallel, for bench.tp_decode's engine figures to stand beside (issue 19): a transformers
decoder LM split by torch.distributed.tensor.parallel along the model's own `base_model_tp_plan` (q/k/v and
gate/up colwise, o_proj and down_proj rowwise: the layout engine.distributed uses), one process per rank, launched
by torchrun:

    torchrun --nproc-per-node 4 -m bench.tp_torch --model llama:llama-2-70b --out $OUT/tp_torch4.json
    torchrun --nproc-per-node 2 -m bench.tp_torch --device cpu --model llama:tiny --out /tmp/tp_torch.json

Random weights from a preset's config, each tensor drawn whole from a generator seeded by its name (the same on
every rank and at every world size) and sliced to the rank's shard, so TP=N holds TP=1's model exactly. Batch-1
greedy decode, eager with a DynamicCache: prefill of --prompt-len ids, then --steps steps, timed after --warmup
steps; tokens/s, weight bytes per rank, the tokens, and the last step's logits (rank 0 writes the JSON). --compile
runs it through torch.compile (dynamic shapes, default mode), as torch's TP is meant to run.
--attn sdpa (the default) runs torch's scaled_dot_product_attention with its cuDNN backend turned off: on one H200
(torch 2.11, session 23's profile) sdpa chose cuDNN, which builds a new plan for every new sequence length, ~3 ms a
layer on the host, so each decode step (one position longer than the last) paid ~100 ms: 10.6 tok/s for the 7B
shape where the llm suite's torch eager runner ran 43. With it off (session 23, same card): 47.7 tok/s sdpa, 43.6
--attn eager (that runner's attention), 85.5 sdpa --compile.
A config whose plan has styles other than colwise/rowwise (Phi-3's fused projections, Mixtral's experts) is
refused with the styles named.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
import time
import zlib


def _styles(plan: dict):
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel
    known = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
    other = sorted({s for s in plan.values() if s not in known})
    if other:
        raise SystemExit(f"tp_torch: the model's tp plan has styles {other} beside colwise/rowwise; not supported here")
    return {k: known[v]() for k, v in plan.items()}


def _fill(model, seed: int, std: float = 0.02) -> int:
    """Every parameter drawn whole from a generator seeded by (seed, its name), then this rank's shard of it kept
    (DTensor's Shard(d) is torch.chunk along d); norm weights ones. Returns this rank's weight bytes."""
    import torch
    from torch.distributed.tensor import DTensor, Shard
    total = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            local = p.to_local() if isinstance(p, DTensor) else p
            if "norm" in name:
                local.fill_(1.0)
            else:
                g = torch.Generator(device=local.device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
                full = torch.empty(p.shape, dtype=torch.float32, device=local.device).normal_(0.0, std, generator=g)
                if isinstance(p, DTensor):
                    for dim_mesh, pl in enumerate(p.placements):
                        if isinstance(pl, Shard):
                            mesh = p.device_mesh
                            full = torch.chunk(full, mesh.size(dim_mesh), pl.dim)[mesh.get_local_rank(dim_mesh)]
                local.copy_(full.to(local.dtype))
            total += local.numel() * local.element_size()
    return total


def build(model_spec: str, dtype, device, mesh, seed: int = 0, attn: str = "sdpa"):
    """The transformers model of a preset, split over mesh (None: whole), weights filled (see _fill); attn: its
    attention implementation (sdpa: with torch's cuDNN attention backend turned off, the module docstring says why)."""
    import torch
    import transformers
    from torch.distributed.tensor.parallel import parallelize_module

    from impls import sources
    cfg = sources.hf_config(sources.parse(model_spec))
    cfg._attn_implementation = attn
    if attn == "sdpa" and torch.device(device).type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    if mesh is not None and mesh.size() > 1:
        plan = _styles(dict(getattr(cfg, "base_model_tp_plan", None) or {}))
        names = [n for n, _ in model.model.named_modules()]
        expanded = {n: style for pattern, style in plan.items() for n in fnmatch.filter(names, pattern)}
        parallelize_module(model.model, mesh, expanded)
    model = model.to_empty(device=device)
    rotary = getattr(model.model, "rotary_emb", None)
    if rotary is not None:  # its buffers were left unset by to_empty
        model.model.rotary_emb = type(rotary)(config=cfg).to(device)
    weight_bytes = _fill(model, seed)
    return model.eval(), cfg, weight_bytes


def decode(model, prompt: list, steps: int, warmup: int, device) -> dict:
    """Greedy batch-1 decode; tokens/s over the steps after warm-up (the device synchronised around them)."""
    import torch
    import transformers
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        cache = transformers.DynamicCache(config=model.config)
        out = model(input_ids=torch.tensor([prompt], device=device), past_key_values=cache, use_cache=True)
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens = [int(tok)]
        t0 = None
        for i in range(steps):
            if i == warmup:
                sync()
                t0 = time.perf_counter()
            out = model(input_ids=tok, past_key_values=out.past_key_values, use_cache=True)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(int(tok))  # a host read a step, as a streaming generate makes
        sync()
        timed = steps - warmup
        seconds = time.perf_counter() - t0 if t0 is not None else 0.0
    return {"tokens": tokens, "timed_steps": timed, "tokens_per_s": timed / seconds if seconds > 0 else None,
            "last_logits": out.logits[0, -1].float().cpu().tolist()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama:llama-2-70b", help="a preset MODEL_TYPE:NAME")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"],
                   help="default: float16 on cuda, float32 on cpu")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"],
                   help="attention: torch's sdpa without its cuDNN backend (default), or transformers' eager")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (dynamic shapes, default mode: "
                                                            "DTensor's dispatch traced away, the cache growing)")
    p.add_argument("--out", required=True, help="JSON file rank 0 writes")
    args = p.parse_args(argv)
    if not 0 <= args.warmup < args.steps:
        p.error(f"--warmup must be in [0, --steps): got {args.warmup} and {args.steps}")

    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("tp_torch: --device cuda but torch sees no GPU")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    mesh = None
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        mesh = init_device_mesh(device.type, (world,))
    dtype = getattr(torch, args.dtype or ("float16" if device.type == "cuda" else "float32"))
    t0 = time.perf_counter()
    model, cfg, weight_bytes = build(args.model, dtype, device, mesh, args.seed, args.attn)
    build_s = time.perf_counter() - t0
    if args.compile:  # compiled on the first calls (prefill, then the first steps: inside the warm-up)
        model.forward = torch.compile(model.forward, dynamic=True)
    prompt = [(7 * i + 3) % cfg.vocab_size for i in range(args.prompt_len)]
    res = decode(model, prompt, args.steps, args.warmup, device)
    if rank == 0:
        out = {"impl": "torch tensor parallel (torch.distributed.tensor.parallel, transformers' tp plan)",
               "torch": torch.__version__, "model": args.model, "world_size": world, "device": args.device,
               "card": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "dtype": str(dtype).removeprefix("torch."), "batch": 1, "prompt_len": args.prompt_len,
               "steps": args.steps, "warmup": args.warmup, "weight_bytes_per_rank": weight_bytes,
               "achieved_gb_per_s_per_rank": (weight_bytes * res["tokens_per_s"] / 1e9
                                              if res["tokens_per_s"] else None),
               "attn": args.attn, "compiled": args.compile, "build_s": build_s, **res}
        tmp = f"{args.out}.tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1)
        os.replace(tmp, args.out)
        print(f"tp_torch: {args.model} TP={world} {out['dtype']} {args.attn}{' compiled' if args.compile else ''}: "
              f"{res['tokens_per_s'] or 0:.1f} tok/s "
              f"({weight_bytes / 1e9:.2f} GB a rank) -> {args.out}", file=sys.stderr)
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
