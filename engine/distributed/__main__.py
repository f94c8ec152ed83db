"""python -m engine.distributed --tp N --model MODEL (--ids 1,2,3 | --prompt TEXT) [--device cpu|cuda]

Greedy (or sampled) generation with the model split over N ranks; rank 0 streams its text (ids when
there is no tokenizer.json), then one line with prefill ms, decode tokens/s and peak memory per rank.
MODEL: a HF model directory (safetensors) or MODEL_TYPE:PRESET with random weights (llama:llama-2-70b).
Exit codes: 0 done, 2 bad input or a rank that failed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.distributed", description=__doc__.splitlines()[0])
    p.add_argument("--tp", type=int, required=True, help="ranks: processes (one GPU each with --device cuda)")
    p.add_argument("--model", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ids", help="prompt token ids, comma-separated")
    src.add_argument("--prompt", help="prompt text (the model directory's tokenizer.json)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (rank r on cuda:r)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-capture", dest="capture", action="store_const", const=False, default=None)
    p.add_argument("--isolate-devices", action="store_true",
                   help="give each rank only its GPU (CUDA_VISIBLE_DEVICES) instead of cuda:rank with all visible")
    args = p.parse_args(argv)
    try:
        spec = make_spec(args.model, args.ids, args.prompt, args.dtype)
        spec.update(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, seed=fixed_seed(args.seed), capture=args.capture, stream=True)
        results = run(spec, args.tp, args.device, args.isolate_devices)
    except (ValueError, OSError, RuntimeError, KeyError) as e:
        print(f"engine.distributed: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    from engine.distributed.run import summary
    print(summary(results, len(spec["ids"])))
    return 0


def fixed_seed(seed):
    """One seed for every rank (sampling must draw the same token everywhere)."""
    import numpy as np
    return int(seed if seed is not None else np.random.SeedSequence().entropy % (1 << 63))


def make_spec(model: str, ids: str | None, prompt: str | None, dtype: str | None) -> dict:
    """The ranks' spec for a model directory or MODEL_TYPE:PRESET; checks the plan here, before any
    process starts (so a bad size is one clear line)."""
    from engine.generation import load_tokenizer
    spec: dict = {"dtype": dtype}
    if Path(model).exists():
        spec["path"] = str(model)
        tok = load_tokenizer(model)
        spec["tokenizer"] = str(model) if tok is not None else None
    elif ":" in model:
        mt, _, preset = model.partition(":")
        spec.update(model_type=mt, preset=preset)
        tok = None
    else:
        raise ValueError(f"{model}: not a model directory, nor MODEL_TYPE:PRESET (e.g. llama:tiny)")
    if prompt is not None:
        if tok is None:
            raise ValueError(f"{model} has no tokenizer.json; pass --ids instead of --prompt")
        enc = tok.encode(prompt)
        spec["ids"] = [i for i, m in zip(enc.ids, enc.attention_mask) if m]
    else:
        try:
            spec["ids"] = [int(t) for t in ids.replace(" ", "").split(",") if t]
        except ValueError:
            raise ValueError(f"--ids must be comma-separated integers, got {ids!r}") from None
    if not spec["ids"]:
        raise ValueError("the prompt has no tokens")
    return spec


def run(spec: dict, tp: int, device: str, isolate: bool = False) -> list:
    """Check the plan and the prompt against the config here, then generate in tp ranks; every rank's
    result (they agree on the tokens, or RuntimeError)."""
    from engine.distributed.launch import check_world, launch
    from engine.distributed.run import check_agree, generate_rank
    from engine.distributed.shard import RankPlan, preset_config
    check_world(tp, device)
    if spec.get("path"):
        from engine.models import model_class, read_config
        raw = read_config(spec["path"])
        config = model_class(raw.get("model_type") or "").Config.from_dict(raw)
    else:
        config = preset_config(spec["model_type"], spec["preset"], **spec.get("overrides", {}))
    RankPlan(config, tp)
    bad = [i for i in spec["ids"] if not 0 <= i < config.vocab_size]
    if bad:
        raise ValueError(f"token id(s) {bad[:5]} outside the model's vocabulary (0 to {config.vocab_size - 1})")
    results = launch(generate_rank, tp, device, args=(spec,))
    check_agree(results)
    return results


if __name__ == "__main__":
    sys.exit(main())
