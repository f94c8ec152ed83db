"""A/B of the decode-step launch savings on the GPU at hand: the captured step with rotary_cache (the plan's
rotary + KV-cache-write group) and the one-launch decode attention (attn_fused), and with both off (four
launches a layer for rotary and cache writes; attn_partial + attn_combine), in one process: step time,
launches, the kernels involved, and whether both produce the same greedy tokens (they must: the math is
the same op for op).

    python -m bench.decode_fuse --model llama:llama-2-7b --batch 1 --out $OUT/decode_fuse.json
"""
from __future__ import annotations

import json

import numpy as np

from bench.step_profile import profile

_SHOWN = ("rotary", "attn_", "setitem", "scatter", "copy")


def _switch(on: bool) -> None:
    from engine import capture_plan
    from engine.backends import cupy_decode
    capture_plan.ROTARY_CACHE["enabled"] = on
    cupy_decode.ONE_LAUNCH_ATTENTION["enabled"] = on


def _tokens(model, batch: int, prompt: int, steps: int) -> list:
    import engine
    from engine.generation import Decoder
    dec = Decoder(model, batch, prompt + steps + 8, capture=True)
    ids = np.random.default_rng(1).integers(0, model.config.vocab_size, (batch, prompt))
    dec.prefill(engine.tensor(ids, device=model.device))
    for _ in range(steps):
        dec.step()
    return dec.tokens().tolist()


def main(argv=None) -> int:
    from bench.step_profile import step_args
    p = step_args(__doc__.splitlines()[0])
    p.add_argument("--out")
    a = p.parse_args(argv)
    from engine import dtype as D
    from impls.sources import parse
    model = parse(a.model).engine_model(D.get(a.dtype), "cuda")
    results = []
    for b in [int(x) for x in a.batch.split(",")]:
        toks = {}
        for on in (False, True):
            _switch(on)
            r = profile(model, b, a.steps, a.prompt, True)
            toks[on] = _tokens(model, b, a.prompt, 32)
            r["fused"] = on
            results.append(r)
            print(f"batch {b} fused={on}: step {r['step_us']:.0f} us, kernels {r['kernel_us']:.0f} us, "
                  f"{r['launches']:.0f} launches")
            for k in r["kernels"]:
                if any(s in k["name"] for s in _SHOWN):
                    print(f"  {k['us_per_step']:9.1f} us {k['launches_per_step']:6.1f}x  {k['name']}")
        same = toks[True] == toks[False]
        results.append({"batch": b, "same_tokens": same})
        print(f"batch {b}: greedy tokens with and without the fusions {'equal' if same else 'DIFFER'}")
    _switch(True)
    if a.out:
        from engine.io.atomic import atomic_write_text
        atomic_write_text(a.out, json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
