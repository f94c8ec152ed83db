"""PyTorch eager: transformers models for presets and HF directories (eager attention, the plain
reference math), any nn.Module from a module:factory. Grad mode off. The decode loop is greedy
with a DynamicCache and the argmax on the device (no host read per token)."""
from __future__ import annotations

import contextlib
import inspect

import numpy as np

from impls import sources
from impls.base import CudaEvents, Impl, Model, Unavailable, WallEvents, as_ids, touch

try:
    import torch
except ImportError:  # pragma: no cover - torch is installed wherever the tests run
    torch = None


def exact_float32() -> None:
    """float32 means float32 on CUDA: no TF32 in cuBLAS matmuls or cuDNN convolutions. cuDNN's default is
    TF32 (10-bit mantissa products), which made torch the less exact side of float32 comparisons (the
    H200's SD UNet/VAE verify diverged at the first convolution) and would time torch at another precision
    than the engine's."""
    torch.backends.cuda.matmul.allow_tf32 = False
    # torch's own test harness (imported by the OpInfo tests) freezes the cudnn flags: set them through
    # the mutation guard it provides
    allow = getattr(torch.backends, "__allow_nonbracketed_mutation", contextlib.nullcontext)
    with allow():
        torch.backends.cudnn.allow_tf32 = False


