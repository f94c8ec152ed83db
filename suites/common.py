"""What the asv suites share: implementations as adapters, sizes, skips, device timing, checkpoints.

Benchmark bodies never name an implementation. A suite's ``setup`` asks ``get_impl(impl, device,
dtype)`` for an adapter and binds a callable with ``impl.build(impl.op("softmax"), x, dim=-1)``;
the timed method only calls it. An adapter that cannot do something (torch not installed, no CUDA
device, numpy and bfloat16, the engine and a pickle) raises NotImplementedError with the reason,
which asv (and taper's fallback runner) records as a skip.

Adapters
--------
``engine``  the reference engine (numpy on cpu, cupy on cuda)
``torch``   PyTorch eager, imported guarded; grad mode off
``numpy``   raw numpy arrays (cpu only): what the engine costs over the arrays it wraps
``cupy``    raw cupy arrays (cuda only), on cupy's own memory pool even when the engine's cupy
            backend has hooked cupy's allocator in the same process

Each adapter has: ``name``, ``device``, ``dtype``, ``op(name)`` (torch-named callables: matmul, add,
mul, silu, softmax, layer_norm, rms_norm, conv2d, sdpa, linear, embedding), ``F`` (a
torch.nn.functional-like namespace), ``tensor``/``randn``/``ids``/``cat``/``to_numpy``,
``alloc``/``fill_zero`` (pool suite), ``load_checkpoint`` (load suite), ``load_model`` (a Hugging Face
model directory, ready on the device: models suite), ``build(fn, *args)`` (a
zero-argument callable that runs fn and synchronises on a GPU), ``synchronize``, ``events()`` (a
device timer: CUDA events on cuda), ``memory_stats``/``reset_peak``/``empty_cache``.

Sizes: ``TAPER_BENCH_QUICK=1`` in the environment (read at import) swaps every size list for tiny
ones, so a whole suite runs in seconds (tests, smoke runs); the parameter values name the sizes
actually used.

asv facts this file relies on: setup_cache takes no parameters and its return value is passed first
to setup and the benchmarks; the asv_runner installed here re-runs setup (and teardown) before
every timed call, so setups memoise what they build (``prepared``) and stay cheap.
"""
from __future__ import annotations

import ctypes
import functools
import gc
import math
import mmap
import operator
import os
import time
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

import engine

try:  # guarded: the suites run (engine rows only) without torch
    import torch
except ImportError:  # pragma: no cover - torch is installed wherever the tests run
    torch = None


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


QUICK = _flag("TAPER_BENCH_QUICK")

IMPLS = ["engine", "torch"]  # the contenders; reports pair these two
RAW_IMPLS = ["numpy", "cupy"]  # the arrays under the engine, for its overhead
ALL_IMPLS = IMPLS + RAW_IMPLS
DEVICES = ["cpu", "cuda"]
DTYPES = ["float32", "float16", "bfloat16"]
NP_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
             "bfloat16": np.dtype(ml_dtypes.bfloat16)}
MIB = 1 << 20


def sizes(full, quick):
    """The full list, or the tiny one under TAPER_BENCH_QUICK=1."""
    return list(quick if QUICK else full)


# ---- memoised setup -------------------------------------------------------------------------------
_MEMO: dict = {}


def prepared(key, factory):
    """Build once per process (asv re-runs setup before every timed call), then reuse."""
    if key not in _MEMO:
        _MEMO[key] = factory()
    return _MEMO[key]


def reset() -> None:
    """Forget memoised inputs and give cached device memory back, as a fresh process would start.
    taper's fallback runner calls this between parameter sets (asv uses a process each)."""
    _MEMO.clear()
    gc.collect(1)  # tensors go by refcount; a full collection costs ~30 ms with torch loaded
    for dev in DEVICES:
        b = engine.backend(dev)
        if getattr(b, "available", False):
            b.pool.empty_cache()
            b.pool.reset_peak()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# ---- timing helpers --------------------------------------------------------------------------------
class _WallEvents:
    """perf_counter pairs, for the cpu."""

    def start(self):
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        return time.perf_counter() - self._t0


