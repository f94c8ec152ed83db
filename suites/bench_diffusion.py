"""Stable Diffusion components through impls/: the engine beside torch eager (diffusers), torch.compile
and ONNX Runtime, the same preset shape (engine.models' presets: SD 1.5's UNet and VAE) with random
weights.

- ``UNetStep.time_unet_step``: one denoising step at 512x512 (latents (2, 4, 64, 64): the [uncond; cond]
  batch of classifier-free guidance for one image), timestep 981, text states (2, 77, 768).
- ``VAEDecode.time_vae_decode``: latents (1, 4, 64, 64) to the (1, 3, 512, 512) image.

Inputs are placed on the device once (``Model.device_inputs``: float32 host arrays, cast by each
implementation) and the outputs stay there (``Model.run``); a GPU call synchronises before it returns.
An untimed call at the timed shape runs first (compile, export, capture). 16-bit on the cpu is
measured for the tiny presets only; TAPER_BENCH_QUICK=1 swaps in the tiny presets (32x32 images).
"""
import numpy as np

from suites.common import DEVICES, DTYPES, IMPLS, QUICK, get_impl, prepared, sizes

SIZES = sizes(["sd-1.5"], ["tiny"])


def _check(device, dtype, size):
    if device == "cpu" and dtype != "float32" and size != "tiny":
        raise NotImplementedError(f"{dtype} on the cpu is only measured for the tiny presets (16-bit convs upcast)")
    if device == "cuda" and size == "tiny" and not QUICK:
        raise NotImplementedError("the tiny presets are measured on the cpu")


def _load(impl, device, dtype, source):
    return prepared(("diffusion", impl, device, dtype, source), lambda: get_impl(impl, device, dtype).load(source))


class UNetStep:
    params = (IMPLS, DEVICES, DTYPES, SIZES)
    param_names = ["impl", "device", "dtype", "size"]
    number = 1
    repeat = (1, 5, 120.0)
    warmup_time = 0.0
    timeout = 1800

    def setup(self, impl, device, dtype, size):
        _check(device, dtype, size)
        model = _load(impl, device, dtype, f"UNet2DConditionModel:{size}")
        cfg = model.config
        hw = (cfg["sample_size"], cfg["sample_size"])  # the latents of SD 1.5's 512x512 image: 64x64
        rng = np.random.default_rng(0)  # float32 host arrays: each implementation casts them to its dtype
        x = rng.standard_normal((2, cfg["in_channels"]) + hw, dtype=np.float32)
        ctx = rng.standard_normal((2, 77, cfg["cross_attention_dim"]), dtype=np.float32)
        self.call = model.impl.build(model.run, model.device_inputs(x, np.array(981), ctx))
        prepared(("unet-warm", impl, device, dtype, size), lambda: self.call() is None)

    def time_unet_step(self, impl, device, dtype, size):
        self.call()


class VAEDecode:
    params = (IMPLS, DEVICES, DTYPES, SIZES)
    param_names = ["impl", "device", "dtype", "size"]
    number = 1
    repeat = (1, 5, 120.0)
    warmup_time = 0.0
    timeout = 1800

    def setup(self, impl, device, dtype, size):
        _check(device, dtype, size)
        model = _load(impl, device, dtype, f"AutoencoderKL:{size}")
        cfg = model.config
        f = 2 ** (len(cfg["block_out_channels"]) - 1)
        n = cfg["sample_size"] // f  # latents of a sample_size image (SD 1.5: 512 -> 64)
        z = np.random.default_rng(0).standard_normal((1, cfg["latent_channels"], n, n), dtype=np.float32)
        self.call = model.impl.build(model.run, model.device_inputs(z), method="decode")
        prepared(("vae-warm", impl, device, dtype, size), lambda: self.call() is None)

    def time_vae_decode(self, impl, device, dtype, size):
        self.call()