class TorchImpl(Impl):
    name = "torch"

    def __init__(self, device, dtype):
        super().__init__(device, dtype)
        if torch is None:
            raise Unavailable("torch is not installed")
        if device == "cuda" and not torch.cuda.is_available():
            raise Unavailable("torch: no CUDA device (torch.cuda.is_available() is False)")
        torch.set_grad_enabled(False)  # inference: no autograd bookkeeping in any timed call
        if device == "cuda":
            exact_float32()
        self.tdevice = torch.device(device)
        self.tdtype = getattr(torch, dtype)

    @property
    def model_class(self):
        """What load() returns (torch-compile's loop differs)."""
        return TorchModel

    @property
    def seq2seq_class(self):
        """What load() returns for encoder-decoder models (SEQ2SEQ)."""
        return TorchSeq2SeqModel

    @property
    def label(self):
        return f"torch {torch.__version__}"

    def _ops(self):
        F = torch.nn.functional
        return {"matmul": torch.matmul, "add": torch.add, "mul": torch.mul, "silu": F.silu,
                "softmax": F.softmax, "layer_norm": F.layer_norm, "rms_norm": F.rms_norm,
                "conv2d": F.conv2d, "sdpa": F.scaled_dot_product_attention, "linear": F.linear,
                "embedding": F.embedding, "reshape": lambda x, shape: x.reshape(shape)}

    # ---- data -----------------------------------------------------------------------------------------
    def tensor(self, array):
        a = np.ascontiguousarray(array)
        if a.dtype.kind == "f" and a.dtype.itemsize == 2 and a.dtype != np.float16:  # bfloat16 via float32
            a = a.astype(np.float32)
        return torch.from_numpy(a).to(device=self.tdevice, dtype=self.tdtype)

    def randn(self, *shape, scale=1.0, seed=0):
        if not self.is_cuda:
            return super().randn(*shape, scale=scale, seed=seed)
        g = torch.Generator(device=self.tdevice).manual_seed(seed)
        x = torch.randn(shape, generator=g, device=self.tdevice, dtype=self.tdtype)
        return x.mul_(scale) if scale != 1.0 else x

    def ids(self, values):
        return torch.as_tensor(np.asarray(values, dtype=np.int64), device=self.tdevice)

    def cat(self, tensors, dim):
        return torch.cat(tensors, dim=dim)

    def to_numpy(self, x):
        return x.detach().float().cpu().numpy()

    def alloc(self, nbytes):
        return torch.empty(nbytes, dtype=torch.uint8, device=self.tdevice)

    def fill_zero(self, buf):
        return buf.zero_()

    def as_input(self, a):
        """A host array as a model input: floating arrays in this dtype, integers as they are."""
        a = np.asarray(a)
        if a.dtype.kind == "f":
            return self.tensor(a)
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.tdevice)

    # ---- checkpoints and models ---------------------------------------------------------------------------
    def can_load(self, path):
        if str(path).endswith(".safetensors"):
            try:
                import safetensors.torch  # noqa: F401
            except ImportError:
                raise Unavailable("torch: the safetensors package is not installed") from None

    def load_checkpoint(self, path):
        path = str(path)
        self.can_load(path)
        if path.endswith(".safetensors"):
            import safetensors.torch
            out = safetensors.torch.load_file(path, device=str(self.tdevice))
        else:
            out = torch.load(path, map_location=self.tdevice, weights_only=True)
        if self.is_cuda:
            self.synchronize()
        else:
            touch({k: v.contiguous().reshape(-1).view(torch.uint8).numpy() for k, v in out.items()})
        return out

    def build_module(self, source, seed: int = 0, weights=None, module=None, **options):
        """(torch module in this dtype on this device, Source, example inputs or None). module: a torch
        module built elsewhere (verify hands the reference's module to every candidate, so that all of
        them run the same weights)."""
        src = sources.parse(source, **options) if not (module is not None and source is None) else \
            sources.Source("module", type(module).__name__)
        inputs = None
        if module is not None:
            module = module.to(device=self.tdevice, dtype=self.tdtype) if _dtype_of(module) != self.tdtype or \
                _device_of(module) != self.tdevice else module
        elif src.kind == "factory":
            module, inputs = sources.load_factory(src.text)
            module = module.to(device=self.tdevice, dtype=self.tdtype)
        elif src.model_type in sources.TORCH_REFERENCES:  # not a transformers model (ultralytics' YOLOv8)
            torch.manual_seed(seed)
            module = sources.torch_reference(src).to(device=self.tdevice, dtype=self.tdtype)
            if weights is None and src.kind == "dir":  # the directory's own weights, as the engine reads them
                from engine.io.safetensors import load_file
                weights = load_file(src.path / "model.safetensors")
            if weights is not None:
                _assign(module, weights, self.tdevice, self.tdtype)
        elif src.model_type in sources.DIFFUSERS:
            module = self._diffusers(src, seed)
            inputs = _diffusers_inputs(module, seed)
            if weights is not None:
                _assign(module, weights, self.tdevice, self.tdtype)
        else:
            try:
                import transformers
                from transformers.utils import logging as hf_logging
            except ImportError:
                raise Unavailable("torch: transformers is not installed") from None
            hf_logging.disable_progress_bar()
            causal = src.model_type in _engine_lms()
            auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
            if src.model_type in SEQ2SEQ:
                auto = getattr(transformers, SEQ2SEQ[src.model_type])
            if src.kind == "dir":
                module = auto.from_pretrained(src.path, dtype=self.tdtype, attn_implementation="eager")
                module = module.to(self.tdevice)
            elif src.kind == "gguf":  # transformers dequantises every tensor to float on load
                module = auto.from_pretrained(src.path.parent, gguf_file=src.path.name, dtype=self.tdtype,
                                              attn_implementation="eager").to(self.tdevice)
            else:
                cfg = sources.hf_config(src)
                torch.manual_seed(seed)
                # initialised on the device: a 7B random init on the host takes minutes
                with self.tdevice:
                    module = auto.from_config(cfg, dtype=self.tdtype)
            if weights is not None:
                _assign(module, weights, self.tdevice, self.tdtype)
        return module.eval(), src, inputs

    def _diffusers(self, src, seed: int):
        """A diffusers component (UNet2DConditionModel, AutoencoderKL): from its directory, or built from
        the preset's config with a random init on the device."""
        try:
            import diffusers
        except ImportError:
            raise Unavailable("torch: diffusers is not installed (pip install diffusers)") from None
        diffusers.utils.logging.set_verbosity_error()  # its notes on config keys and dtype casts
        cls = getattr(diffusers, src.model_type)
        if src.kind == "dir":
            return cls.from_pretrained(src.path, torch_dtype=self.tdtype).to(self.tdevice)
        torch.manual_seed(seed)
        with self.tdevice:
            cfg = {k: v for k, v in src.config.items() if k != "model_type"}
            return cls.from_config(cfg).to(dtype=self.tdtype)

    def load(self, source, seed: int = 0, weights=None, module=None, loop: str = "default", **options) -> "TorchModel":
        """weights: {state-dict name: array} to use instead of a random init (DLPack-able arrays are
        shared zero-copy, so an engine model and its torch twin can hold one copy of a 7B model).
        module: an already built torch module to run (source may then be None)."""
        if loop != "default":
            raise Unavailable(f"{self.name} has one decode loop (loop={loop!r} is the engine's)")
        module, src, inputs = self.build_module(source, seed, weights, module, **options)
        wb = sum(p.numel() * p.element_size() for p in module.parameters())
        self.synchronize()
        cls = self.seq2seq_class if src.model_type in SEQ2SEQ else self.model_class
        return cls(self, src, module, model_config(src, module), wb, inputs)

    # ---- device --------------------------------------------------------------------------------------------
    def synchronize(self):
        if self.is_cuda:
            torch.cuda.synchronize(self.tdevice)

    def events(self):
        if not self.is_cuda:
            return WallEvents()
        return CudaEvents(lambda: torch.cuda.Event(enable_timing=True))

    def memory_stats(self):
        if not self.is_cuda:
            return super().memory_stats()
        return {"allocated_bytes": torch.cuda.memory_allocated(self.tdevice),
                "peak_bytes": torch.cuda.max_memory_allocated(self.tdevice),
                "reserved_bytes": torch.cuda.memory_reserved(self.tdevice),
                "source": "torch.cuda caching allocator"}

    def reset_peak(self):
        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.tdevice)

    def empty_cache(self):
        if self.is_cuda:
            torch.cuda.empty_cache()