class _CudaEvents:
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
        return self._a_elapsed()

    def _a_elapsed(self) -> float:
        if hasattr(self._a, "elapsed_time"):  # torch.cuda.Event: ms
            return self._a.elapsed_time(self._b) / 1e3
        import cupy  # cupy.cuda.Event: module-level get_elapsed_time, ms
        return cupy.cuda.get_elapsed_time(self._a, self._b) / 1e3


@dataclass
class Case:
    """One prepared benchmark case: the adapter, a callable that synchronises, one that only launches."""

    impl: "Impl"
    run: callable
    launch: callable
    first_call_s: float = math.nan

    def device_seconds(self, n: int = 20, repeats: int = 5) -> float:
        """Per-call time of `n` back-to-back launches between CUDA events (median of `repeats`);
        NaN on the cpu, where the timed call already is the device time."""
        if self.impl.device != "cuda":
            return math.nan
        n = 3 if QUICK else n
        ev = self.impl.events()
        out = []
        for _ in range(repeats):
            self.impl.synchronize()
            ev.start()
            for _ in range(n):
                self.launch()
            out.append(ev.stop() / n)
        return float(np.median(out))

    def peak_bytes(self) -> float:
        """Peak bytes allocated during one call, over what was allocated before it (inputs are
        excluded): the engine pool's peak beside torch.cuda.max_memory_allocated; NaN when the
        implementation keeps no allocator statistics (torch and numpy on the cpu)."""
        self.impl.synchronize()
        before = self.impl.memory_stats().get("allocated_bytes")
        if before is None:
            return math.nan
        self.impl.reset_peak()
        out = self.run()
        peak = self.impl.memory_stats().get("peak_bytes")
        del out
        return math.nan if peak is None else float(peak - before)


def case(impl: "Impl", fn, *args, warmup: int = 2, **kwargs) -> Case:
    """Bind fn(*args, **kwargs) to the adapter and warm it up (the first call, which includes any
    kernel compilation, is timed apart as first_call_s)."""
    run = impl.build(fn, *args, **kwargs)
    launch = impl.build(fn, *args, sync=False, **kwargs)
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        run()
    return Case(impl, run, launch, first)


# ---- adapters ------------------------------------------------------------------------------------------
class Impl:
    """The interface every implementation offers to the suites (see the module docstring)."""

    name = "?"

    def __init__(self, device: str, dtype: str):
        if dtype not in NP_DTYPES:
            raise NotImplementedError(f"dtype {dtype!r} is not benchmarked (known: {', '.join(NP_DTYPES)})")
        self.device, self.dtype = device, dtype
        self.np_dtype = NP_DTYPES[dtype]

    def __repr__(self):
        return f"<{self.name} on {self.device}, {self.dtype}>"

    @property
    def is_cuda(self) -> bool:
        return self.device == "cuda"

    # ---- ops -----------------------------------------------------------------------------------------
    def _ops(self) -> dict:
        return {}

    def op(self, name: str):
        fn = self._ops().get(name)
        if fn is None:
            raise NotImplementedError(f"{self.name} has no {name} (on {self.device}, {self.dtype})")
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

    # ---- data ----------------------------------------------------------------------------------------
    def tensor(self, array):
        raise NotImplementedError

    def randn(self, *shape, scale: float = 1.0, seed: int = 0):
        """Normal(0, scale) values of the adapter's dtype on its device (from host numpy by default)."""
        rng = np.random.default_rng(seed)
        return self.tensor(rng.standard_normal(shape, dtype=np.float32) * np.float32(scale))

    def ids(self, values):
        raise NotImplementedError(f"{self.name} has no integer id tensors")

    def cat(self, tensors, dim: int):
        raise NotImplementedError(f"{self.name} has no cat")

    def to_numpy(self, x) -> np.ndarray:
        raise NotImplementedError

    def alloc(self, nbytes: int):
        raise NotImplementedError(f"{self.name} has no raw allocation")

    def fill_zero(self, buf):
        buf.fill(0)
        return buf

    def can_load(self, path) -> None:
        """Raise NotImplementedError (a skip) when this implementation cannot read `path`'s format."""
        raise NotImplementedError(f"{self.name} loads no checkpoints")

    def load_checkpoint(self, path):
        """{name: tensor} of a checkpoint, ready on the device (see bench_load)."""
        raise NotImplementedError(f"{self.name} loads no checkpoints")

    def load_model(self, path):
        """The model of a Hugging Face model directory (config.json + safetensors), in the adapter's
        dtype, ready on its device (on the cpu: every weight page read once)."""
        raise NotImplementedError(f"{self.name} loads no models")

    # ---- device ----------------------------------------------------------------------------------------
    def synchronize(self) -> None:
        pass

    def events(self):
        return _WallEvents()

    def memory_stats(self) -> dict:
        """allocated_bytes, peak_bytes, reserved_bytes (None where the implementation keeps none)."""
        return {"allocated_bytes": None, "peak_bytes": None, "reserved_bytes": None, "source": None}

    def reset_peak(self) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    @property
    def label(self) -> str:
        return self.name


