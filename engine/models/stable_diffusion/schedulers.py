"""DDIM and Euler discrete schedulers with diffusers' timestep and sigma tables.

    s = DDIMScheduler.from_config(read_config("sd/scheduler/scheduler_config.json"))
    s.set_timesteps(50)
    x = randn(...) * s.init_noise_sigma
    for t in s.timesteps:
        eps = unet(s.scale_model_input(x, t), t, text)
        x = s.step(eps, t, x)

The tables are host numpy (1000 entries); step() is plain arithmetic on the sample with host scalars,
so it works on engine Tensors (any device) and numpy arrays alike. Numerical quirks copied from
diffusers + torch:
- betas: torch.linspace in fp32 (torch's two-sided formula, `_linspace32`), squared for scaled_linear;
- alphas_cumprod: torch's CPU cumprod accumulates in fp64 and rounds each entry to fp32;
- every per-step scalar (sqrt(alpha_prod), sigma_hat, dt...) is an fp32 0-d value, as in diffusers.
Timesteps are exact. torch's vectorised CPU linspace and sqrt (AVX2/AVX-512) are not always correctly
rounded, so betas and sigmas agree with diffusers' to a few fp32 ulps (bit-equal alphas_cumprod and
one-ulp sigmas given the same betas); step() on the same inputs has matched bit for bit in the tests.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.models import config_from_dict

f32 = np.float32


def _linspace32(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace(start, end, steps, dtype=float32)'s scalar formula: the first half counts up from
    start, the second half down from end (both in fp32), so both ends are exact. (torch's vectorised
    loop differs from it by an ulp at some entries.)"""
    if steps == 1:
        return np.array([start], f32)
    step = (f32(end) - f32(start)) / f32(steps - 1)
    i = np.arange(steps)
    half = steps // 2
    up = f32(start) + step * i[:half].astype(f32)
    down = f32(end) - step * (steps - i[half:] - 1).astype(f32)
    return np.concatenate([up, down]).astype(f32)


@dataclass
class SchedulerConfig:
    """The keys of diffusers' scheduler_config.json that DDIM and Euler read (SD 1.5's values in
    PRESETS["sd-1.5"]; the dataclass defaults are diffusers' own)."""
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: list | None = None
    prediction_type: str = "epsilon"
    timestep_spacing: str | None = None  # None: the scheduler's own default (DDIM leading, Euler linspace)
    steps_offset: int = 0
    clip_sample: bool = True  # DDIM
    clip_sample_range: float = 1.0  # DDIM
    set_alpha_to_one: bool = True  # DDIM
    interpolation_type: str = "linear"  # Euler
    final_sigmas_type: str = "zero"  # Euler
    _class_name: str | None = None

    def __post_init__(self):
        if self.beta_schedule not in ("linear", "scaled_linear") and self.trained_betas is None:
            raise NotImplementedError(f"beta_schedule {self.beta_schedule!r} (the engine has linear and "
                                      "scaled_linear, or trained_betas)")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"prediction_type {self.prediction_type!r}: expected epsilon, v_prediction or sample")
        if self.timestep_spacing not in (None, "leading", "trailing", "linspace"):
            raise ValueError(f"timestep_spacing {self.timestep_spacing!r}: expected leading, trailing or linspace")


# SD 1.5's scheduler_config.json (a PNDMScheduler config that DDIM and Euler read as it is)
PRESETS = {
    "sd-1.5": dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                   steps_offset=1, clip_sample=False, set_alpha_to_one=False, prediction_type="epsilon"),
}