# encoder-decoder model types -> the transformers auto class that builds them with their head
SEQ2SEQ = {"whisper": "AutoModelForSpeechSeq2Seq"}


def model_config(src, module) -> dict:
    """The source's config, or the HF config a transformers module carries."""
    cfg = src.config
    if not cfg and hasattr(getattr(module, "config", None), "to_dict"):
        cfg = module.config.to_dict()
    return cfg


def _dtype_of(module):
    p = next(iter(module.parameters()), None)
    return None if p is None else p.dtype


def _device_of(module):
    p = next(iter(module.parameters()), None)
    return None if p is None else p.device


def _diffusers_inputs(module, seed: int) -> tuple:
    """Example inputs of a diffusers component at its config's sample size (host arrays): a UNet's
    (latents (2, C, s, s), timesteps (2,), text states (2, 77, D)); a VAE's image (1, 3, s, s) in [-1, 1]."""
    cfg, rng = module.config, np.random.default_rng(seed)
    s = cfg.sample_size
    if type(module).__name__ == "AutoencoderKL":
        return (rng.uniform(-1, 1, (1, cfg.in_channels, s, s)).astype(np.float32),)
    return (rng.standard_normal((2, cfg.in_channels, s, s)).astype(np.float32), np.array([981, 20]),
            rng.standard_normal((2, 77, cfg.cross_attention_dim)).astype(np.float32))


def _engine_lms() -> set:
    """The model types the engine runs as causal LMs (its encoders load through AutoModel)."""
    from engine import models
    from engine.models.base import CausalLM
    return {mt for mt in models.REGISTRY if issubclass(models.model_class(mt), CausalLM)}


