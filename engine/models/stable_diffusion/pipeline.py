"""txt2img: Stable Diffusion's sampling loop with classifier-free guidance, on the engine.

    pipe = StableDiffusionPipeline.from_pretrained("sd-1.5", scheduler="ddim")   # unet/ vae/ scheduler/
    image = pipe(prompt_embeds, negative_prompt_embeds, num_inference_steps=25, seed=0)  # (B, H, W, 3) uint8

The loop is diffusers' StableDiffusionPipeline.__call__: latents * init_noise_sigma; for each t:
[uncond; cond] latents through the UNet in one batch, noise = uncond + scale * (cond - uncond),
scheduler step; then vae.decode(latents / scaling_factor), (x / 2 + 0.5).clamp(0, 1).

Text: `txt2img(prompt, negative_prompt)` tokenizes (tokenizer/: tokenizer.json, or CLIP's vocab.json +
merges.txt; padded to 77 tokens as diffusers does) and encodes with CLIP's text tower
(engine/models/clip_text.py, text_encoder/) into (B, 77, cross_attention_dim), the last hidden state; `__call__` takes such embeddings directly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engine import dtype as D
from engine import ops
from engine.models import read_config
from engine.models.clip_text import CLIPTextModel
from engine.models.stable_diffusion.autoencoder_kl import AutoencoderKL
from engine.models.stable_diffusion.schedulers import PRESETS as SCHEDULER_PRESETS
from engine.models.stable_diffusion.schedulers import scheduler_from_config
from engine.models.stable_diffusion.unet_2d_condition import UNet2DConditionModel


def progress(iterable, enabled: bool = True, desc: str = "denoise"):
    """tqdm over the loop when tqdm is installed and enabled; the plain iterable otherwise."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=len(iterable))


class PromptTokenizer:
    """A tokenizers.Tokenizer (tokenizer/tokenizer.json or CLIP's BPE files) that pads and truncates every prompt to
    model_max_length tokens with the pad token of tokenizer_config.json, as diffusers' encode_prompt
    calls its tokenizer (padding="max_length", truncation=True)."""

    def __init__(self, tokenizer, max_length: int = 77, pad_token: str = "<|endoftext|>"):
        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"the tokenizer has no pad token {pad_token!r}")
        self.tok, self.max_length = tokenizer, max_length
        tokenizer.enable_truncation(max_length)
        tokenizer.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad_token)

    @classmethod
    def from_dir(cls, path) -> "PromptTokenizer":
        """tokenizer/tokenizer.json when present, else CLIP's BPE from vocab.json + merges.txt (what SD
        checkpoints ship; engine/models/clip_tokenizer.py builds it as transformers' CLIPTokenizer)."""
        from tokenizers import Tokenizer

        from engine.models.clip_tokenizer import clip_tokenizer
        path = Path(path)
        if (path / "tokenizer.json").is_file():
            tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            tok = clip_tokenizer(path)
        else:
            raise FileNotFoundError(f"{path} has neither tokenizer.json nor vocab.json + merges.txt (CLIP's tokenizer)")
        cfg = read_config(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}
        pad = cfg.get("pad_token") or "<|endoftext|>"
        pad = pad.get("content") if isinstance(pad, dict) else pad
        length = cfg.get("model_max_length") or 77
        return cls(tok, min(int(length), 77), pad)

    @staticmethod
    def present(path) -> bool:
        path = Path(path)
        return (path / "tokenizer.json").is_file() or ((path / "vocab.json").is_file() and (path / "merges.txt").is_file())

    def __call__(self, prompts) -> np.ndarray:
        """list of str -> (B, max_length) int64 ids."""
        return np.array([e.ids for e in self.tok.encode_batch(list(prompts))], dtype=np.int64)