class _Scheduler:
    default_spacing = "leading"
    order = 1

    def __init__(self, config: SchedulerConfig | None = None, **kw):
        self.config = c = config or SchedulerConfig(**kw)
        if c.trained_betas is not None:
            self.betas = np.asarray(c.trained_betas, f32)
        elif c.beta_schedule == "linear":
            self.betas = _linspace32(c.beta_start, c.beta_end, c.num_train_timesteps)
        else:  # scaled_linear: the latent-diffusion schedule
            b = _linspace32(c.beta_start ** 0.5, c.beta_end ** 0.5, c.num_train_timesteps)
            self.betas = b * b
        self.alphas = f32(1.0) - self.betas
        self.alphas_cumprod = np.cumprod(self.alphas.astype(np.float64)).astype(f32)  # torch cpu: fp64 accumulator
        self.spacing = c.timestep_spacing or self.default_spacing
        self.num_inference_steps = None

    @classmethod
    def from_config(cls, d: dict | None = None, **overrides):
        """From diffusers' scheduler_config.json (as a dict); unknown keys ignored."""
        return cls(config_from_dict(SchedulerConfig, {**(d or {}), **overrides}))

    @classmethod
    def from_preset(cls, name: str = "sd-1.5", **overrides):
        if name not in PRESETS:
            raise ValueError(f"unknown scheduler preset {name!r}; known: {', '.join(PRESETS)}")
        return cls.from_config(PRESETS[name], **overrides)

    def _spaced(self, n: int, dtype) -> np.ndarray:
        """diffusers' timestep spacings (descending) in `dtype`; linspace rounds in fp64 for int
        timesteps (DDIM) and not at all for fp32 ones (Euler)."""
        c = self.config
        T = c.num_train_timesteps
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= T:
            raise ValueError(f"num_inference_steps must be an int in 1..{T} (num_train_timesteps), got {n!r}")
        if self.spacing == "linspace":
            if np.dtype(dtype).kind == "i":
                return np.linspace(0, T - 1, n).round()[::-1].astype(dtype)
            return np.linspace(0, T - 1, n, dtype=dtype)[::-1].copy()
        if self.spacing == "leading":
            r = T // n
            return (np.arange(0, n) * r).round()[::-1].astype(dtype) + dtype(c.steps_offset)
        r = T / n  # trailing
        return np.round(np.arange(T, 0, -r)).astype(dtype) - dtype(1)

    def _check(self):
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before stepping the scheduler")


