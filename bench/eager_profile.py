"""Where the host time of the engine's eager (uncaptured) path goes: cProfile over a few decode steps
and one prefill of a preset, on the device at hand.

    python -m bench.eager_profile --model llama:llama-2-7b --device cuda --dtype float16

For each: the host time until the call returns and the time until the device is done (unprofiled), then
cProfile by own time and by cumulative time.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama:tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--top", type=int, default=25)
    a = p.parse_args(argv)
    import numpy as np

    import engine
    from engine.generation import Decoder
    from impls.sources import parse
    src = parse(a.model)
    m = engine.models.from_preset(src.model_type, src.preset, dtype=getattr(engine, a.dtype), device=a.device)
    ids = engine.tensor(np.random.default_rng(0).integers(0, m.config.vocab_size, (1, a.prefill)), device=a.device)
    dec = Decoder(m, 1, a.prefill + 4 * a.steps + 8, capture=False)
    dec.prefill(ids)
    for _ in range(a.steps):
        dec.step()
    engine.synchronize(a.device)
    for what, fn in (("decode step", lambda: [dec.step() for _ in range(a.steps)]),
                     ("prefill", lambda: dec.prefill(ids))):
        n = a.steps if what == "decode step" else 1
        t0 = time.perf_counter()  # unprofiled: when the host returns, and when the device is done
        fn()
        t_host = time.perf_counter() - t0
        engine.synchronize(a.device)
        t_wall = time.perf_counter() - t0
        print(f"== {what}: host returns after {t_host / n * 1e3:.2f} ms, device done after {t_wall / n * 1e3:.2f} ms")
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        fn()
        engine.synchronize(a.device)
        prof.disable()
        dt = time.perf_counter() - t0
        print(f"== {what}: {dt / n * 1e3:.2f} ms each (profiled)")
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(a.top)
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(a.top)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
