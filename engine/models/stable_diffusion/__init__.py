"""Stable Diffusion, one file per component (diffusers' class names): unet_2d_condition.py
(UNet2DConditionModel), autoencoder_kl.py (AutoencoderKL), schedulers.py (DDIM, Euler discrete),
pipeline.py (txt2img with classifier-free guidance). The CLIP text encoder is models/clip_text.py.
"""