def _raw_ops(xp) -> dict:
    """numpy/cupy compositions with torch's signatures, written the obvious way (the baseline for
    what the engine adds on top of the same arrays)."""

    def softmax(x, dim=-1):
        e = xp.exp(x - x.max(axis=dim, keepdims=True))
        return e / e.sum(axis=dim, keepdims=True)

    def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
        axes = tuple(range(-len(tuple(normalized_shape)), 0))
        mu = x.mean(axis=axes, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
        y = (x - mu) / xp.sqrt(var + eps).astype(x.dtype)
        y = y * weight if weight is not None else y
        return y + bias if bias is not None else y

    def rms_norm(x, normalized_shape, weight=None, eps=1e-6):
        axes = tuple(range(-len(tuple(normalized_shape)), 0))
        y = x / xp.sqrt((x * x).mean(axis=axes, keepdims=True) + eps).astype(x.dtype)
        return y * weight if weight is not None else y

    def silu(x):
        return x / (1 + xp.exp(-x))

    def sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
        if k.shape[-3] != q.shape[-3]:
            rep = q.shape[-3] // k.shape[-3]
            k, v = xp.repeat(k, rep, axis=-3), xp.repeat(v, rep, axis=-3)
        s = (q @ xp.swapaxes(k, -1, -2)) * (scale or 1.0 / math.sqrt(q.shape[-1]))
        if is_causal:
            L, S = q.shape[-2], k.shape[-2]
            s = xp.where(xp.tril(xp.ones((L, S), dtype=bool)), s, -xp.inf)
        return softmax(s, -1).astype(q.dtype) @ v

    def linear(x, w, b=None):
        y = x @ w.T
        return y + b if b is not None else y

    def embedding(ids, w):
        return w[ids]

    return {"matmul": xp.matmul, "add": operator.add, "mul": operator.mul, "silu": silu,
            "softmax": softmax, "layer_norm": layer_norm, "rms_norm": rms_norm, "sdpa": sdpa,
            "linear": linear, "embedding": embedding}


class _Namespace:
    """F.<op> access to an adapter's ops, so workload code reads like torch.nn.functional."""

    _ALIASES = {"scaled_dot_product_attention": "sdpa"}

    def __init__(self, impl):
        self._impl = impl

    def __getattr__(self, name):
        return self._impl.op(self._ALIASES.get(name, name))


class EngineImpl(Impl):
    name = "engine"

    def __init__(self, device, dtype):
        super().__init__(device, dtype)
        backend = engine.backend(device)
        if not getattr(backend, "available", False):
            try:
                backend.synchronize()
            except Exception as e:  # the UnavailableBackend's one clear error
                raise NotImplementedError(f"engine: {e}") from None
            raise NotImplementedError(f"engine: device {device} is not available")
        self.backend = backend
        self.edtype = getattr(engine, dtype)
        self.F = engine.functional

    @property
    def label(self):
        return f"engine ({self.backend.name} backend)"

    def _ops(self):
        F = engine.functional
        return {"matmul": engine.matmul, "add": operator.add, "mul": operator.mul, "silu": F.silu,
                "softmax": F.softmax, "layer_norm": F.layer_norm, "rms_norm": F.rms_norm,
                "conv2d": F.conv2d, "sdpa": F.scaled_dot_product_attention, "linear": F.linear,
                "embedding": F.embedding}

    def tensor(self, array):
        return engine.tensor(np.ascontiguousarray(array), dtype=self.edtype, device=self.device)

    def randn(self, *shape, scale=1.0, seed=0):
        if not self.is_cuda:
            return super().randn(*shape, scale=scale, seed=seed)
        # engine.randn draws on the host (float64) for reproducibility across devices: far too slow
        # and too big for 7B weights. Draw with cupy on the device instead; with the engine's cupy
        # backend loaded, cupy's allocations come from the engine's pool, so its stats stay exact.
        import cupy
        with cupy.cuda.Device(self.backend.device.index):
            a = cupy.random.RandomState(seed).standard_normal(size=shape, dtype=cupy.float32)
            if scale != 1.0:
                a *= np.float32(scale)
        x = engine.from_dlpack(a)  # float32, zero-copy; the cast below makes the pooled copy
        return x if self.edtype is engine.float32 else x.to(self.edtype)

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

    def can_load(self, path):
        if not str(path).endswith(".safetensors"):
            raise NotImplementedError("engine reads safetensors only (it never unpickles); "
                                      "convert .pt checkpoints with `taper convert`")

    def load_checkpoint(self, path):
        path = str(path)
        self.can_load(path)
        import engine.io
        out = {}
        with engine.io.safe_open(path) as f:
            for name in f.keys():
                arr = f.get_numpy(name)  # a zero-copy view of the mapping
                out[name] = (engine.from_numpy(arr) if not self.is_cuda
                             else engine.tensor(arr, device=self.device))
        # the mapping stays alive through the views after close()
        if not self.is_cuda:
            touch({k: v.storage.data for k, v in out.items()})
        return out

    def load_model(self, path):
        try:
            from engine import models
        except ImportError:
            raise NotImplementedError("engine.models is not available") from None
        model = models.from_pretrained(path, dtype=self.edtype, device=self.device)
        if self.is_cuda:
            self.synchronize()
        else:
            touch({k: v.storage.data for k, v in model.state_dict().items()})
        return model

    def synchronize(self):
        self.backend.synchronize()

    def events(self):
        if not self.is_cuda:
            return _WallEvents()
        import cupy
        return _CudaEvents(lambda: cupy.cuda.Event(), getattr(self.backend, "stream", None))

    def memory_stats(self):
        s = dict(self.backend.pool.stats())
        s["source"] = "engine StoragePool"
        return s

    def reset_peak(self):
        self.backend.pool.reset_peak()

    def empty_cache(self):
        self.backend.pool.empty_cache()


class TorchImpl(Impl):
    name = "torch"

    def __init__(self, device, dtype):
        super().__init__(device, dtype)
        if torch is None:
            raise NotImplementedError("torch is not installed")
        if device == "cuda" and not torch.cuda.is_available():
            raise NotImplementedError("torch: no CUDA device (torch.cuda.is_available() is False)")
        torch.set_grad_enabled(False)  # inference: no autograd bookkeeping in any timed call
        self.tdevice = torch.device(device)
        self.tdtype = getattr(torch, dtype)
        self.F = torch.nn.functional

    @property
    def label(self):
        return f"torch {torch.__version__}"

    def _ops(self):
        F = torch.nn.functional
        return {"matmul": torch.matmul, "add": torch.add, "mul": torch.mul, "silu": F.silu,
                "softmax": F.softmax, "layer_norm": F.layer_norm, "rms_norm": F.rms_norm,
                "conv2d": F.conv2d, "sdpa": F.scaled_dot_product_attention, "linear": F.linear,
                "embedding": F.embedding}

    def tensor(self, array):
        a = np.ascontiguousarray(array)
        if a.dtype == NP_DTYPES["bfloat16"]:
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

    def can_load(self, path):
        if str(path).endswith(".safetensors"):
            try:
                import safetensors.torch  # noqa: F401
            except ImportError:
                raise NotImplementedError("torch: the safetensors package is not installed") from None

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
            touch({k: _torch_bytes(v) for k, v in out.items()})
        return out

    def load_model(self, path):
        try:
            from transformers import AutoModelForCausalLM
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise NotImplementedError("torch: transformers is not installed") from None
        hf_logging.disable_progress_bar()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=self.tdtype).to(self.tdevice).eval()
        if self.is_cuda:
            self.synchronize()
        else:
            touch({k: _torch_bytes(v) for k, v in model.state_dict().items()})
        return model

    def synchronize(self):
        if self.is_cuda:
            torch.cuda.synchronize(self.tdevice)

    def events(self):
        if not self.is_cuda:
            return _WallEvents()
        return _CudaEvents(lambda: torch.cuda.Event(enable_timing=True))

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


