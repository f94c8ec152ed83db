"""`taper txt2img --model DIR --prompt TEXT --out image.png`: Stable Diffusion on the engine.

    taper txt2img --model ./sd-1.5 --prompt "a photo of a cat" --steps 25 --seed 0 --out cat.png
    taper txt2img --model ./sd-1.5 --prompt-embeds cat.safetensors --out cat.png   # CLIP states given
    taper txt2img --model sd:tiny --random-embeds --steps 4 --out noise.png      # random weights

--model is a diffusers directory (unet/, vae/, scheduler/scheduler_config.json) or a preset
sd:tiny / sd:sd-1.5 with random weights. --prompt (and --negative-prompt, "" by default) needs the
directory's text_encoder/ (CLIP's text tower, engine/models/clip_text.py) and tokenizer/ (tokenizer.json,
or CLIP's vocab.json + merges.txt).
Text may also enter as embeddings (CLIP's last hidden state: (batch, tokens, cross_attention_dim)) from
a .npy file or a .safetensors file holding prompt_embeds and optionally negative_prompt_embeds;
--random-embeds draws both from the seed (to try a preset or time the loop). The denoising loop shows
a progress bar; the PNG is written atomically. On CUDA the UNet is captured as a CUDA graph once per
(batch, latent size) during the first steps and the other steps replay it (--no-capture: eager kernels).
Exit codes: 0 done, 2 bad usage, an unreadable model or input file.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="a diffusers Stable Diffusion directory, or sd:tiny / sd:sd-1.5 (random weights)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt-embeds", help="text embeddings: .npy (batch, tokens, dim) or .safetensors "
                                              "with prompt_embeds [and negative_prompt_embeds]")
    src.add_argument("--random-embeds", action="store_true", help="random text embeddings from --seed")
    src.add_argument("--prompt", help="prompt text (needs text_encoder/ and tokenizer/ in --model)")
    parser.add_argument("--negative-prompt", default="", help="the unconditional prompt of guidance (default '')")
    parser.add_argument("--negative-embeds", help=".npy embeddings of the negative (usually empty) prompt")
    parser.add_argument("--out", required=True, help="PNG file to write (several images: NAME-0.png, NAME-1.png...)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance (1: off)")
    parser.add_argument("--scheduler", default="ddim", choices=["ddim", "euler"])
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: ENGINE_DEVICE or cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="cast weights on load (default: as stored)")
    parser.add_argument("--variant", default=None, help="weight files variant of --model, e.g. fp16 "
                        "(diffusion_pytorch_model.fp16.safetensors), as diffusers' variant=")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument("--no-capture", dest="capture", action="store_const", const=False, default=None,
                        help="launch the UNet's kernels from the host instead of replaying a CUDA graph captured "
                             "once per (batch, latent size) (as taper generate's; a graph's products run other "
                             "kernels than cuBLAS: the image agrees to rounding)")


def _load_embeds(path: str, key: str, required: bool = True):
    """An embeddings array from .npy, or the tensor `key` of a .safetensors (None when absent and not
    required)."""
    import numpy as np
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"embeddings file not found: {p}")
    if p.suffix == ".npy":
        try:
            return np.load(p, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{p}: not a readable .npy array ({e})") from None
    if p.suffix != ".safetensors":
        raise ValueError(f"{p}: embeddings must be a .npy or .safetensors file")
    from engine.io.safetensors import open_checkpoint
    f = open_checkpoint(p)
    if key not in f.keys():
        if not required:
            return None
        raise KeyError(f"{p} has no tensor {key!r} (it has: {', '.join(sorted(f.keys())) or 'none'})")
    return np.asarray(f.get_numpy(key))


def _pipeline(args, dtype):
    from engine.models.stable_diffusion.pipeline import StableDiffusionPipeline
    from engine.models.stable_diffusion.unet_2d_condition import PRESETS
    model = args.model
    if model.startswith("sd:"):
        preset = model[3:]
        if preset not in PRESETS:
            raise ValueError(f"no Stable Diffusion preset {preset!r} (known: {', '.join('sd:' + p for p in PRESETS)})")
        return StableDiffusionPipeline.from_preset(preset, args.scheduler, dtype=dtype, device=args.device)
    return StableDiffusionPipeline.from_pretrained(model, args.scheduler, dtype=dtype, device=args.device,
                                                   variant=args.variant)


def _write_png(image, path: Path) -> None:
    import io

    from PIL import Image

    from engine.io.atomic import atomic_write_bytes
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def run(args) -> int:
    import numpy as np

    import engine
    try:
        if args.steps < 1:
            raise ValueError(f"--steps must be at least 1, got {args.steps}")
        out = Path(args.out)
        if out.suffix.lower() != ".png":
            raise ValueError(f"--out must name a .png file, got {out}")
        if not out.parent.is_dir():
            raise FileNotFoundError(f"--out: directory {out.parent} does not exist")
        try:
            import PIL  # noqa: F401  (checked before minutes of sampling)
        except ImportError:
            raise ImportError("taper txt2img writes PNGs with Pillow: pip install pillow") from None
        pipe = _pipeline(args, getattr(engine, args.dtype) if args.dtype else None)
        dim = pipe.unet.config.cross_attention_dim
        if args.prompt is not None:
            pe = pipe.encode_prompt([args.prompt])
            ne = pipe.encode_prompt([args.negative_prompt]) if args.guidance_scale > 1 else None
        elif args.random_embeds:
            rng = np.random.default_rng(args.seed)
            pe, ne = (rng.standard_normal((1, 77, dim)).astype(np.float32) for _ in range(2))
        else:
            pe = _load_embeds(args.prompt_embeds, "prompt_embeds")
            ne = _load_embeds(args.negative_embeds, "negative_prompt_embeds") if args.negative_embeds else (
                _load_embeds(args.prompt_embeds, "negative_prompt_embeds", required=False)
                if args.prompt_embeds.endswith(".safetensors") else None)
            if ne is None and args.guidance_scale > 1:
                raise ValueError("guidance needs negative embeddings: --negative-embeds FILE, a "
                                 "negative_prompt_embeds tensor in the .safetensors, or --guidance-scale 1")
        t0 = time.perf_counter()
        images = pipe(pe, ne, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                      height=args.height, width=args.width, seed=args.seed, show_progress=args.progress,
                      capture=args.capture)
        dt = time.perf_counter() - t0
    except (OSError, ValueError, KeyError, NotImplementedError, RuntimeError, ImportError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"taper txt2img: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    paths = [out] if len(images) == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(len(images))]
    for img, p in zip(images, paths):
        _write_png(img, p)
    h, w = images.shape[1:3]
    print(f"wrote {', '.join(map(str, paths))} ({w}x{h}, {args.steps} {args.scheduler} steps, "
          f"guidance {args.guidance_scale}, seed {args.seed}) in {dt:.1f} s")
    return 0
