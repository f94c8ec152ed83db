"""diffusers' weight file names in the engine's loader: sharded saves (diffusion_pytorch_model.safetensors.index.json
+ shards, from save_pretrained(max_shard_size=...)), and variants (fp16: diffusion_pytorch_model.fp16.safetensors,
diffusion_pytorch_model.safetensors.index.fp16.json), as diffusers' own from_pretrained(variant=) reads them."""
import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="diffusers (the oracle) needs torch")
diffusers = pytest.importorskip("diffusers", reason="pip install diffusers==0.42.1 (the test extra)")

import engine  # noqa: E402
from engine.io.safetensors import SafetensorsError, open_checkpoint  # noqa: E402
from engine.models.stable_diffusion.autoencoder_kl import AutoencoderKL  # noqa: E402
from engine.models.stable_diffusion.pipeline import StableDiffusionPipeline  # noqa: E402
from engine.models.stable_diffusion.unet_2d_condition import UNet2DConditionModel  # noqa: E402
from test_sd_models import _randomised  # noqa: E402

UNET = dict(UNet2DConditionModel.PRESETS["tiny"])


@pytest.fixture(scope="module")
def unet_ref():
    return _randomised(diffusers.UNet2DConditionModel(**UNET), 5)


def _unet_out(model, ref=False):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    ctx = rng.standard_normal((1, 7, UNET["cross_attention_dim"])).astype(np.float32)
    if ref:
        with torch.no_grad():
            return model(torch.from_numpy(x), 10.0, torch.from_numpy(ctx)).sample.float().numpy()
    return model(engine.tensor(x).to(model.dtype), 10.0, engine.tensor(ctx).to(model.dtype)).to(engine.float32).numpy()


def test_sharded_save_loads(unet_ref, tmp_path):
    unet_ref.save_pretrained(tmp_path, max_shard_size="30KB", safe_serialization=True)
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    shards = sorted(p.name for p in tmp_path.glob("diffusion_pytorch_model-*.safetensors"))
    assert index.is_file() and len(shards) > 3, shards
    assert set(json.loads(index.read_text())["weight_map"].values()) == set(shards)
    ours = UNet2DConditionModel.from_pretrained(tmp_path)
    err = np.abs(_unet_out(ours) - _unet_out(unet_ref, ref=True)).max()
    assert err < 1e-4, err
    n = len(open_checkpoint(tmp_path).keys())
    assert n == len(unet_ref.state_dict())


def test_variants(unet_ref, tmp_path):
    """fp32 plain files beside an fp16 sharded variant (as hub SD checkpoints ship both): the plain
    ones load by default, the fp16 ones with variant="fp16", equal to diffusers' variant="fp16" load."""
    unet_ref.save_pretrained(tmp_path, safe_serialization=True)
    copy.deepcopy(unet_ref).half().save_pretrained(tmp_path, variant="fp16", max_shard_size="30KB",
                                                   safe_serialization=True)
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.fp16.json").is_file()
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    plain = UNet2DConditionModel.from_pretrained(tmp_path)
    half = UNet2DConditionModel.from_pretrained(tmp_path, variant="fp16")
    assert plain.dtype is engine.float32 and half.dtype is engine.float16
    ref16 = diffusers.UNet2DConditionModel.from_pretrained(tmp_path, variant="fp16").float()
    got = UNet2DConditionModel.from_pretrained(tmp_path, variant="fp16", dtype=engine.float32)
    assert np.abs(_unet_out(got) - _unet_out(ref16, ref=True)).max() < 1e-4
    assert np.abs(_unet_out(plain) - _unet_out(unet_ref, ref=True)).max() < 1e-4
    with pytest.raises(SafetensorsError, match=r"no 'bf16' variant: none of model.safetensors.index.bf16.json"):
        UNet2DConditionModel.from_pretrained(tmp_path, variant="bf16")


def test_pipeline_dir_sharded_fp16(tmp_path):
    """A whole diffusers pipeline saved with variant fp16 and sharding; the engine pipeline loads it by
    variant and decodes the same image as diffusers' pipeline loaded the same way."""
    unet = _randomised(diffusers.UNet2DConditionModel(**UNET), 1)
    vae = _randomised(diffusers.AutoencoderKL(**AutoencoderKL.PRESETS["tiny"]), 2)
    sched = diffusers.DDIMScheduler()
    ref = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=sched,
                                            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ref.to(torch.float16).save_pretrained(tmp_path, variant="fp16", max_shard_size="40KB", safe_serialization=True)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors.index.fp16.json").is_file()
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path, variant="fp16", dtype=engine.float32)
    ref = diffusers.StableDiffusionPipeline(  # diffusers' own variant loads of the same directory
        vae=diffusers.AutoencoderKL.from_pretrained(tmp_path / "vae", variant="fp16").float(),
        unet=diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "unet", variant="fp16").float(),
        text_encoder=None, tokenizer=None, scheduler=sched, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(1)
    pe, ne = (rng.standard_normal((1, 7, UNET["cross_attention_dim"])).astype(np.float32) for _ in range(2))
    lat = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = ref(prompt_embeds=torch.from_numpy(pe), negative_prompt_embeds=torch.from_numpy(ne),
                   latents=torch.from_numpy(lat), num_inference_steps=2, height=16, width=16, output_type="np").images
    got = pipe(pe, ne, num_inference_steps=2, latents=lat, output_type="float", show_progress=False)
    assert np.abs(got - want).max() < 1e-4