class NumpyImpl(Impl):
    name = "numpy"
    xp = np

    def __init__(self, device, dtype):
        super().__init__(device, dtype)
        if device != "cpu":
            raise NotImplementedError("numpy runs on the cpu only (the raw cuda arrays are 'cupy')")
        if dtype == "bfloat16":
            raise NotImplementedError("numpy has no native bfloat16 kernels (ml_dtypes only stores them)")
        self.F = _Namespace(self)

    @property
    def label(self):
        return f"numpy {np.__version__}"

    def _ops(self):
        return _raw_ops(self.xp)

    def tensor(self, array):
        return np.ascontiguousarray(array).astype(self.np_dtype)

    def ids(self, values):
        return np.asarray(values, dtype=np.int64)

    def cat(self, tensors, dim):
        return np.concatenate(tensors, axis=dim)

    def to_numpy(self, x):
        return np.asarray(x, dtype=np.float32)

    def alloc(self, nbytes):
        return np.empty(nbytes, np.uint8)


class CupyImpl(NumpyImpl):
    name = "cupy"

    def __init__(self, device, dtype):
        Impl.__init__(self, device, dtype)
        if device != "cuda":
            raise NotImplementedError("cupy runs on cuda only (the raw cpu arrays are 'numpy')")
        try:
            import cupy
        except ImportError:
            raise NotImplementedError("cupy is not installed") from None
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise NotImplementedError("cupy: no CUDA device")
        except cupy.cuda.runtime.CUDARuntimeError as e:
            raise NotImplementedError(f"cupy: no usable CUDA device ({e})") from None
        if dtype == "bfloat16":
            raise NotImplementedError("raw cupy bfloat16 is left to the engine's kernels")
        self.xp = cupy
        # cupy's own caching pool, even if the engine's backend has hooked cupy's allocator
        self.pool = cupy.cuda.MemoryPool()
        self.F = _Namespace(self)

    @property
    def label(self):
        return f"cupy {self.xp.__version__}"

    def _own_pool(self):
        return self.xp.cuda.using_allocator(self.pool.malloc)

    def build(self, fn, *args, sync=True, **kwargs):
        call = functools.partial(fn, *args, **kwargs)
        own, stream = self._own_pool, self.xp.cuda.get_current_stream()

        def run():
            with own():
                out = call()
            if sync:
                stream.synchronize()
            return out
        return run

    def tensor(self, array):
        with self._own_pool():
            return self.xp.asarray(np.ascontiguousarray(array).astype(self.np_dtype))

    def ids(self, values):
        with self._own_pool():
            return self.xp.asarray(np.asarray(values, dtype=np.int64))

    def cat(self, tensors, dim):
        with self._own_pool():
            return self.xp.concatenate(tensors, axis=dim)

    def to_numpy(self, x):
        return self.xp.asnumpy(x).astype(np.float32)

    def alloc(self, nbytes):
        with self._own_pool():
            return self.xp.empty(nbytes, self.xp.uint8)

    def synchronize(self):
        self.xp.cuda.get_current_stream().synchronize()

    def events(self):
        return _CudaEvents(lambda: self.xp.cuda.Event())

    def memory_stats(self):
        return {"allocated_bytes": self.pool.used_bytes(), "peak_bytes": None,
                "reserved_bytes": self.pool.total_bytes(), "source": "cupy MemoryPool"}

    def empty_cache(self):
        self.pool.free_all_blocks()


