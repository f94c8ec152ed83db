"""Stable Diffusion, one file per component (diffusers' class names): unet_2d_condition.py
(UNet2DConditionModel), autoencoder_kl.py (AutoencoderKL), schedulers.py (DDIM, Euler discrete),
pipeline.py (txt2img with classifier-free guidance). The CLIP text encoder is models/clip_text.py.
"""


def load_component(path, dtype=None, device=None):
    """A diffusers component directory (unet/, vae/): config.json's _class_name picks the engine class
    through engine.models.REGISTRY (the same lookup as engine.models.from_pretrained)."""
    from engine.models import from_pretrained
    return from_pretrained(path, dtype=dtype, device=device)
