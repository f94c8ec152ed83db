"""The interface every implementation offers (impls/__init__.py lists them).

Impl (one per implementation, device and dtype):
  ops       ``op(name)`` torch-named callables (matmul, add, mul, silu, softmax, layer_norm, rms_norm,
            conv2d, sdpa, linear, embedding), ``F`` (a torch.nn.functional-like namespace),
            ``tensor``/``randn``/``ids``/``cat``/``to_numpy``, ``alloc``/``fill_zero``,
            ``build(fn, *args)`` (a zero-argument callable that runs fn and synchronises on a GPU)
  models    ``load(source)`` -> Model: a preset ("llama:tiny"), a Hugging Face model directory, or a
            ``module:factory`` returning a torch.nn.Module (see impls.sources);
            ``load_checkpoint(path)`` -> {name: tensor} on the device
  device    ``synchronize``, ``events()`` (CUDA events on a GPU), ``memory_stats``/``reset_peak``/
            ``empty_cache``

Model (what load returns):
  ``forward(*arrays)`` -> list of host arrays; ``device_inputs(*arrays)`` then ``run(inputs)``: the same
  forward with inputs placed on the device once and outputs left there (what encoder suites time);
  for causal LMs ``logits(ids)`` (B, L, V) float32,
  and the decode loop of this implementation: ``start(ids, max_new_tokens)`` (prefill into a fresh
  cache; returns the first greedy tokens (B,)), ``step()`` (one greedy step, the token stays on the
  device), ``tokens()`` (B, n), ``generate(ids, n)`` and ``prefill(ids)`` (to the first token).
  ``load(source, loop=...)`` picks a decode loop where an implementation has several (the engine:
  "default" captures the step as a CUDA graph on a GPU, "eager" launches its kernels from the host).
  Encoder-decoder models (Whisper): ``encode(features)`` runs the encoder on (B, n_mels, frames) log-mel
  features and keeps its output on the device; ``start``/``step``/``tokens`` then decode greedily
  against the last encoded audio (``ids`` are the decoder's prompt, e.g. <|startoftranscript|> ...).
  ``tap(names, callback)`` is a context manager
  that reports named layer outputs during forward; implementations that cannot tap raise
  TapsUnsupported (verify then compares outputs only and says so).

Every failure to run here is Unavailable (a NotImplementedError: asv and the suites record a skip)
with the reason.
"""
from __future__ import annotations

import contextlib
import functools
import time

import numpy as np

from engine import dtype as _D

# the dtypes implementations are measured in, as numpy dtypes (from the engine's one dtype table)
NP_DTYPES = {n: _D.get(n).np_dtype for n in ("float32", "float16", "bfloat16")}


class Unavailable(NotImplementedError):
    """This implementation cannot do this here; the message says why (asv records a skip)."""


class TapsUnsupported(Unavailable):
    """The implementation runs the model as one opaque program: no per-layer outputs."""


# ---- timers -----------------------------------------------------------------------------------------
class WallEvents:
    """perf_counter pairs, for the cpu."""

    def start(self):
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        return time.perf_counter() - self._t0


class CudaEvents:
    """CUDA events recorded on the stream the implementation uses; stop() waits and returns seconds."""

    def __init__(self, make_event, stream=None):
        self._make, self._stream = make_event, stream

    def start(self):
        self._a, self._b = self._make(), self._make()
        self._record(self._a)

    def _record(self, ev):
        if self._stream is None:
            ev.record()
        else:
            ev.record(self._stream)

    def stop(self) -> float:
        self._record(self._b)
        self._b.synchronize()
        if hasattr(self._a, "elapsed_time"):  # torch.cuda.Event: ms
            return self._a.elapsed_time(self._b) / 1e3
        import cupy  # cupy.cuda.Event: module-level get_elapsed_time, ms
        return cupy.cuda.get_elapsed_time(self._a, self._b) / 1e3