ADAPTERS = {"engine": EngineImpl, "torch": TorchImpl, "numpy": NumpyImpl, "cupy": CupyImpl}


def get_impl(name: str, device: str, dtype: str = "float32") -> Impl:
    """The adapter for (implementation, device, dtype); NotImplementedError (a skip) when unavailable."""
    try:
        cls = ADAPTERS[name]
    except KeyError:
        raise NotImplementedError(f"unknown implementation {name!r} (known: {', '.join(ADAPTERS)})") from None
    return cls(device, dtype)


def available(name: str, device: str, dtype: str = "float32") -> bool:
    try:
        get_impl(name, device, dtype)
        return True
    except NotImplementedError:
        return False


def _torch_bytes(t):
    """A numpy byte view of a cpu torch tensor (bfloat16 included), for touch()."""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy()


def touch(arrays: dict) -> int:
    """Read one byte of every 4 KiB page of each host array (so that mmap'd weights are resident,
    exactly as copied ones already are); the same code for every implementation."""
    total = 0
    for a in arrays.values():
        flat = np.asarray(a).reshape(-1).view(np.uint8)
        if flat.size:
            total += int(flat[::4096].sum(dtype=np.uint64))
    return total


# ---- page cache -------------------------------------------------------------------------------------
_libc = None


