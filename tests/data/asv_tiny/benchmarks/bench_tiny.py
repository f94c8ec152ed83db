"""A tiny asv suite for the reports and gate tests; it follows the suites/ conventions.

Every class has `params` with "impl" and "device" names. The engine is made slower by
tinyengine.SLOWDOWN (1 unless a commit or the environment variable TAPER_TINY_SLOWDOWN changes it),
which plants a regression for the gate. Times come from time.sleep and track values are constants,
so the expected ratios are known: torch/engine time 1.5, tokens/s 2.0, peak device bytes 1.5.
The sleeps are 10 and 15 ms: a millisecond or two of scheduling delay on a loaded 2-core box stays
well inside the gate's 1.3x (with 2 and 3 ms, CI once saw the planted 2x slowdown of one
parameter set come out "not significant").
"""
import time

from tinyengine import SLOWDOWN

MIB = 1 << 20


def _skip_unavailable(impl, device):
    if device == "cuda":
        raise NotImplementedError("no cuda device here")  # asv records a skip (nan)


class Ops:
    params = (["engine", "torch"], ["cpu", "cuda"], ["float32", "float16"])
    param_names = ["impl", "device", "dtype"]
    number = 1
    repeat = 12
    rounds = 1
    warmup_time = 0.0

    def setup(self, impl, device, dtype):
        _skip_unavailable(impl, device)
        base = 0.010 if impl == "engine" else 0.015
        self.delay = base * (SLOWDOWN if impl == "engine" else 1.0)

    def time_matmul(self, impl, device, dtype):
        time.sleep(self.delay)

    def peakmem_alloc(self, impl, device, dtype):
        block = bytearray((8 if impl == "engine" else 32) * MIB)
        block[::4096] = b"x" * len(block[::4096])


class Decode:
    params = (["engine", "torch"], ["cpu", "cuda"], ["tiny-llama"], [1])
    param_names = ["impl", "device", "model", "batch"]

    def setup(self, impl, device, model, batch):
        _skip_unavailable(impl, device)

    def track_ms_per_token(self, impl, device, model, batch):
        return (20.0 * SLOWDOWN) if impl == "engine" else 40.0

    track_ms_per_token.unit = "ms_per_token"

    def track_peak_device_bytes(self, impl, device, model, batch):
        return float((64 if impl == "engine" else 96) * MIB)

    track_peak_device_bytes.unit = "bytes"

    def track_roofline_tokens_per_s(self, impl, device, model, batch):
        return 100.0

    track_roofline_tokens_per_s.unit = "tokens_per_s"
