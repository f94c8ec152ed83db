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

Modules: this file holds the adapters, the memoised setup and the names the suites import; it
re-exports the rest, so ``from suites.common import ...`` reaches everything. ``suites.config``: the
TAPER_BENCH_QUICK switch, parameter lists, dtypes, guarded torch. ``suites.timing``: timers (CUDA
events), ``Case``/``case``, device time and peak memory. ``suites.workloads``: page-cache control,
checkpoint and model-dir writers, the Llama-style ``Decoder``. ``suites.raw_ops``: the raw numpy/cupy ops.
"""
from __future__ import annotations

import functools
import gc
import operator

import numpy as np

import engine
from suites.config import (ALL_IMPLS, DEVICES, DTYPES, IMPLS, MIB, NP_DTYPES, QUICK, RAW_IMPLS,  # noqa: F401
                           _flag, sizes, torch)
from suites.raw_ops import _Namespace, _raw_ops  # noqa: F401
from suites.timing import Case, _CudaEvents, _WallEvents, case  # noqa: F401
from suites.workloads import (DECODERS, Decoder, DecoderShape, decoder_arrays, drop_page_cache,  # noqa: F401
                              llama_shape, resident_fraction, warm_page_cache, write_checkpoint, write_model_dir)


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