class Namespace:
    """F.<op> access to an implementation's ops, so workload code reads like torch.nn.functional."""

    _ALIASES = {"scaled_dot_product_attention": "sdpa"}

    def __init__(self, impl):
        self._impl = impl

    def __getattr__(self, name):
        return self._impl.op(self._ALIASES.get(name, name))


# ---- the implementation ---------------------------------------------------------------------------------
class Impl:
    name = "?"
    # what load(module=...) takes: "torch" (an nn.Module) or "engine" (an engine Module, e.g. a port)
    module_kind = "torch"

    def __init__(self, device: str, dtype: str):
        if dtype not in NP_DTYPES:
            raise Unavailable(f"dtype {dtype!r} is not supported (known: {', '.join(NP_DTYPES)})")
        if device not in ("cpu", "cuda"):
            raise Unavailable(f"unknown device {device!r} (known: cpu, cuda)")
        self.device, self.dtype = device, dtype
        self.np_dtype = NP_DTYPES[dtype]
        self.F = Namespace(self)

    def __repr__(self):
        return f"<{self.name} on {self.device}, {self.dtype}>"

    @property
    def label(self) -> str:
        return self.name

    @property
    def is_cuda(self) -> bool:
        return self.device == "cuda"

    # ---- ops -------------------------------------------------------------------------------------------
    def _ops(self) -> dict:
        return {}

    @functools.cached_property
    def _op_table(self) -> dict:
        """_ops() built once per instance: an op keeps its state (torch-compile's compiled function,
        onnxruntime's exported sessions) from one lookup to the next."""
        return self._ops()

    def op(self, name: str):
        fn = self._op_table.get(name)
        if fn is None:
            raise Unavailable(f"{self.name} has no {name} (on {self.device}, {self.dtype})")
        return fn

    def build(self, fn, *args, sync: bool = True, **kwargs):
        """A zero-argument callable running fn(*args, **kwargs); on a GPU it synchronises before it
        returns, so a wall-clock timer around it measures the work, not the launch."""
        call = functools.partial(fn, *args, **kwargs)
        if not (sync and self.is_cuda):
            return call
        wait = self.synchronize

        def run():
            out = call()
            wait()
            return out
        return run

    # ---- data --------------------------------------------------------------------------------------------
    def tensor(self, array):
        raise Unavailable(f"{self.name} has no tensors")

    def randn(self, *shape, scale: float = 1.0, seed: int = 0):
        """Normal(0, scale) values of the dtype on the device (from host numpy unless overridden)."""
        rng = np.random.default_rng(seed)
        return self.tensor(rng.standard_normal(shape, dtype=np.float32) * np.float32(scale))

    def ids(self, values):
        raise Unavailable(f"{self.name} has no integer id tensors")

    def cat(self, tensors, dim: int):
        raise Unavailable(f"{self.name} has no cat")

    def to_numpy(self, x) -> np.ndarray:
        raise Unavailable(f"{self.name} has no host copies")

    def alloc(self, nbytes: int):
        raise Unavailable(f"{self.name} has no raw allocation")

    def fill_zero(self, buf):
        buf.fill(0)
        return buf

    # ---- models ------------------------------------------------------------------------------------------
    def load(self, source, **options) -> "Model":
        raise Unavailable(f"{self.name} loads no models")

    def can_load(self, path) -> None:
        """Raise Unavailable when this implementation cannot read `path`'s checkpoint format."""
        raise Unavailable(f"{self.name} loads no checkpoints")

    def load_checkpoint(self, path):
        raise Unavailable(f"{self.name} loads no checkpoints")

    # ---- device --------------------------------------------------------------------------------------------
    def synchronize(self) -> None:
        pass

    def events(self):
        return WallEvents()

    def memory_stats(self) -> dict:
        """allocated_bytes, peak_bytes, reserved_bytes (None where the implementation keeps none)."""
        return {"allocated_bytes": None, "peak_bytes": None, "reserved_bytes": None, "source": None}

    def reset_peak(self) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def copy_gb_per_s(self) -> float | None:
        """Device-to-device copy rate (bytes read + written per second / 1e9): the memory roofline of
        decode on this device; None where not measured (the cpu)."""
        return None


