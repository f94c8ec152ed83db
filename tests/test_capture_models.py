"""engine.capture on the fixed-shape forwards (encoders, the SD UNet and VAE, YOLOv8 before NMS, EnCodec,
Whisper's encoder): a captured forward equals the model's own, call after call on changing inputs, and
records no host read or upload (check_host refuses them on the CPU too, naming the op and the line).

On the CPU, Captured runs the fusion plan eagerly after recording: outputs equal the plain forward bit
for bit. With ENGINE_DEVICE=cuda every row is a real CUDA graph (the test asserts one was captured, so
no op synchronised with the host) and is compared with the eager forward to the kernels' rounding
(a graph's products run the capture-safe kernels, eager ones cuBLAS).
"""
import numpy as np
import pytest

import engine
from engine import models
from engine.capture import CaptureError, Captured, CapturedForward, capture_mode
from helpers import DEVICE, needs_device

pytestmark = needs_device
CUDA = DEVICE.type == "cuda"
DT = engine.float16 if CUDA else engine.float32  # what the GPU benchmarks run; the CPU reference in fp32
RTOL = {"float16": 3e-2, "float32": 1e-3}  # captured against eager kernels on CUDA (exact on the CPU)


def arrays(out) -> list:
    """A forward's outputs as host arrays (a Tensor, or a tuple / NamedTuple of them; None skipped)."""
    outs = out if isinstance(out, tuple) else (out,)
    return [(o.float() if o.dtype.is_reduced else o).numpy() for o in outs if o is not None]


def close(got: list, ref: list, codes_agree: float = 1.0):
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape and g.dtype == r.dtype
        if not CUDA:
            np.testing.assert_array_equal(g, r)
        elif r.dtype.kind in "iu":  # codes: an argmin may flip on a near tie when the kernels round differently
            assert (g == r).mean() >= codes_agree
        else:
            tol = RTOL["float32" if r.dtype == np.float32 and DT is engine.float32 else "float16"]
            np.testing.assert_allclose(g, r, rtol=tol, atol=tol * max(float(np.abs(r).max()), 1e-6))


def check(fn, make_inputs, calls: int = 5, codes_agree: float = 1.0):
    """fn captured (host ops refused) over `calls` calls alternating two input sets, each compared with
    the plain forward of the same inputs."""
    sets = [make_inputs(np.random.default_rng(seed)) for seed in (0, 1)]
    refs = [arrays(fn(*s)) for s in sets]
    step = Captured(fn, check_host=True)
    for i in range(calls):  # warm-up, record, capture, replays
        close(arrays(step(*sets[i % 2])), refs[i % 2], codes_agree)
    if CUDA:
        assert step.graph is not None  # a real CUDA graph: nothing in the forward read the device from the host
    return step


def t(a, dtype=None):
    return engine.tensor(a, dtype=dtype, device=DEVICE)


def preset(mt, name="tiny", dtype=DT, **over):
    return models.from_preset(mt, name, dtype=dtype, device=DEVICE, seed=0, **over)


