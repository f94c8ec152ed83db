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


def test_vae_sd15_preset_shapes():
    cfg = AutoencoderKL.Config.from_dict(AutoencoderKL.PRESETS["sd-1.5"])
    ref = diffusers.AutoencoderKL(**{k: v for k, v in AutoencoderKL.PRESETS["sd-1.5"].items()})
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    with VarBuilder.random(0).collect() as vb:  # shapes only: the random source records every request
        m = AutoencoderKL(cfg, vb)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == want