class StableDiffusionPipeline:
    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL, scheduler, text_encoder=None,
                 tokenizer: PromptTokenizer | None = None):
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self._unet_fwd: dict = {}  # capture option -> the UNet's CapturedForward (unet_forward)

    @classmethod
    def from_pretrained(cls, path, scheduler: str = "ddim", dtype=None, device=None, variant=None):
        """A diffusers model directory: unet/, vae/ and scheduler/scheduler_config.json (SD 1.5 ships a
        PNDM config; `scheduler` picks the algorithm that reads it: ddim or euler); text_encoder/ and
        tokenizer/ (tokenizer.json, or CLIP's vocab.json + merges.txt) when present (else text enters as
        embeddings only). Weights: diffusers' names, one file or sharded (an index), and `variant` ("fp16")
        picks the *.fp16.* files as diffusers' variant= does."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"model directory not found: {path}")
        missing = [p for p in ("unet", "vae", "scheduler/scheduler_config.json") if not (path / p).exists()]
        if missing:
            raise FileNotFoundError(f"{path} is not a diffusers Stable Diffusion directory: missing "
                                    f"{', '.join(missing)}")
        unet = UNet2DConditionModel.from_pretrained(path / "unet", dtype=dtype, device=device, variant=variant)
        vae = AutoencoderKL.from_pretrained(path / "vae", dtype=dtype, device=device, variant=variant)
        te = CLIPTextModel.from_pretrained(path / "text_encoder", dtype=dtype, device=device, variant=variant) \
            if (path / "text_encoder" / "config.json").is_file() else None
        tok = PromptTokenizer.from_dir(path / "tokenizer") if PromptTokenizer.present(path / "tokenizer") else None
        sched = scheduler_from_config(read_config(path / "scheduler/scheduler_config.json"), scheduler)
        return cls(unet, vae, sched, te, tok)

    @classmethod
    def from_preset(cls, preset: str = "tiny", scheduler: str = "ddim", dtype=None, device=None, seed: int = 0):
        """Random weights of a preset size (tiny, sd-1.5) with SD 1.5's scheduler config."""
        unet = UNet2DConditionModel.from_preset(preset, dtype=dtype, device=device, seed=seed)
        vae = AutoencoderKL.from_preset(preset, dtype=dtype, device=device, seed=seed + 1)
        return cls(unet, vae, scheduler_from_config(SCHEDULER_PRESETS["sd-1.5"], scheduler))

    @property
    def dtype(self):
        return self.unet.dtype

    @property
    def device(self):
        return self.unet.device

    def latent_shape(self, batch: int, height: int | None = None, width: int | None = None) -> tuple:
        f = self.vae_scale_factor
        height = height or self.unet.config.sample_size * f
        width = width or self.unet.config.sample_size * f
        if height % f or width % f:
            raise ValueError(f"height and width must be multiples of {f} (the VAE's scale), got {height}x{width}")
        return (batch, self.unet.config.in_channels, height // f, width // f)

    def _embeds(self, e, what: str):
        if e is None:
            return None
        if not hasattr(e, "storage"):
            e = ops.tensor(np.asarray(e), dtype=self.dtype, device=self.device)
        want = self.unet.config.cross_attention_dim
        if e.ndim != 3 or e.shape[2] != want:
            raise ValueError(f"{what} must be (batch, tokens, {want}) (the UNet's cross_attention_dim), "
                             f"got {tuple(e.shape)}")
        return e.to(self.dtype) if e.dtype is not self.dtype else e

    def unet_forward(self, capture=None):
        """The UNet as the loop calls it: (latents, timestep (1,) float32 tensor, text states) -> noise.
        On CUDA (capture None or True) one CUDA graph per (batch, latent size), captured during the first
        steps and replayed by the others and by later calls (engine.capture.CapturedForward); capture=False
        launches the same fused kernels from the host, "plain" runs the UNet's ops as written."""
        from engine.capture import CapturedForward
        if capture not in self._unet_fwd:
            self._unet_fwd[capture] = CapturedForward(self.unet, capture, keep=2, fallback=True)
        return self._unet_fwd[capture]

    def denoise(self, prompt_embeds, negative_prompt_embeds=None, num_inference_steps: int = 50,
                guidance_scale: float = 7.5, latents=None, height=None, width=None, seed: int | None = None,
                show_progress: bool = True, capture=None):
        """The sampling loop -> final latents (B, 4, h, w). latents: the initial noise N(0, 1) (before
        init_noise_sigma), drawn from `seed` when not given; given latents set the size unless height
        and width are given too (then they must agree). capture: see unet_forward (the scheduler must
        not keep a step's noise past the next UNet call: DDIM and Euler do not)."""
        cond = self._embeds(prompt_embeds, "prompt_embeds")
        if cond is None:
            raise ValueError("prompt_embeds is required (text embeddings: the CLIP text encoder's last hidden state)")
        b = cond.shape[0]
        cfg = guidance_scale > 1.0
        if cfg:
            unc = self._embeds(negative_prompt_embeds, "negative_prompt_embeds")
            if unc is None:
                raise ValueError("guidance_scale > 1 needs negative_prompt_embeds (the empty prompt's embeddings)")
            if unc.shape != cond.shape:
                raise ValueError(f"negative_prompt_embeds {tuple(unc.shape)} must match prompt_embeds {tuple(cond.shape)}")
            ctx = ops.cat([unc, cond], dim=0)  # (2B, S, D): one UNet call for both halves
        else:
            ctx = cond
        if latents is not None and not hasattr(latents, "storage"):
            latents = ops.tensor(np.asarray(latents), dtype=self.dtype, device=self.device)
        if latents is not None and height is None and width is None and latents.ndim == 4:
            height, width = (n * self.vae_scale_factor for n in latents.shape[2:])  # the size they give
        shape = self.latent_shape(b, height, width)
        if latents is None:
            gen = ops.manual_seed(seed) if seed is not None else None
            latents = ops.randn(*shape, generator=gen, dtype=D.float32, device=self.device).to(self.dtype)
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents must be {shape} for {b} prompt(s) at this size, got {tuple(latents.shape)}")
        s = self.scheduler
        s.set_timesteps(num_inference_steps)
        x = latents * s.init_noise_sigma
        unet = self.unet_forward(capture)
        # every timestep uploaded once, as the float32 the UNet takes: a step passes a (1,) view (a captured
        # step copies it into its graph's input; a number would be a constant of the graph)
        ts = ops.tensor(np.asarray([float(t) for t in s.timesteps], np.float32), dtype=D.float32, device=self.device)
        for i, t in enumerate(progress(list(s.timesteps), show_progress)):
            inp = ops.cat([x, x], dim=0) if cfg else x
            inp = s.scale_model_input(inp, t)
            noise = unet(inp, ts[i:i + 1], ctx)  # (2B | B, 4, h, w)
            if cfg:
                unc_n, cond_n = noise.chunk(2, dim=0)
                noise = unc_n + guidance_scale * (cond_n - unc_n)
            x = s.step(noise, t, x)
        return x

    def encode_prompt(self, prompts):
        """Prompts (a str or a list) -> CLIP's last hidden state (B, 77, hidden) in the UNet's dtype."""
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("text prompts need text_encoder/ and tokenizer/ (tokenizer.json, or vocab.json + "
                             "merges.txt) in the model directory; "
                             "pass text embeddings instead")
        ids = self.tokenizer([prompts] if isinstance(prompts, str) else prompts)
        out = self.text_encoder(ops.tensor(ids, dtype=D.int64, device=self.device))
        return out.last_hidden_state.to(self.dtype)

    def txt2img(self, prompt, negative_prompt="", **kwargs):
        """__call__ from text: the negative prompt ("" by default, as diffusers) is the unconditional half
        of classifier-free guidance."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        neg = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(neg) != len(prompts):
            raise ValueError(f"{len(neg)} negative prompts for {len(prompts)} prompts")
        return self(self.encode_prompt(prompts), self.encode_prompt(neg), **kwargs)

    def decode(self, latents):
        """Latents -> image (B, 3, H, W) in [0, 1]."""
        img = self.vae.decode(latents / self.vae.config.scaling_factor)
        return (img / 2 + 0.5).clamp(0, 1)

    def __call__(self, prompt_embeds, negative_prompt_embeds=None, num_inference_steps: int = 50,
                 guidance_scale: float = 7.5, latents=None, height=None, width=None, seed: int | None = None,
                 output_type: str = "uint8", show_progress: bool = True, capture=None):
        """Text embeddings -> images: (B, H, W, 3) uint8 (output_type "uint8", what a PNG holds) or float
        in [0, 1] ("float", diffusers' output_type "np"). capture: the UNet loop's (see unet_forward)."""
        if output_type not in ("uint8", "float"):
            raise ValueError(f"output_type must be 'uint8' or 'float', got {output_type!r}")
        x = self.denoise(prompt_embeds, negative_prompt_embeds, num_inference_steps, guidance_scale, latents,
                         height, width, seed, show_progress, capture)
        img = self.decode(x).permute(0, 2, 3, 1).to(D.float32).numpy()  # (B, H, W, 3)
        return img if output_type == "float" else (img * 255).round().astype(np.uint8)