def resident_fraction(path) -> float | None:
    """The share of a file's pages in the page cache (mincore on a mapping), None if unknown."""
    global _libc
    size = os.path.getsize(path)
    if size == 0:
        return 0.0
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        with open(path, "rb") as f, mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as mm:
            view = np.frombuffer(mm, np.uint8)
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            rc = _libc.mincore(ctypes.c_void_p(view.ctypes.data), ctypes.c_size_t(size), vec)
            del view
        if rc != 0:
            return None
        return float((np.frombuffer(vec, np.uint8) & 1).mean())
    except (OSError, AttributeError, ValueError):
        return None


def drop_page_cache(paths) -> str | None:
    """Evict the files from the page cache. Returns None when they are out (checked with mincore),
    else the reason they could not be. Tries a per-file posix_fadvise(DONTNEED) first (it spares the
    rest of a shared box), then `sync; echo 3 > /proc/sys/vm/drop_caches`, which needs root."""
    paths = [str(p) for p in paths]

    def all_out():
        fr = [resident_fraction(p) for p in paths]
        return None if any(f is None for f in fr) else max(fr) <= 0.05

    tried = []
    if hasattr(os, "posix_fadvise"):
        for p in paths:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        ok = all_out()
        if ok:
            return None
        tried.append("posix_fadvise(DONTNEED) left pages resident" if ok is False
                     else "mincore cannot confirm eviction")
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        ok = all_out()
        if ok:
            return None
        tried.append("drop_caches left pages resident" if ok is False else "mincore cannot confirm eviction")
    except OSError as e:
        tried.append(f"cannot write /proc/sys/vm/drop_caches ({e.strerror}; needs root outside a "
                     "read-only /proc)")
    return "cold page cache not possible here: " + "; ".join(tried)


def warm_page_cache(paths) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(16 * MIB):
                pass