def ids_mask(vocab, b, L, pad=True):
    def make(rng):
        ids = rng.integers(1, vocab, (b, L))
        mask = np.ones((b, L), np.int64)
        if pad:
            mask[1::2, L - L // 4:] = 0
        return t(ids), t(mask)
    return make


def normal(*shape, dtype=DT, scale=1.0):
    return lambda rng: (t((rng.standard_normal(shape) * scale).astype(np.float32), dtype),)


# ---- one row per model -----------------------------------------------------------------------------------------
BERT, CLIP = preset("bert"), preset("clip_text_model")
UNET, VAE = preset("UNet2DConditionModel"), preset("AutoencoderKL")
ENCODEC = preset("encodec", dtype=engine.float32, target_bandwidths=[60.0])  # 2 codebooks
WHISPER = preset("whisper")


def unet_inputs(rng):  # the timestep is a (1,) float32 tensor: a number would be a constant of the graph
    return (t(rng.standard_normal((2, 4, 16, 16)).astype(np.float32), DT), t(np.array([rng.integers(1, 999)], np.float32)),
            t(rng.standard_normal((2, 7, 32)).astype(np.float32), DT))


def test_bert_batch_2_padded():         check(BERT, ids_mask(256, 2, 16))
def test_bert_batch_1_no_mask():        check(lambda ids: BERT(ids), lambda rng: ids_mask(256, 1, 12)(rng)[:1])
def test_clip_text_77_tokens():         check(CLIP, lambda rng: ids_mask(1000, 2, 77, pad=False)(rng)[:1])
def test_unet_step():                   check(UNET, unet_inputs)
def test_vae_decode():                  check(VAE.decode, normal(1, 4, 8, 8))
def test_vae_encode():                  check(VAE.encode, normal(1, 3, 32, 32))
def test_whisper_encoder_30s():         check(WHISPER.encode, normal(1, 80, 3000))
def test_encodec_encode_decode():       check(ENCODEC, normal(1, 1, 480, dtype=engine.float32, scale=0.1), codes_agree=0.95)
def test_encodec_encode():              check(ENCODEC.encode, normal(2, 1, 333, dtype=engine.float32, scale=0.1), codes_agree=0.95)
def test_encodec_decode():              check(ENCODEC.decode, lambda rng: (t(rng.integers(0, 32, (1, 2, 60))),))


def test_encodec_48khz_chunks_overlap_added():
    """The chunked layout (normalised chunks, overlap-add): its triangle weights are uploaded at the first
    call and kept, so the recorded call uploads nothing."""
    over = {**models.model_class("encodec").PRESETS["encodec_48khz"], "chunk_length_s": 0.0025,
            "target_bandwidths": [240.0]}  # stereo chunks of 120 samples, 4 codebooks
    m = models.from_preset("encodec", "tiny", dtype=engine.float32, device=DEVICE, seed=0, **over)
    check(m, normal(1, 2, 300, dtype=engine.float32, scale=0.1), codes_agree=0.95)


def test_yolov8_forward_before_nms():
    m = models.from_preset("yolov8", "yolov8n", dtype=DT, device=DEVICE, seed=0, nc=3)
    check(m, lambda rng: (t(rng.uniform(0, 1, (1, 3, 64, 96)).astype(np.float32), DT),))


# ---- the ops those forwards use that once read the device from the host or called cuBLAS inside a capture (the
# GPU rows say which op broke when a model row fails; on the CPU they check the plain composition) ---------------
F = engine.functional
W1D = t(np.random.default_rng(9).standard_normal((8, 4, 3)).astype(np.float32), DT)


def test_max_pool2d_with_padding():     check(lambda x: F.max_pool2d(x, 5, 1, 2), normal(1, 4, 10, 10))
def test_sdpa_multi_head():             check(lambda q: F.scaled_dot_product_attention(q, q * 0.5, q), normal(2, 3, 40, 16))
def test_sdpa_float32():                check(lambda q: F.scaled_dot_product_attention(q, q, q), normal(1, 2, 33, 8, dtype=engine.float32))
def test_interpolate_nearest_2x():      check(lambda x: F.interpolate(x, scale_factor=2.0, mode="nearest"), normal(1, 3, 5, 7))
def test_conv1d_stride_2():             check(lambda x: F.conv1d(x, W1D, None, stride=2, padding=1), normal(1, 4, 50))
def test_reflect_pad_1d():              check(lambda x: F.pad(x, (3, 2), mode="reflect"), normal(1, 2, 20, dtype=engine.float32))


# ---- what a captured forward refuses, and the callers ------------------------------------------------------------
def test_a_number_timestep_inside_a_captured_unet_names_the_upload():
    x, _, c = unet_inputs(np.random.default_rng(0))
    step = Captured(lambda x, c: UNET(x, 981.0, c), check_host=True)
    step(x, c)
    with pytest.raises(CaptureError, match=r"from_numpy uploads host data at .*unet_2d_condition.py:\d+ in _timesteps"):
        step(x, c)


def test_a_user_facing_forward_that_cannot_be_captured_warns_and_runs_as_written():
    x, _, c = unet_inputs(np.random.default_rng(0))
    ref = arrays(UNET(x, 981.0, c))
    f = CapturedForward(lambda x, c: UNET(x, 981.0, c), capture=True, fallback=True, check_host=True)
    close(arrays(f(x, c)), ref)  # warm-up
    with pytest.warns(RuntimeWarning, match=r"runs uncaptured: from_numpy uploads host data .*_timesteps"):
        close(arrays(f(x, c)), ref)
    close(arrays(f(x, c)), ref)  # as written from now on, no second warning
    assert list(f.steps.values()) == [None]
    with pytest.raises(CaptureError, match="from_numpy"):  # a benchmark's (fallback=False) raises
        g = CapturedForward(lambda x, c: UNET(x, 981.0, c), capture=True, prime=True, check_host=True)
        g(x, c)


def test_captured_forward_one_graph_per_shape_and_copies():
    f = CapturedForward(BERT, capture=True, copy=True, keep=2)
    a, b, c = (ids_mask(256, 2, L)(np.random.default_rng(L)) for L in (8, 12, 16))
    first = [arrays(BERT(*x).last_hidden_state)[0] for x in (a, b, c)]  # 16-bit on CUDA: as arrays() reads them
    outs = [f(*a) for _ in range(4)]  # kept results are copies: later calls do not overwrite them
    for o in outs:
        close(arrays(o)[:1], [first[0]])
    close(arrays(f(*b))[:1], [first[1]])
    close(arrays(f(*c))[:1], [first[2]])  # a third shape: the oldest (a) goes
    assert len(f.steps) == 2 and f.steps[next(reversed(f.steps))].calls == 1
    with pytest.raises(TypeError, match="tensors only"):
        f(a[0], 3)


def test_capture_mode_defaults():
    assert capture_mode(None, engine.device.parse("cuda")) is True
    assert capture_mode(None, DEVICE) == ("plain" if not CUDA else True)
    assert capture_mode(False, DEVICE) is False
    with pytest.raises(ValueError, match="capture must be"):
        capture_mode("yes", DEVICE)


@pytest.mark.parametrize("capture", [True, False])
def test_txt2img_loop_captured_equals_plain(capture):
    from engine.models.stable_diffusion.pipeline import StableDiffusionPipeline
    from engine.models.stable_diffusion.schedulers import PRESETS, scheduler_from_config
    pipe = StableDiffusionPipeline(UNET, VAE, scheduler_from_config(PRESETS["sd-1.5"], "ddim"))
    e = np.random.default_rng(0).standard_normal((2, 1, 7, 32)).astype(np.float32)
    kw = dict(num_inference_steps=5, seed=0, show_progress=False)
    ref = pipe.denoise(e[0], e[1], capture="plain", **kw).float().numpy()
    close(arrays(pipe.denoise(e[0], e[1], capture=capture, **kw)), [ref])
    assert (2, 4, 16, 16) in {k[0][0] for k in pipe.unet_forward(capture).steps}  # one graph per latent size


def test_engine_adapter_runs_captured_forwards(monkeypatch):
    import impls
    from impls.engine import env_capture
    impl = impls.get("engine", DEVICE.type, DT.name)
    m = impl.load("bert:tiny", capture=True)
    x = ids_mask(256, 2, 16)(np.random.default_rng(0))
    ref = arrays(m.module(*x))
    for _ in range(3):
        close(arrays(m.run(x)), ref)
    assert m.forwards[None].steps and m.warmup_s is not None  # primed: captured at the first run
    plain = impl.load("bert:tiny", capture="plain")
    plain.run(x)
    assert not plain.forwards[None].steps
    for v, want in (("0", False), ("plain", "plain"), ("on", True), ("", None)):
        monkeypatch.setenv("TAPER_ENGINE_CAPTURE", v)
        assert env_capture() == want
    monkeypatch.setenv("TAPER_ENGINE_CAPTURE", "0")
    assert impl.load("bert:tiny").capture is False


def test_transcribe_windows_through_one_captured_encoder():
    from engine.models.whisper.generate import GenerationSettings, transcribe
    gen = GenerationSettings.from_config(WHISPER.config)
    x = (np.random.default_rng(3).standard_normal(16_000 * 65) * 0.1).astype(np.float32)  # three 30 s windows
    plain = [w.tokens for w in transcribe(WHISPER, x, gen, max_new_tokens=4, capture="plain")]
    got = [w.tokens for w in transcribe(WHISPER, x, gen, max_new_tokens=4, capture=True)]
    assert len(plain) == len(got) == 3
    if not CUDA:  # on a GPU the graph's kernels round otherwise: random weights' near-flat logits may flip a token
        assert got == plain