class Model:
    """A model loaded by one implementation (see the module docstring)."""

    def __init__(self, impl: Impl, source, config: dict | None = None, weight_bytes: int = 0):
        self.impl, self.source, self.config, self.weight_bytes = impl, source, config or {}, weight_bytes
        self.warmup_s = None  # compile/capture time of the decode loop, reported apart from timed runs

    def __repr__(self):
        return f"<{self.impl.name} model {self.source}>"

    @property
    def is_lm(self) -> bool:
        return "vocab_size" in self.config

    def forward(self, *arrays, method: str | None = None) -> list:
        """The model (or its `method`, e.g. a VAE's "decode") on host arrays -> list of host arrays."""
        raise Unavailable(f"{self.impl.name} cannot run {self.source}")

    def device_inputs(self, *arrays):
        """The host arrays as this implementation's inputs on its device (for `run`)."""
        raise Unavailable(f"{self.impl.name} cannot run {self.source} on device inputs")

    def run(self, inputs, method: str | None = None):
        """The forward (or `method`) over `device_inputs`, outputs left on the device (no host copy)."""
        raise Unavailable(f"{self.impl.name} cannot run {self.source} on device inputs")

    def logits(self, ids) -> np.ndarray:
        raise Unavailable(f"{self.impl.name} has no language-model logits for {self.source}")

    def encode(self, features):
        """Encoder-decoder models: run the encoder on host features and keep its output (returned, on
        the device) for the decode loop."""
        raise Unavailable(f"{self.impl.name} has no encoder for {self.source}")

    def start(self, ids, max_new_tokens: int) -> np.ndarray:
        raise Unavailable(f"{self.impl.name} has no decode loop for {self.source}")

    def step(self) -> None:
        raise Unavailable(f"{self.impl.name} has no decode loop for {self.source}")

    def tokens(self) -> np.ndarray:
        raise Unavailable(f"{self.impl.name} has no decode loop for {self.source}")

    def detect(self, image, imgsz: int = 640, conf: float = 0.25, iou: float = 0.7) -> np.ndarray:
        """Object detection of one uint8 (H, W, 3) RGB image, end to end (letterbox, forward, NMS, boxes
        scaled back): (n, 6) rows x1 y1 x2 y2 score class in the image's pixels."""
        raise Unavailable(f"{self.impl.name} has no detection pipeline for {self.source}")

    def prefill(self, ids) -> np.ndarray:
        """The prompt to its first greedy tokens (B,): the time to first token."""
        return self.start(ids, 1)

    def generate(self, ids, max_new_tokens: int) -> np.ndarray:
        """Greedy tokens after each prompt row: (B, max_new_tokens)."""
        self.start(ids, max_new_tokens)
        for _ in range(max_new_tokens - 1):
            self.step()
        return self.tokens()

    @contextlib.contextmanager
    def tap(self, names, callback):
        raise TapsUnsupported(f"{self.impl.name} runs {self.source} as one program: no per-layer outputs")
        yield  # pragma: no cover


def touch(arrays: dict) -> int:
    """Read one byte of every 4 KiB page of each host array (so that mmap'd weights are resident,
    exactly as copied ones already are); the same code for every implementation."""
    total = 0
    for a in arrays.values():
        flat = np.asarray(a).reshape(-1).view(np.uint8)
        if flat.size:
            total += int(flat[::4096].sum(dtype=np.uint64))
    return total


def as_ids(ids) -> np.ndarray:
    """(B, L) int64 host ids from a list, a list of lists or an array."""
    a = np.asarray(ids, dtype=np.int64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"token ids must be (batch, length) with length >= 1, got shape {a.shape}")
    return a