# ---- checkpoints and a Llama-style decoder ---------------------------------------------------------------
@dataclass(frozen=True)
class DecoderShape:
    """Widths of a Llama-style decoder (names as in the HF config)."""

    name: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def weight_shapes(self) -> dict:
        """HF Llama state-dict names -> shapes (no rotary buffers: the workload has no rotary)."""
        H, I, V, hd = self.hidden_size, self.intermediate_size, self.vocab_size, self.head_dim
        kv = self.num_key_value_heads * hd
        out = {"model.embed_tokens.weight": (V, H)}
        for i in range(self.num_hidden_layers):
            p = f"model.layers.{i}."
            out.update({p + "input_layernorm.weight": (H,), p + "self_attn.q_proj.weight": (H, H),
                        p + "self_attn.k_proj.weight": (kv, H), p + "self_attn.v_proj.weight": (kv, H),
                        p + "self_attn.o_proj.weight": (H, H), p + "post_attention_layernorm.weight": (H,),
                        p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H),
                        p + "mlp.down_proj.weight": (H, I)})
        out.update({"model.norm.weight": (H,), "lm_head.weight": (V, H)})
        return out

    def num_parameters(self) -> int:
        return sum(math.prod(s) for s in self.weight_shapes().values())


DECODERS = {
    "tiny": DecoderShape("tiny", 256, 64, 2, 4, 2, 172),
    "small": DecoderShape("small", 8192, 1024, 4, 16, 4, 2816),
    "tinyllama-4l": DecoderShape("tinyllama-4l", 32000, 2048, 4, 32, 4, 5632),
    "tinyllama-1.1b": DecoderShape("tinyllama-1.1b", 32000, 2048, 22, 32, 4, 5632),
    "llama-2-7b-4l": DecoderShape("llama-2-7b-4l", 32000, 4096, 4, 32, 32, 11008),
    "llama-2-7b": DecoderShape("llama-2-7b", 32000, 4096, 32, 32, 32, 11008),
}


def decoder_arrays(shape: DecoderShape, dtype: str, seed: int = 0) -> dict:
    """Host weights for a decoder (norm weights 1, the rest N(0, 0.02)), in `dtype`."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, s in shape.weight_shapes().items():
        a = (np.ones(s, np.float32) if name.endswith("norm.weight")
             else rng.standard_normal(s, dtype=np.float32) * np.float32(0.02))
        out[name] = a.astype(NP_DTYPES[dtype])
    return out


def write_checkpoint(directory, arrays: dict, formats=("pt", "safetensors"), stem="model") -> dict:
    """Write the same tensors as model.safetensors (engine.io) and model.pt (torch.save, when torch
    is installed); returns {format: path}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    if "safetensors" in formats:
        import engine.io
        p = directory / f"{stem}.safetensors"
        engine.io.save_file(arrays, p)
        paths["safetensors"] = str(p)
    if "pt" in formats and torch is not None:
        p = directory / f"{stem}.pt"
        state = {}
        for k, a in arrays.items():
            t = torch.from_numpy(np.ascontiguousarray(a.view(np.int16) if a.dtype == NP_DTYPES["bfloat16"] else a))
            state[k] = t.view(torch.bfloat16) if a.dtype == NP_DTYPES["bfloat16"] else t
        torch.save(state, p)
        paths["pt"] = str(p)
    for p in paths.values():  # the bytes are on disk, so a later cold read really reads
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return paths


def llama_shape(preset: str) -> DecoderShape:
    """The DecoderShape of an engine.models llama preset (its state-dict names are the HF ones)."""
    from engine.models.llama import PRESETS, Config
    c = Config.from_dict(dict(PRESETS[preset]))
    if c.head_dim != c.hidden_size // c.num_attention_heads or c.tie_word_embeddings or c.attention_bias \
            or c.mlp_bias:
        raise NotImplementedError(f"llama preset {preset!r} is not a plain Llama layout")
    return DecoderShape(f"llama:{preset}", c.vocab_size, c.hidden_size, c.num_hidden_layers,
                        c.num_attention_heads, c.num_key_value_heads, c.intermediate_size)


def write_model_dir(directory, preset: str, dtype: str, seed: int = 0) -> str:
    """A Hugging Face llama model directory (config.json + model.safetensors, random weights) that both
    engine.models.from_pretrained and transformers' from_pretrained read."""
    import dataclasses
    import json

    import engine.io
    from engine.models.llama import PRESETS, Config
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {k: v for k, v in dataclasses.asdict(Config.from_dict(dict(PRESETS[preset]))).items() if v is not None}
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"], torch_dtype=dtype)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    engine.io.save_file(decoder_arrays(llama_shape(preset), dtype, seed), directory / "model.safetensors",
                        metadata={"format": "pt"})
    return str(directory)


