"""The engine: numpy backend on the cpu, cupy on cuda. Decode goes through engine.generation's
Decoder, which captures the step as a CUDA graph on a GPU (the engine's normal path); so do the
fixed-shape forwards the suites time (`Model.run`: encoders, the UNet step, the VAE, EnCodec, Whisper's
encoder, YOLOv8's forward before NMS), one graph per input shape (engine.capture.CapturedForward).

`load(capture=...)` picks the path for both: None (default) captured on cuda, False the same fused
kernels launched from the host, "plain" the model's ops as written; loop="eager" is capture=False.
TAPER_ENGINE_CAPTURE in the environment sets the default for every load (0/false/off: False, plain:
"plain", 1/true/on: True), e.g. `TAPER_ENGINE_CAPTURE=0 taper bench --suite encoders` times the
uncaptured engine."""
from __future__ import annotations

import contextlib
import operator
import os

import numpy as np

import engine
from impls.base import CudaEvents, Impl, Model, Unavailable, WallEvents, as_ids, touch
from impls import sources


class EngineImpl(Impl):
    name = "engine"
    module_kind = "engine"

    def __init__(self, device, dtype):
        super().__init__(device, dtype)
        backend = engine.backend(device)
        if not getattr(backend, "available", False):
            try:
                backend.synchronize()
            except Exception as e:  # the UnavailableBackend's one clear error
                raise Unavailable(f"engine: {e}") from None
            raise Unavailable(f"engine: device {device} is not available")
        self.backend = backend
        self.edtype = getattr(engine, dtype)

    @property
    def label(self):
        return f"engine ({self.backend.name} backend)"

    def _ops(self):
        F = engine.functional
        return {"matmul": engine.matmul, "add": operator.add, "mul": operator.mul, "silu": F.silu,
                "softmax": F.softmax, "layer_norm": F.layer_norm, "rms_norm": F.rms_norm,
                "conv2d": F.conv2d, "sdpa": F.scaled_dot_product_attention, "linear": F.linear,
                "embedding": F.embedding, "reshape": lambda x, shape: x.reshape(shape)}

    # ---- data -----------------------------------------------------------------------------------------
    def tensor(self, array):
        return engine.tensor(np.ascontiguousarray(array), dtype=self.edtype, device=self.device)

    def randn(self, *shape, scale=1.0, seed=0):
        if not self.is_cuda:
            return super().randn(*shape, scale=scale, seed=seed)
        # drawn on the device (engine.randn draws on the host, for the same values on every device:
        # minutes for 7B weights); with the cupy backend loaded, the pool's stats stay exact
        return engine.Tensor._wrap(self.backend.random_normal(shape, self.edtype, seed, scale), self.backend,
                                   self.edtype)

    def ids(self, values):
        return engine.tensor(np.asarray(values, dtype=np.int64), dtype=engine.int64, device=self.device)

    def cat(self, tensors, dim):
        return engine.cat(tensors, dim=dim)

    def to_numpy(self, x):
        return np.asarray(x.float().numpy())

    def alloc(self, nbytes):
        return engine.empty(nbytes, dtype=engine.uint8, device=self.device)

    def fill_zero(self, buf):
        return buf.fill_(0)

    # ---- checkpoints and models ---------------------------------------------------------------------------
    def can_load(self, path):
        if not str(path).endswith(".safetensors"):
            raise Unavailable("engine reads safetensors only (it never unpickles); "
                              "convert .pt checkpoints with `taper convert`")

    def load_checkpoint(self, path):
        path = str(path)
        self.can_load(path)
        import engine.io
        out = {}
        with engine.io.safe_open(path) as f:
            for name in f.keys():
                arr = f.get_numpy(name)  # a zero-copy view of the mapping
                out[name] = engine.from_numpy(arr) if not self.is_cuda else engine.tensor(arr, device=self.device)
        if not self.is_cuda:  # the mapping stays alive through the views after close()
            touch({k: v.storage.data for k, v in out.items()})
        return out

    def load(self, source, module=None, seed: int = 0, capture=None, loop: str = "default",
             **options) -> "EngineModel":
        """A preset (random weights, seeded), a HF directory, or an engine Module built elsewhere
        (`module=`, e.g. the port of a torch model by migration). capture: decode through a captured
        CUDA graph (default: on cuda); loop="eager" is capture=False (the same kernels launched from
        the host)."""
        if loop not in ("default", "eager"):
            raise Unavailable(f"engine: unknown decode loop {loop!r} (default, eager)")
        if loop == "eager":
            capture = False
        if capture is None:
            capture = env_capture()
        src = sources.parse(source, **options) if source is not None else None
        if module is None:
            if src is None or src.kind == "factory":
                raise Unavailable(f"engine: {source} is a torch factory; port it first (taper port / taper verify)")
            module = src.engine_model(self.edtype, self.device, seed)
        elif getattr(module, "dtype", None) not in (None, self.edtype):
            module.to(dtype=self.edtype)
        config = src.config if src is not None else dict(getattr(getattr(module, "config", None), "__dict__", {}))
        wb = sum({id(p): p.nbytes for p in module.parameters()}.values())
        if self.is_cuda:
            self.synchronize()
        cls = EngineSeq2SeqModel if hasattr(module, "encode") and hasattr(module, "cross_cache") else EngineModel
        return cls(self, src or "<module>", module, config, wb, capture)

    # ---- device --------------------------------------------------------------------------------------------
    def synchronize(self):
        self.backend.synchronize()

    def events(self):
        if not self.is_cuda:
            return WallEvents()
        import cupy
        return CudaEvents(lambda: cupy.cuda.Event(), None)

    def memory_stats(self):
        s = dict(self.backend.pool.stats())
        s["source"] = "engine StoragePool"
        return s

    def reset_peak(self):
        self.backend.pool.reset_peak()

    def copy_gb_per_s(self):
        """A 2 GiB device-to-device copy through the backend, timed with CUDA events."""
        if not self.is_cuda:
            return None
        n = 1 << 30
        a, b = engine.empty(n, dtype=engine.uint8, device=self.device), engine.empty(n, dtype=engine.uint8,
                                                                                     device=self.device)
        b.copy_(a)
        ev = self.events()
        ev.start()
        for _ in range(10):
            b.copy_(a)
        return 2 * n / (ev.stop() / 10) / 1e9

    def empty_cache(self):
        self.backend.pool.empty_cache()


