"""txt2img on the engine against diffusers' own StableDiffusionPipeline over the same components (tiny
UNet and VAE with the same random weights, SD 1.5's scheduler config), the same text embeddings and
the same initial latents: the final images must agree."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers", reason="pip install diffusers==0.42.1 (the test extra)")

import engine  # noqa: E402
from engine.models.stable_diffusion import schedulers as S  # noqa: E402
from engine.models.stable_diffusion.autoencoder_kl import AutoencoderKL  # noqa: E402
from engine.models.stable_diffusion.pipeline import StableDiffusionPipeline  # noqa: E402
from engine.models.stable_diffusion.unet_2d_condition import UNet2DConditionModel  # noqa: E402
from test_sd_models import _build, _randomised  # noqa: E402

UNET, VAE = dict(UNet2DConditionModel.PRESETS["tiny"]), dict(AutoencoderKL.PRESETS["tiny"])
REF_SCHEDULERS = {
    "ddim": lambda: diffusers.DDIMScheduler(**S.PRESETS["sd-1.5"]),
    "euler": lambda: diffusers.EulerDiscreteScheduler(**{k: v for k, v in S.PRESETS["sd-1.5"].items()
                                                          if k not in ("clip_sample", "set_alpha_to_one")}),
}


@pytest.fixture(scope="module")
def components():
    ru, rv = _randomised(diffusers.UNet2DConditionModel(**UNET), 1), _randomised(diffusers.AutoencoderKL(**VAE), 2)
    return ru, rv, _build(UNet2DConditionModel, UNET, ru), _build(AutoencoderKL, VAE, rv)


def _inputs(batch=1, hw=8, seed=0):
    rng = np.random.default_rng(seed)
    pe = rng.standard_normal((batch, 7, 32)).astype(np.float32)
    ne = rng.standard_normal((batch, 7, 32)).astype(np.float32)
    lat = rng.standard_normal((batch, 4, hw, hw)).astype(np.float32)
    return pe, ne, lat


@pytest.mark.parametrize("kind", ["ddim", "euler"])
def test_txt2img_matches_diffusers(components, kind):
    ru, rv, eu, ev = components
    ref = diffusers.StableDiffusionPipeline(vae=rv, text_encoder=None, tokenizer=None, unet=ru,
                                            scheduler=REF_SCHEDULERS[kind](), safety_checker=None,
                                            feature_extractor=None, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    pipe = StableDiffusionPipeline(eu, ev, S.scheduler_from_config(S.PRESETS["sd-1.5"], kind))
    pe, ne, lat = _inputs()
    with torch.no_grad():
        want = ref(prompt_embeds=torch.from_numpy(pe), negative_prompt_embeds=torch.from_numpy(ne),
                   latents=torch.from_numpy(lat), num_inference_steps=4, guidance_scale=7.5, height=16, width=16,
                   output_type="np").images
    got = pipe(pe, ne, num_inference_steps=4, guidance_scale=7.5, latents=lat, output_type="float",
               show_progress=False)
    assert got.shape == want.shape == (1, 16, 16, 3)
    assert np.abs(got - want).max() < 1e-4  # seen: 2.4e-6 (ddim), 2.5e-6 (euler)
    u8 = pipe(pe, ne, num_inference_steps=4, latents=lat, show_progress=False)
    assert u8.dtype == np.uint8 and np.abs(u8.astype(int) - np.round(want * 255)).max() <= 1


def test_no_guidance_and_seed(components):
    _, _, eu, ev = components
    pipe = StableDiffusionPipeline(eu, ev, S.DDIMScheduler.from_preset("sd-1.5"))
    pe, _, _ = _inputs(batch=2)
    a = pipe(pe, num_inference_steps=1, guidance_scale=1.0, seed=3, height=16, width=16, show_progress=False)
    b = pipe(pe, num_inference_steps=1, guidance_scale=1.0, seed=3, height=16, width=16, show_progress=False)
    assert a.shape == (2, 16, 16, 3) and np.array_equal(a, b)


def test_progress_bar(components, capsys):
    pytest.importorskip("tqdm")
    _, _, eu, ev = components
    pipe = StableDiffusionPipeline(eu, ev, S.EulerDiscreteScheduler.from_preset("sd-1.5"))
    pe, ne, lat = _inputs()
    pipe.denoise(pe, ne, num_inference_steps=2, latents=lat)
    err = capsys.readouterr().err
    assert "denoise" in err and "2/2" in err


def test_pipeline_errors(components, tmp_path):
    _, _, eu, ev = components
    pipe = StableDiffusionPipeline(eu, ev, S.DDIMScheduler.from_preset("sd-1.5"))
    pe, ne, lat = _inputs()
    with pytest.raises(ValueError, match="needs negative_prompt_embeds"):
        pipe.denoise(pe, num_inference_steps=1, latents=lat)
    with pytest.raises(ValueError, match=r"prompt_embeds must be \(batch, tokens, 32\)"):
        pipe.denoise(np.zeros((1, 7, 16), np.float32), num_inference_steps=1)
    with pytest.raises(ValueError, match=r"latents must be \(1, 4, 8, 8\)"):
        pipe.denoise(pe, ne, num_inference_steps=1, latents=np.zeros((1, 4, 4, 4), np.float32), height=16, width=16)
    with pytest.raises(ValueError, match="multiples of 2"):
        pipe.denoise(pe, ne, num_inference_steps=1, height=15, width=16)
    with pytest.raises(FileNotFoundError, match="missing unet, vae, scheduler/scheduler_config.json"):
        StableDiffusionPipeline.from_pretrained(tmp_path)


def test_from_pretrained_dir(components, tmp_path):
    """A diffusers directory written by diffusers itself loads into the engine pipeline."""
    ru, rv, _, _ = components
    ref = diffusers.StableDiffusionPipeline(vae=rv, text_encoder=None, tokenizer=None, unet=ru,
                                            scheduler=diffusers.PNDMScheduler(skip_prk_steps=True, **{
                                                k: v for k, v in S.PRESETS["sd-1.5"].items() if k != "clip_sample"}),
                                            safety_checker=None, feature_extractor=None,
                                            requires_safety_checker=False)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path, scheduler="euler")
    assert isinstance(pipe.scheduler, S.EulerDiscreteScheduler) and pipe.scheduler.config.steps_offset == 1
    pe, ne, lat = _inputs()
    assert pipe(pe, ne, num_inference_steps=1, latents=lat, show_progress=False).shape == (1, 16, 16, 3)


# ---- taper txt2img ------------------------------------------------------------------------------------------
def _cli(*argv):
    from taper.cli import main
    return main(["txt2img", *map(str, argv)])


def test_cli_writes_png(tmp_path, capsys):
    PIL = pytest.importorskip("PIL.Image")
    out = tmp_path / "a.png"
    assert _cli("--model", "sd:tiny", "--random-embeds", "--steps", 1, "--out", out, "--no-progress") == 0
    img = np.asarray(PIL.open(out))
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8 and img.std() > 0
    assert "wrote" in capsys.readouterr().out
    # the same seed, embeddings from files (.npy, and .safetensors with the negative inside): same image
    from engine.io.safetensors import save_file
    rng = np.random.default_rng(0)
    pe, ne = (rng.standard_normal((1, 77, 32)).astype(np.float32) for _ in range(2))
    np.save(tmp_path / "p.npy", pe)
    np.save(tmp_path / "n.npy", ne)
    save_file({"prompt_embeds": pe, "negative_prompt_embeds": ne}, tmp_path / "e.safetensors")
    for extra in (["--prompt-embeds", tmp_path / "p.npy", "--negative-embeds", tmp_path / "n.npy"],
                  ["--prompt-embeds", tmp_path / "e.safetensors"]):
        out2 = tmp_path / "b.png"
        assert _cli("--model", "sd:tiny", *extra, "--steps", 1, "--out", out2, "--no-progress") == 0
        assert np.array_equal(np.asarray(PIL.open(out2)), img)


@pytest.mark.parametrize("argv, msg", [
    (["--model", "sd:tiny", "--prompt", "a cat"], r"text prompts need text_encoder/ and tokenizer/ \(tokenizer.json, or vocab.json"),
    (["--model", "sd:huge", "--random-embeds"], "no Stable Diffusion preset 'huge'"),
    (["--model", "{tmp}/missing", "--random-embeds"], "model directory not found"),
    (["--model", "{tmp}", "--random-embeds"], "missing unet, vae, scheduler/scheduler_config.json"),
    (["--model", "sd:tiny", "--prompt-embeds", "{tmp}/none.npy"], "embeddings file not found"),
    (["--model", "sd:tiny", "--prompt-embeds", "{tmp}/p.npy"], "guidance needs negative embeddings"),
    (["--model", "sd:tiny", "--prompt-embeds", "{tmp}/bad.npy", "--guidance-scale", "1"],
     r"prompt_embeds must be \(batch, tokens, 32\)"),
    (["--model", "sd:tiny", "--random-embeds", "--steps", "0"], "--steps must be at least 1"),
])
def test_cli_errors(tmp_path, capsys, argv, msg):
    np.save(tmp_path / "p.npy", np.zeros((1, 7, 32), np.float32))
    np.save(tmp_path / "bad.npy", np.zeros((1, 7, 16), np.float32))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert _cli(*argv, "--out", tmp_path / "x.png", "--no-progress") == 2
    err = capsys.readouterr().err
    assert err.startswith("taper txt2img: ") and len(err.strip().splitlines()) == 1
    import re
    assert re.search(msg, err), err
    assert not (tmp_path / "x.png").exists()


def test_generate_refuses_a_unet(capsys):
    from taper.cli import main
    assert main(["generate", "--model", "UNet2DConditionModel:tiny", "--ids", "1,2"]) == 2
    assert "is a UNet2DConditionModel, not a language model" in capsys.readouterr().err


# ---- text: CLIP's text tower and the tokenizer, end to end from a diffusers directory -------------------------
WORDS = ["a", "red", "cat", "on", "the", "moon", "photo", "of", "blue", "dog"]


def _clip_parts():
    """A word-level tokenizer (tokenizers) with CLIP's special tokens and template, and a tiny
    transformers CLIPTextModel with random weights."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "[UNK]": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<|startoftext|> $A <|endoftext|>",
                                                       special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)])
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=77, pad_token="<|endoftext|>",
                                                  bos_token="<|startoftext|>", eos_token="<|endoftext|>")
    torch.manual_seed(3)
    cfg = transformers.CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                                      pad_token_id=1)
    return hf_tok, _randomised(transformers.CLIPTextModel(cfg), 4)