class Decoder:
    """A Llama-style decoder (RMSNorm, GQA attention through sdpa, SwiGLU MLP, no rotary) written
    once against the adapter interface, so engine and torch run exactly the same work. Greedy decode
    with a concatenating KV cache; batch 1."""

    def __init__(self, impl: Impl, shape: DecoderShape, weights: dict):
        self.impl, self.shape, self.w = impl, shape, weights
        self.F = impl.F

    @classmethod
    def random(cls, impl: Impl, shape: DecoderShape, seed: int = 0):
        """Random weights made on the device (no host copy: a 7B model in fp16 never visits RAM)."""
        w = {}
        for i, (name, s) in enumerate(shape.weight_shapes().items()):
            if name.endswith("norm.weight"):
                w[name] = impl.tensor(np.ones(s, np.float32))
            else:
                w[name] = impl.randn(*s, scale=0.02, seed=seed + i)
        return cls(impl, shape, w)

    def forward(self, ids, cache=None):
        """ids: (1, T) ints -> logits of the last position (1, 1, V); `cache` (a list of [k, v] per
        layer, or None) is extended in place."""
        F, w, s = self.F, self.w, self.shape
        H, nh, nkv, hd = s.hidden_size, s.num_attention_heads, s.num_key_value_heads, s.head_dim
        T = ids.shape[-1]
        h = F.embedding(ids, w["model.embed_tokens.weight"])  # (1, T, H)
        for i in range(s.num_hidden_layers):
            p = f"model.layers.{i}."
            x = F.rms_norm(h, (H,), w[p + "input_layernorm.weight"], eps=1e-5)
            q = F.linear(x, w[p + "self_attn.q_proj.weight"]).reshape(1, T, nh, hd).transpose(1, 2)
            k = F.linear(x, w[p + "self_attn.k_proj.weight"]).reshape(1, T, nkv, hd).transpose(1, 2)
            v = F.linear(x, w[p + "self_attn.v_proj.weight"]).reshape(1, T, nkv, hd).transpose(1, 2)
            if cache is not None:
                if len(cache) > i:  # (1, nkv, S, hd): append this step's keys and values
                    k = self.impl.cat([cache[i][0], k], 2)
                    v = self.impl.cat([cache[i][1], v], 2)
                    cache[i] = [k, v]
                else:
                    cache.append([k, v])
            causal = T > 1 and k.shape[2] == T  # prefill; one new token needs no mask
            a = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=nkv != nh)
            h = h + F.linear(a.transpose(1, 2).reshape(1, T, H), w[p + "self_attn.o_proj.weight"])
            x = F.rms_norm(h, (H,), w[p + "post_attention_layernorm.weight"], eps=1e-5)
            g = F.silu(F.linear(x, w[p + "mlp.gate_proj.weight"])) * F.linear(x, w[p + "mlp.up_proj.weight"])
            h = h + F.linear(g, w[p + "mlp.down_proj.weight"])
        h = F.rms_norm(h[:, T - 1:], (H,), w["model.norm.weight"], eps=1e-5)
        return F.linear(h, w["lm_head.weight"])

    def next_token(self, logits) -> int:
        return int(logits.reshape(-1).argmax().item())

    def generate(self, prompt, new_tokens: int):
        """Greedy decode; returns (tokens, prefill_s, per-token decode seconds)."""
        impl = self.impl
        cache = []
        t0 = time.perf_counter()
        logits = self.forward(impl.ids([list(prompt)]), cache)
        tok = self.next_token(logits)
        prefill = time.perf_counter() - t0
        out, steps = [tok], []
        for _ in range(new_tokens - 1):
            t0 = time.perf_counter()
            logits = self.forward(impl.ids([[tok]]), cache)
            tok = self.next_token(logits)  # reads the token on the host: the step is synchronised
            steps.append(time.perf_counter() - t0)
            out.append(tok)
        return out, prefill, steps
