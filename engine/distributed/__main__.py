"""python -m engine.distributed --tp N --model MODEL (--ids 1,2,3 | --prompt TEXT) [--device cpu|cuda]

Greedy (or sampled) generation with the model split over N ranks; rank 0 streams its text (ids when
there is no tokenizer.json), then one line with prefill ms, decode tokens/s and peak memory per rank.
MODEL: a HF model directory (safetensors) or MODEL_TYPE:PRESET with random weights (llama:llama-2-70b).
Exit codes: 0 done, 2 bad input or a rank that failed.
"""
from __future__ import annotations

import argparse
import sys


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
        from engine.distributed.run import fixed_seed, generate_tp, make_spec
        spec = make_spec(args.model, args.ids, args.prompt, args.dtype)
        spec.update(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, seed=fixed_seed(args.seed), capture=args.capture, stream=True)
        results = generate_tp(spec, args.tp, args.device, args.isolate_devices)
    except (ValueError, OSError, RuntimeError, KeyError) as e:
        print(f"engine.distributed: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    from engine.distributed.run import summary
    print(summary(results, len(spec["ids"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
