"""Stable Diffusion components against diffusers (the oracle), built offline from tiny configs with
random weights (biases and norm weights perturbed too, so every parameter is exercised), fp32."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers", reason="pip install diffusers==0.42.1 (the test extra)")

import engine  # noqa: E402
from engine.nn.module import StateDictError  # noqa: E402
from engine.nn.varbuilder import VarBuilder  # noqa: E402
from engine.models.stable_diffusion.autoencoder_kl import AutoencoderKL  # noqa: E402
from engine.models.stable_diffusion.unet_2d_condition import UNet2DConditionModel  # noqa: E402


def _randomised(ref, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            if p.ndim == 1:  # diffusers inits norms to 1 and biases to 0: move them
                p.add_(torch.randn_like(p) * 0.1)
    return ref.eval()


def _state(ref) -> dict:
    return {k: v.detach().numpy() for k, v in ref.state_dict().items()}


def _build(cls, cfg: dict, ref):
    with VarBuilder.from_tensors(_state(ref)).collect() as vb:
        return cls(cls.Config.from_dict(cfg), vb)


def _close(got, want, atol=1e-4):
    got = got.numpy() if hasattr(got, "numpy") and not isinstance(got, np.ndarray) else got
    want = want.detach().numpy() if hasattr(want, "detach") else want
    assert got.shape == want.shape
    err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
    assert err < atol, f"max relative error {err}"
    return err


# ---- AutoencoderKL --------------------------------------------------------------------------------------
VAE_TINY = dict(AutoencoderKL.PRESETS["tiny"])


@pytest.fixture(scope="module")
def vae_pair():
    ref = _randomised(diffusers.AutoencoderKL(**VAE_TINY))
    return ref, _build(AutoencoderKL, VAE_TINY, ref)


@pytest.mark.parametrize("batch", [1, 2])
def test_vae_decode(vae_pair, batch):
    ref, ours = vae_pair
    z = np.random.default_rng(batch).standard_normal((batch, 4, 8, 6)).astype(np.float32)
    with torch.no_grad():
        want = ref.decode(torch.from_numpy(z)).sample
    out = ours.decode(engine.tensor(z))
    assert out.shape == (batch, 3, 16, 12) and out.dtype is engine.float32
    _close(out, want, 2e-5)


def test_vae_encode(vae_pair):
    ref, ours = vae_pair
    x = np.random.default_rng(3).uniform(-1, 1, (2, 3, 32, 16)).astype(np.float32)
    with torch.no_grad():
        d = ref.encode(torch.from_numpy(x)).latent_dist
    mean, logvar = ours.encode(engine.tensor(x))
    _close(mean, d.mean, 2e-5)
    _close(logvar, d.logvar, 2e-5)
    with torch.no_grad():
        rt = ref(torch.from_numpy(x), sample_posterior=False).sample
    _close(ours(engine.tensor(x)), rt, 2e-5)
    s = ours.sample_latents(engine.tensor(x), generator=engine.manual_seed(0))
    assert s.shape == mean.shape and np.isfinite(s.numpy()).all()


def test_vae_from_pretrained_dir(tmp_path, vae_pair):
    ref, _ = vae_pair
    ref.save_pretrained(tmp_path / "vae", safe_serialization=True)  # diffusers' own directory layout
    from engine.models.stable_diffusion import load_component
    m = load_component(tmp_path / "vae")
    assert isinstance(m, AutoencoderKL)
    z = np.random.default_rng(0).standard_normal((1, 4, 4, 4)).astype(np.float32)
    with torch.no_grad():
        want = ref.decode(torch.from_numpy(z)).sample
    _close(m.decode(engine.tensor(z)), want, 2e-5)


def test_vae_errors(vae_pair):
    _, ours = vae_pair
    with pytest.raises(ValueError, match=r"decode: expected \(B, 4, H, W\), got \(1, 3, 8, 8\)"):
        ours.decode(engine.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="multiples of 2"):
        ours.encode(engine.zeros(1, 3, 9, 8))
    state = _state(vae_pair[0])
    del state["decoder.conv_in.bias"]
    state["extra.weight"] = np.zeros(2, np.float32)
    with pytest.raises(StateDictError, match=r"(?s)missing +decoder\.conv_in\.bias \(64,\).*unexpected extra\.weight"):
        with VarBuilder.from_tensors(state).collect() as vb:
            AutoencoderKL(AutoencoderKL.Config.from_dict(VAE_TINY), vb)
    with pytest.raises(NotImplementedError, match="DownEncoderBlock2D"):
        AutoencoderKL.Config.from_dict({**VAE_TINY, "down_block_types": ["DownBlock2D"] * 2})


def _sd15_keys_match(cls, ref_cls):
    """The SD-1.5 preset builds exactly diffusers' state dict (names and shapes): diffusers on the meta
    device, the engine over lazily zeroed arrays (calloc: no memory touched)."""
    preset = cls.PRESETS["sd-1.5"]
    with torch.device("meta"):
        ref = ref_cls(**preset)
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    with VarBuilder.from_tensors({k: np.zeros(s, np.float32) for k, s in want.items()}).collect() as vb:
        m = cls(cls.Config.from_dict(preset), vb)  # strict: any missing or unused key raises
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == want
    return sum(int(np.prod(s)) for s in want.values())


def test_vae_sd15_preset_shapes():
    assert _sd15_keys_match(AutoencoderKL, diffusers.AutoencoderKL) == 83_653_863


# ---- UNet2DConditionModel ---------------------------------------------------------------------------------
UNET_TINY = dict(UNet2DConditionModel.PRESETS["tiny"])


def _unet_pair(cfg):
    ref = _randomised(diffusers.UNet2DConditionModel(**cfg))
    return ref, _build(UNet2DConditionModel, cfg, ref)


@pytest.fixture(scope="module")
def unet_pair():
    return _unet_pair(UNET_TINY)


def _unet_close(pair, batch, hw, t, ctx_len=7, ctx_dim=32, atol=2e-5):
    ref, ours = pair
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 4) + hw).astype(np.float32)
    c = rng.standard_normal((batch, ctx_len, ctx_dim)).astype(np.float32)
    tt = torch.tensor(t) if isinstance(t, np.ndarray) else t
    with torch.no_grad():
        want = ref(torch.from_numpy(x), tt, torch.from_numpy(c)).sample
    te = engine.tensor(t) if isinstance(t, np.ndarray) else t
    return _close(ours(engine.tensor(x), te, engine.tensor(c)), want, atol)


@pytest.mark.parametrize("batch", [1, 2])
def test_unet(unet_pair, batch):
    _unet_close(unet_pair, batch, (16, 16), 981)


@pytest.mark.parametrize("t", [0, 1.0, 999, np.array([5.0, 700.0], np.float32), np.array([37], np.int64)])
def test_unet_timesteps(unet_pair, t):
    _unet_close(unet_pair, 2, (8, 8), t)


def test_unet_odd_size(unet_pair):
    _unet_close(unet_pair, 1, (9, 7), 500)  # the upsampler meets the skip's size, as diffusers' upsample_size


def test_unet_variants():
    """use_linear_projection (SD 2.x), heads per block, two transformer layers, three levels."""
    cfg = dict(UNET_TINY, use_linear_projection=True, attention_head_dim=(4, 8), transformer_layers_per_block=2)
    _unet_close(_unet_pair(cfg), 1, (8, 8), 250)
    cfg = dict(UNET_TINY, block_out_channels=(32, 32, 64), down_block_types=("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2, cross_attention_dim=24)
    _unet_close(_unet_pair(cfg), 1, (8, 8), 10, ctx_dim=24)


def test_unet_errors(unet_pair):
    _, ours = unet_pair
    x, c = engine.zeros(1, 4, 8, 8), engine.zeros(1, 7, 32)
    with pytest.raises(ValueError, match=r"sample must be \(B, 4, h, w\), got \(1, 3, 8, 8\)"):
        ours(engine.zeros(1, 3, 8, 8), 1, c)
    with pytest.raises(ValueError, match=r"encoder_hidden_states must be \(1, S, 32\), got \(1, 7, 16\)"):
        ours(x, 1, engine.zeros(1, 7, 16))
    with pytest.raises(ValueError, match="3 timesteps for a batch of 1"):
        ours(x, engine.tensor([1.0, 2.0, 3.0]), c)
    with pytest.raises(NotImplementedError, match="class_embed_type='timestep'"):
        UNet2DConditionModel.Config.from_dict({**UNET_TINY, "class_embed_type": "timestep"})
    with pytest.raises(NotImplementedError, match="UpBlock2D, CrossAttnUpBlock2D|CrossAttnUpBlock2D, UpBlock2D"):
        UNet2DConditionModel.Config.from_dict({**UNET_TINY, "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]})


def test_unet_sd15_preset_shapes():
    assert _sd15_keys_match(UNet2DConditionModel, diffusers.UNet2DConditionModel) == 859_520_964


def test_registry_picks_by_class_name(tmp_path, unet_pair):
    from engine import models
    ref, _ = unet_pair
    ref.save_pretrained(tmp_path / "unet", safe_serialization=True)
    m = models.from_pretrained(tmp_path / "unet")
    assert isinstance(m, UNet2DConditionModel)
    assert models.presets()["UNet2DConditionModel"] == ["tiny", "sd-1.5"]


# ---- taper verify: per-layer reports through impls ----------------------------------------------------------
@pytest.mark.parametrize("source, layers", [("UNet2DConditionModel:tiny", 150), ("AutoencoderKL:tiny", 80)])
def test_verify_per_layer(source, layers):
    from migration.verify_impls import verify_impls
    rep = verify_impls(source, tol_scale=2.0)  # GroupNorm after random convs amplifies fp32 rounding ~2x
    assert rep.passed, rep.first_divergence
    assert len(rep.layers) > layers  # every module diffusers and the engine share, tapped
    assert "engine hand route" in rep.route


def test_verify_cli_float16(capsys):
    from taper.cli import main
    assert main(["verify", "UNet2DConditionModel:tiny", "--dtype", "float16"]) == 0
    out = capsys.readouterr().out
    assert "verdict: PASS" in out and "float32 truth; torch float16 as yardstick" in out


@pytest.mark.cuda
@pytest.mark.parametrize("source", ["UNet2DConditionModel:tiny", "AutoencoderKL:tiny"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_verify_on_cuda(source, dtype):
    """The engine on the GPU (cupy backend: im2col convs, composed group norms) against diffusers on the
    GPU; float16 judged against torch float16's own error from the float32 truth."""
    pytest.importorskip("torch").cuda.is_available() or pytest.skip("torch sees no GPU")
    from migration.verify_impls import verify_impls
    rep = verify_impls(source, dtype=dtype, device="cuda", tol_scale=2.0)
    assert rep.passed, rep.first_divergence