class DDIMScheduler(_Scheduler):
    """diffusers.DDIMScheduler (eta = 0: deterministic). timesteps are int64."""

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        self.final_alpha_cumprod = f32(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0

    def set_timesteps(self, num_inference_steps: int):
        self.timesteps = self._spaced(num_inference_steps, np.int64)
        self.num_inference_steps = int(num_inference_steps)
        return self.timesteps

    def scale_model_input(self, sample, timestep=None):
        return sample

    def step(self, model_output, timestep, sample):
        """x_{t-1} from the model output at timestep t (diffusers' DDIM step with eta = 0)."""
        self._check()
        c = self.config
        t = int(timestep)
        prev = t - c.num_train_timesteps // self.num_inference_steps
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
        b_t = f32(1) - a_t
        sa_t, sb_t = float(np.sqrt(a_t)), float(np.sqrt(b_t))  # fp32 0-d scalars, as in diffusers
        if c.prediction_type == "epsilon":
            x0 = (sample - sb_t * model_output) / sa_t
            eps = model_output
        elif c.prediction_type == "sample":
            x0 = model_output
            eps = (sample - sa_t * x0) / sb_t
        else:  # v_prediction
            x0 = sa_t * sample - sb_t * model_output
            eps = sa_t * model_output + sb_t * sample
        if c.clip_sample:
            x0 = x0.clamp(-c.clip_sample_range, c.clip_sample_range) if hasattr(x0, "clamp") \
                else np.clip(x0, -c.clip_sample_range, c.clip_sample_range)
        direction = float(np.sqrt(f32(1) - a_prev)) * eps
        return float(np.sqrt(a_prev)) * x0 + direction


class EulerDiscreteScheduler(_Scheduler):
    """diffusers.EulerDiscreteScheduler (s_churn = 0, linear interpolation of sigmas, final sigma 0).
    timesteps are float32; the step index advances with each step() as in diffusers."""
    default_spacing = "linspace"

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        if self.config.interpolation_type != "linear" or self.config.final_sigmas_type != "zero":
            raise NotImplementedError("Euler with interpolation_type linear and final_sigmas_type zero only")
        ac = self.alphas_cumprod
        self.train_sigmas = np.sqrt((f32(1) - ac) / ac)  # fp32, ascending in t (torch: pow 0.5 is sqrt)
        self.sigmas = np.concatenate([self.train_sigmas[::-1], [f32(0)]]).astype(f32)
        self.timesteps = np.linspace(0, self.config.num_train_timesteps - 1, self.config.num_train_timesteps)[::-1] \
            .astype(f32)
        self.step_index = None

    @property
    def init_noise_sigma(self) -> float:
        m = self.sigmas.max()
        return float(m) if self.spacing in ("linspace", "trailing") else float((m * m + f32(1)) ** f32(0.5))

    def set_timesteps(self, num_inference_steps: int):
        ts = self._spaced(num_inference_steps, f32)
        s = self.train_sigmas
        sig = np.interp(ts, np.arange(0, len(s)), s)  # float64 interpolation of the fp32 table
        self.sigmas = np.concatenate([sig, [0]]).astype(f32)
        self.timesteps = ts.astype(f32)
        self.num_inference_steps = int(num_inference_steps)
        self.step_index = None
        return self.timesteps

    def _index(self, timestep) -> int:
        if self.step_index is None:  # the first step: find t in the table (the second match if repeated)
            hits = np.nonzero(self.timesteps == f32(float(timestep)))[0]
            if len(hits) == 0:
                raise ValueError(f"timestep {timestep} is not one of the scheduler's timesteps {self.timesteps}")
            self.step_index = int(hits[1] if len(hits) > 1 else hits[0])
        return self.step_index

    def scale_model_input(self, sample, timestep):
        sigma = self.sigmas[self._index(timestep)]
        return sample / float((sigma * sigma + f32(1)) ** f32(0.5))

    def step(self, model_output, timestep, sample):
        """x at the next sigma: one Euler step of the probability-flow ODE (diffusers, s_churn = 0)."""
        self._check()
        i = self._index(timestep)
        in_dtype = getattr(model_output, "dtype", None)
        sample = _to32(sample)
        sigma = self.sigmas[i]  # gamma = 0, so sigma_hat = sigma * 1
        p = self.config.prediction_type
        if p == "epsilon":
            x0 = sample - float(sigma) * model_output
        elif p == "sample":
            x0 = model_output
        else:  # v_prediction
            x0 = model_output * float(-sigma / (sigma * sigma + f32(1)) ** f32(0.5)) + sample / float(sigma * sigma + f32(1))
        derivative = (sample - x0) / float(sigma)
        dt = float(self.sigmas[i + 1] - sigma)
        out = sample + derivative * dt
        self.step_index = i + 1
        return _to(out, in_dtype)


def _to32(x):
    """sample.to(float32) (diffusers' Euler steps in fp32 whatever the sample's dtype)."""
    if hasattr(x, "storage"):
        from engine import dtype as D
        return x.to(D.float32)
    return np.asarray(x, f32)


def _to(x, dtype):
    if dtype is None:
        return x
    return x.to(dtype) if hasattr(x, "storage") else np.asarray(x).astype(dtype)


SCHEDULERS = {"DDIMScheduler": DDIMScheduler, "EulerDiscreteScheduler": EulerDiscreteScheduler}


def scheduler_from_config(d: dict, kind: str | None = None):
    """A scheduler from scheduler_config.json: `kind` (a class name or ddim/euler) picks the algorithm,
    else its _class_name when it is one the engine has (SD 1.5 ships PNDMScheduler: give kind)."""
    names = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler"}
    name = names.get(kind, kind) if kind else d.get("_class_name")
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler {name!r} is not in the engine; choose one of: ddim, euler "
                         f"({', '.join(SCHEDULERS)})")
    return SCHEDULERS[name].from_config(d)
