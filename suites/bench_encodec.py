"""EnCodec through impls/: the engine beside torch eager and torch.compile (transformers' EncodecModel),
the same preset (engine.models' encodec presets: encodec_24khz, transformers' default config) with
random weights, at one bandwidth (the preset's target_bandwidths overridden to that one, so that both
sides' plain forward encodes at it and decodes the codes).

- ``Codec.time_encode_decode``: encode + decode of SECONDS of real speech (tests/fixtures/speech_16k.wav
  resampled to the model's rate by engine.audio, tiled; host numpy, the same input for every
  implementation); synchronised on a GPU.
- ``Codec.track_real_time_factor``: that time over the audio's duration (below 1: faster than real time).
"""
from __future__ import annotations

import time

from suites.common import DEVICES, IMPLS, get_impl, prepared, sizes, speech_audio

MODELS = sizes(["encodec:encodec_24khz"], ["encodec:tiny"])
SECONDS = sizes([10.0], [0.02])[0]
BANDWIDTH = {"encodec:encodec_24khz": 6.0, "encodec:tiny": 60.0}  # kbps: 8 codebooks / 2 codebooks
def load(impl: str, device: str, dtype: str, model: str):
    return prepared(("encodec", impl, device, dtype, model),
                    lambda: get_impl(impl, device, dtype).load(model, target_bandwidths=[BANDWIDTH[model]]))


class Codec:
    params = (IMPLS, DEVICES, ["float32"], MODELS)
    param_names = ["impl", "device", "dtype", "model"]
    number = 1
    repeat = (1, 5, 60.0)
    timeout = 1800

    def setup(self, impl, device, dtype, model):
        m = load(impl, device, dtype, model)
        x = speech_audio(m.config["sampling_rate"], SECONDS)
        self.run = m.impl.build(m.run, m.device_inputs(x))

        def rtf():
            self.run()  # warm-up (compile on torch-compile)
            t0 = time.perf_counter()
            self.run()
            return (time.perf_counter() - t0) / SECONDS
        self.rtf = prepared(("encodec-rtf", impl, device, dtype, model), rtf)

    def time_encode_decode(self, impl, device, dtype, model):
        self.run()

    def track_real_time_factor(self, impl, device, dtype, model):
        return self.rtf
    track_real_time_factor.unit = "real_time_factor"
