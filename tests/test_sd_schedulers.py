"""The engine's DDIM and Euler discrete schedulers against diffusers' (the oracle): tables and step().

Bit-equality notes: torch's CPU linspace and sqrt are vectorised (AVX2/AVX-512) and not always
correctly rounded, so betas and sigmas built from scratch agree to a few fp32 ulps; with the same
betas given to both (trained_betas), alphas_cumprod is bit-equal and sigmas within one ulp. Integer
timesteps are exact.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers", reason="pip install diffusers==0.42.1 (the test extra)")

import engine  # noqa: E402
from engine.models.stable_diffusion import schedulers as S  # noqa: E402

SD = S.PRESETS["sd-1.5"]
SPACINGS = ("leading", "trailing", "linspace")
EULER_KEYS = {k: v for k, v in SD.items() if k not in ("clip_sample", "set_alpha_to_one")}


def _ulps(a, b) -> int:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return int(np.max(np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))))


def _pair(kind, **kw):
    if kind == "ddim":
        return diffusers.DDIMScheduler(**{**SD, **kw}), S.DDIMScheduler.from_config(SD, **kw)
    return diffusers.EulerDiscreteScheduler(**{**EULER_KEYS, **kw}), S.EulerDiscreteScheduler.from_config(SD, **kw)


def test_betas_and_alphas_cumprod():
    ref, ours = _pair("ddim")
    assert _ulps(ref.betas.numpy(), ours.betas) <= 4
    assert _ulps(ref.alphas_cumprod.numpy(), ours.alphas_cumprod) <= 2
    tb = ref.betas.numpy().tolist()
    ref, ours = _pair("ddim", trained_betas=tb)
    assert np.array_equal(ref.alphas_cumprod.numpy(), ours.alphas_cumprod)  # fp64-accumulated cumprod


def test_linear_schedule():
    ref = diffusers.DDIMScheduler(beta_schedule="linear")
    assert _ulps(ref.betas.numpy(), S.DDIMScheduler(beta_schedule="linear").betas) <= 2


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("n", [1, 4, 7, 50, 999])
def test_ddim_timesteps(spacing, n):
    ref, ours = _pair("ddim", timestep_spacing=spacing)
    ref.set_timesteps(n)
    assert ours.set_timesteps(n).dtype == np.int64
    assert np.array_equal(ref.timesteps.numpy(), ours.timesteps)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("n", [1, 4, 7, 50, 999])
def test_euler_timesteps_and_sigmas(spacing, n):
    tb = diffusers.DDIMScheduler(**SD).betas.numpy().tolist()
    ref, ours = _pair("euler", timestep_spacing=spacing, trained_betas=tb)
    ref.set_timesteps(n)
    ours.set_timesteps(n)
    assert np.array_equal(ref.timesteps.numpy(), ours.timesteps)
    assert _ulps(ref.sigmas.numpy(), ours.sigmas) <= 1
    assert ours.init_noise_sigma == pytest.approx(float(ref.init_noise_sigma), rel=1e-6)


def _run(kind, spacing, pred, dtype, on_engine, steps=5, **kw):
    """Both schedulers over the same model outputs; returns the max relative difference per step."""
    ref, ours = _pair(kind, timestep_spacing=spacing, prediction_type=pred, **kw)
    ref.set_timesteps(steps)
    ours.set_timesteps(steps)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 8, 8)).astype(dtype) * np.asarray(ours.init_noise_sigma, dtype)
    xr, xo = torch.from_numpy(x.copy()), (engine.tensor(x) if on_engine else x.copy())
    errs = []
    for i, t in enumerate(ours.timesteps):
        tr = ref.timesteps[i]
        assert float(tr) == float(t)
        m = rng.standard_normal(x.shape).astype(dtype)
        inr, ino = ref.scale_model_input(xr, tr), ours.scale_model_input(xo, t)
        ino = ino.numpy() if on_engine else ino
        # the state carries the earlier steps' rounding: judged as the steps are, against its largest value
        # (atol 1e-6 alone failed on an AMD EPYC box: 1.4e-6 at 0.034 in a state of magnitude 10, 1.4e-7 of it)
        np.testing.assert_allclose(ino, inr.numpy(), rtol=2e-6, atol=2e-6 * max(1.0, np.abs(inr.numpy()).max()))
        xr = ref.step(torch.from_numpy(m), tr, xr).prev_sample
        xo = ours.step(engine.tensor(m) if on_engine else m, t, xo)
        got = xo.numpy() if on_engine else xo
        assert got.dtype == xr.numpy().dtype
        errs.append(np.max(np.abs(got - xr.numpy())) / max(1.0, np.max(np.abs(xr.numpy()))))
    return max(errs)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
def test_ddim_step(spacing, pred):
    assert _run("ddim", spacing, pred, np.float32, on_engine=True) < 2e-6


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
def test_euler_step(spacing, pred):
    tb = diffusers.DDIMScheduler(**SD).betas.numpy().tolist()
    assert _run("euler", spacing, pred, np.float32, on_engine=True, trained_betas=tb) < 2e-6


def test_step_float64_and_numpy():
    assert _run("ddim", "leading", "epsilon", np.float64, on_engine=False) < 1e-6
    assert _run("ddim", "leading", "epsilon", np.float64, on_engine=True) < 1e-6


def test_ddim_clip_sample():
    assert _run("ddim", "leading", "epsilon", np.float32, on_engine=True, clip_sample=True) < 2e-6


def test_errors():
    s = S.DDIMScheduler.from_preset("sd-1.5")
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(np.zeros(2, np.float32), 1, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="num_inference_steps must be an int in 1..1000"):
        s.set_timesteps(1001)
    with pytest.raises(ValueError, match="timestep_spacing 'middle'"):
        S.DDIMScheduler(timestep_spacing="middle")
    with pytest.raises(NotImplementedError, match="squaredcos"):
        S.DDIMScheduler(beta_schedule="squaredcos_cap_v2")
    e = S.EulerDiscreteScheduler.from_preset("sd-1.5")
    e.set_timesteps(4)
    with pytest.raises(ValueError, match="not one of the scheduler's timesteps"):
        e.step(np.zeros(2, np.float32), 3.5, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="PNDMScheduler"):
        S.scheduler_from_config({"_class_name": "PNDMScheduler"})
    assert isinstance(S.scheduler_from_config({"_class_name": "PNDMScheduler"}, "euler"), S.EulerDiscreteScheduler)