@pytest.mark.parametrize("kind", ["ddim", "euler"])
def test_txt2img_from_text_matches_diffusers(components, tmp_path, kind):
    ru, rv, _, _ = components
    hf_tok, hf_clip = _clip_parts()
    ref = diffusers.StableDiffusionPipeline(vae=rv, text_encoder=hf_clip, tokenizer=hf_tok, unet=ru,
                                            scheduler=REF_SCHEDULERS[kind](), safety_checker=None,
                                            feature_extractor=None, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    ref.save_pretrained(tmp_path, safe_serialization=True)  # unet/ vae/ text_encoder/ tokenizer/ scheduler/
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path, scheduler=kind)
    assert pipe.text_encoder is not None and pipe.tokenizer is not None
    _, _, lat = _inputs()
    prompts, negs = ["a red cat on the moon", "photo of a blue dog"], ["", "moon"]
    lat2 = np.concatenate([lat, lat[:, ::-1]])
    with torch.no_grad():
        want_e = ref.encode_prompt(prompts, "cpu", 1, True, negs)
        want = ref(prompts, negative_prompt=negs, latents=torch.from_numpy(lat2.copy()), num_inference_steps=3,
                   guidance_scale=7.5, output_type="np").images
    emb = pipe.encode_prompt(prompts).numpy()
    assert emb.shape == (2, 77, 32) and np.abs(emb - want_e[0].numpy()).max() < 1e-5
    assert np.abs(pipe.encode_prompt(negs).numpy() - want_e[1].numpy()).max() < 1e-5
    got = pipe.txt2img(prompts, negs, num_inference_steps=3, guidance_scale=7.5, latents=lat2, output_type="float",
                       show_progress=False)
    assert got.shape == want.shape == (2, 16, 16, 3)
    assert np.abs(got - want).max() < 1e-4


def test_cli_prompt(components, tmp_path, capsys):
    PIL = pytest.importorskip("PIL.Image")
    ru, rv, _, _ = components
    hf_tok, hf_clip = _clip_parts()
    diffusers.StableDiffusionPipeline(vae=rv, text_encoder=hf_clip, tokenizer=hf_tok, unet=ru,
                                      scheduler=REF_SCHEDULERS["ddim"](), safety_checker=None, feature_extractor=None,
                                      requires_safety_checker=False).save_pretrained(tmp_path / "sd")
    out = tmp_path / "cat.png"
    assert _cli("--model", tmp_path / "sd", "--prompt", "a red cat", "--steps", 1, "--out", out, "--no-progress") == 0
    assert np.asarray(PIL.open(out)).shape == (32, 32, 3)  # unet sample_size 16 x the VAE scale 2
    assert _cli("--model", "sd:tiny", "--prompt", "a red cat", "--steps", 1, "--out", out, "--no-progress") == 2
    assert "text prompts need text_encoder/ and tokenizer/ (tokenizer.json, or vocab.json" in capsys.readouterr().err