def env_capture():
    """The default `capture` of load() from TAPER_ENGINE_CAPTURE (unset: None, the engine's own default)."""
    v = os.environ.get("TAPER_ENGINE_CAPTURE", "").strip().lower()
    if not v:
        return None
    table = {"0": False, "false": False, "off": False, "no": False, "plain": "plain", "1": True, "true": True,
             "on": True, "yes": True}
    if v not in table:
        raise Unavailable(f"engine: TAPER_ENGINE_CAPTURE={v!r} (known: 0/false/off, plain, 1/true/on)")
    return table[v]


class EngineModel(Model):
    def __init__(self, impl, source, module, config, weight_bytes, capture=None):
        super().__init__(impl, source, config, weight_bytes)
        self.module = module
        self.capture = capture
        self.decoder = None
        self.forwards: dict = {}  # method -> CapturedForward (run's fixed-shape forwards)

    def state_arrays(self) -> dict:
        """{name: backend array} of every weight (zero-copy; torch takes them through DLPack)."""
        return {k: v.array for k, v in self.module.state_dict().items()}

    def forward(self, *arrays, method=None):
        out = self._fn(method)(*self.device_inputs(*arrays))  # once per input (verify): never captured
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [o.float().numpy() if o.dtype.is_reduced else o.numpy() for o in outs if o is not None]

    def device_inputs(self, *arrays):
        """Host arrays on the device: floating ones in this implementation's dtype (as torch's
        as_input), others as they are."""
        return [(engine.tensor(a, dtype=self.impl.edtype if a.dtype.kind == "f" else None, device=self.impl.device)
                 if isinstance(a, np.ndarray) else a) for a in arrays]

    def _fn(self, method=None):
        return self.module if method is None else getattr(self.module, method)

    def run(self, inputs, method=None):
        """The forward over device inputs; on cuda (see load's capture) a CUDA graph per input shape,
        captured at the first call of that shape (three real forwards: eager, recorded, captured; the
        seconds go to warmup_s), replayed after. Outputs are the graph's buffers until the next run."""
        from engine.capture import CapturedForward
        fwd = self.forwards.get(method)
        if fwd is None:
            fwd = self.forwards[method] = CapturedForward(self._fn(method), self.capture, prime=True)
        if fwd.mode(inputs) == "plain" or not all(isinstance(a, engine.Tensor) for a in inputs):
            return self._fn(method)(*inputs)
        out = fwd(*inputs)
        self.warmup_s = fwd.capture_s
        return out

    def detect(self, image, imgsz: int = 640, conf: float = 0.25, iou: float = 0.7):
        from engine.models.yolov8 import YOLOv8, detect
        if not isinstance(self.module, YOLOv8):
            return super().detect(image, imgsz, conf, iou)
        d = detect.detect(self.module, image, imgsz, conf, iou, forward=self._detector())
        return np.concatenate([d.boxes, d.scores[:, None], d.classes[:, None].astype(d.boxes.dtype)], 1)

    def _detector(self):
        """YOLOv8's forward up to the raw head output, captured per image size (NMS stays eager: its
        output size depends on the data)."""
        from engine.capture import CapturedForward
        fwd = self.forwards.get("detect")
        if fwd is None:
            fwd = self.forwards["detect"] = CapturedForward(self.module, self.capture, prime=True)
        return fwd

    def logits(self, ids):
        ids = engine.tensor(as_ids(ids), device=self.impl.device)
        return self.module(ids).float().numpy()

    def start(self, ids, max_new_tokens: int):
        from engine.generation import Decoder
        ids = as_ids(ids)
        shape = (ids.shape[0], ids.shape[1] + max_new_tokens)
        if self.decoder is None or (self.decoder.cache.batch_size, self.decoder.max_len) != shape:
            # a decoder (its static cache and captured step) serves every run of the same shape
            self.decoder = Decoder(self.module, *shape, capture=self.capture)
        first = self.decoder.prefill(engine.tensor(ids, device=self.impl.device))
        return first.numpy().astype(np.int64)

    def step(self):
        self.decoder.step()
        if self.warmup_s is None:
            self.warmup_s = self.decoder.capture_s

    def tokens(self):
        return self.decoder.tokens()

    @contextlib.contextmanager
    def tap(self, names, callback):
        """callback(name, host array) for each named module output (all modules when names is None)."""
        def on(name, out):
            while isinstance(out, (tuple, list)) and out:  # a module returning several: its first tensor
                out = out[0]
            if isinstance(out, engine.Tensor):
                callback(name, out.float().numpy() if out.dtype.is_reduced else out.numpy())
        self.module.set_taps(on, names)
        try:
            yield self
        finally:
            self.module.set_taps(None)