def _assign(module, weights: dict, device, dtype) -> None:
    """Replace the module's parameters and buffers by the given arrays (zero-copy through DLPack when
    they are on the device already); every parameter must be given."""
    state = {}
    for k, a in weights.items():
        t = torch.from_dlpack(a) if hasattr(a, "__dlpack__") and not isinstance(a, np.ndarray) else \
            torch.from_numpy(np.asarray(a, np.float32) if np.asarray(a).dtype.itemsize == 2
                             and np.asarray(a).dtype != np.float16 else np.asarray(a))
        state[k] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
    names = dict(module.named_parameters())
    missing = sorted(set(names) - set(state) - _tied(module))
    if missing:
        raise Unavailable(f"torch: weights missing for {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    module.load_state_dict(state, strict=False, assign=True)  # the random init's tensors are freed
    if hasattr(module, "tie_weights"):
        module.tie_weights()


def _tied(module) -> set:
    cfg = getattr(module, "config", None)
    return {"lm_head.weight"} if cfg is not None and getattr(cfg, "tie_word_embeddings", False) else set()


class TorchModel(Model):
    def __init__(self, impl, source, module, config, weight_bytes, inputs=None):
        super().__init__(impl, source, config, weight_bytes)
        self.module, self.example_inputs = module, inputs
        self.run_module = module  # what forward and logits call (torch-compile: the compiled module)
        self._cache_kw = "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"
        self._toks = []

    # ---- forward -------------------------------------------------------------------------------------------
    def forward(self, *arrays, method=None):
        return _host(self.run(self.device_inputs(*arrays), method))

    def device_inputs(self, *arrays):
        return [self.impl.as_input(a) for a in arrays]

    def run(self, inputs, method=None):
        fn = self.run_module if method is None else self.method(method)
        with torch.inference_mode():
            return fn(*inputs)

    def method(self, name: str):
        """The module's method `name` as forward runs it (torch-compile: compiled)."""
        return getattr(self.module, name)

    def detect(self, image, imgsz: int = 640, conf: float = 0.25, iou: float = 0.7):
        if sources.TORCH_REFERENCES.get(getattr(self.source, "model_type", None) or "") is None:
            return super().detect(image, imgsz, conf, iou)
        from impls import ultralytics_yolo
        return ultralytics_yolo.detect(self.run_module, image, imgsz, conf, iou)

    def logits(self, ids):
        ids = torch.as_tensor(as_ids(ids), device=self.impl.tdevice)
        with torch.inference_mode():
            return self.run_module(ids, use_cache=False).logits.float().cpu().numpy()

    # ---- greedy decode, tokens on the device -----------------------------------------------------------------
    def new_cache(self, batch: int, max_len: int):
        from transformers import DynamicCache
        return DynamicCache(config=self.module.config)

    def _call(self, ids, **kw):
        kw[self._cache_kw] = self.cache
        with torch.inference_mode():
            return self.module(ids, use_cache=True, **kw)

    def start(self, ids, max_new_tokens: int):
        ids = torch.as_tensor(as_ids(ids), device=self.impl.tdevice)
        self.cache = self.new_cache(ids.shape[0], ids.shape[1] + max_new_tokens)
        tok = self._call(ids, logits_to_keep=1).logits[:, -1].argmax(-1)
        self._toks = [tok]
        return tok.cpu().numpy()

    def step(self):
        out = self._call(self._toks[-1][:, None])
        self._toks.append(out.logits[:, -1].argmax(-1))

    def tokens(self):
        return torch.stack(self._toks, 1).cpu().numpy()

    @contextlib.contextmanager
    def tap(self, names, callback):
        """callback(name, host array) for each named module's first tensor output."""
        wanted = None if names is None else set(names)
        handles = []
        for name, m in self.module.named_modules():
            if wanted is None or name in wanted:
                handles.append(m.register_forward_hook(
                    lambda mod, args, out, name=name: callback(name, _host(out)[0]) if _host(out) else None))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


def _host(out) -> list:
    """Every tensor of a model output (tensor, tuple, dict, ModelOutput) as float32/int host arrays."""
    if isinstance(out, torch.Tensor):
        t = out.detach()
        return [(t.float() if t.is_floating_point() else t).cpu().numpy()]
    if isinstance(out, dict) or hasattr(out, "to_tuple"):
        out = list(out.values()) if isinstance(out, dict) else list(out.to_tuple())
    if isinstance(out, (list, tuple)):
        return [a for o in out for a in _host(o)]
    return []


class TorchSeq2SeqModel(TorchModel):
    """Whisper in transformers: encode() runs model.encoder; the greedy loop calls the whole model with
    the kept encoder output and an EncoderDecoderCache (self-attention DynamicCache; cross-attention
    K/V computed on the first call and reused), argmax on the device."""

    encoder_out = None

    def encode(self, features):
        with torch.inference_mode():
            self.encoder_out = self.module.model.encoder(self.impl.tensor(features)).last_hidden_state
        return self.encoder_out

    def _enc(self):
        if self.encoder_out is None:
            raise Unavailable(f"{self.impl.name}: call encode(features) before decoding a Whisper model")
        return (self.encoder_out,)

    def logits(self, ids):
        ids = torch.as_tensor(as_ids(ids), device=self.impl.tdevice)
        with torch.inference_mode():
            out = self.run_module(decoder_input_ids=ids, encoder_outputs=self._enc(), use_cache=False)
        return out.logits.float().cpu().numpy()

    def new_cache(self, batch: int, max_len: int):
        from transformers import DynamicCache, EncoderDecoderCache
        return EncoderDecoderCache(DynamicCache(), DynamicCache())

    def _call(self, ids, **kw):
        kw[self._cache_kw] = self.cache
        kw.pop("logits_to_keep", None)
        with torch.inference_mode():
            return self.module(decoder_input_ids=ids, encoder_outputs=self._enc(), use_cache=True, **kw)