class EngineSeq2SeqModel(EngineModel):
    """Whisper: encode() keeps the encoder output; the decode loop is engine.generation's Decoder over
    engine.models.whisper.generate.DecoderView (greedy, raw logits; a captured step on a GPU). A new
    audio of the same shape is copied into the view's cross K/V buffers, so one captured step serves
    every audio and prompt of one shape."""

    encoder_out = None

    def encode(self, features):
        x = engine.tensor(np.ascontiguousarray(features), dtype=self.impl.edtype, device=self.impl.device)
        # captured on cuda (run): the graph's output buffer, which the next encode of this shape overwrites;
        # encoder_out always names the latest encoding, and start() reads it into the decoder's own cross K/V
        self.encoder_out = self.run([x], "encode")
        return self.encoder_out

    def logits(self, ids):
        if self.encoder_out is None:
            raise Unavailable("engine: call encode(features) before decoding a Whisper model")
        ids = engine.tensor(as_ids(ids), device=self.impl.device)
        return self.module.decode(ids, self.module.cross_cache(self.encoder_out)).float().numpy()

    def start(self, ids, max_new_tokens: int):
        from engine.generation import Decoder
        from engine.models.whisper.generate import DecoderView
        if self.encoder_out is None:
            raise Unavailable("engine: call encode(features) before decoding a Whisper model")
        ids = as_ids(ids)
        shape = (ids.shape[0], ids.shape[1] + max_new_tokens)
        cross = self.module.cross_cache(self.encoder_out)
        if self.decoder is None or (self.decoder.cache.batch_size, self.decoder.max_len) != shape \
                or tuple(self.view.cross[0][0].shape) != tuple(cross[0][0].shape):
            self.view = DecoderView(self.module, cross)
            self.decoder = Decoder(self.view, *shape, capture=self.capture)
        else:
            self.view.set_cross(cross)
        first = self.decoder.prefill(engine.tensor(ids, device=self.impl.device))
        return first.numpy().astype(np.int64)
