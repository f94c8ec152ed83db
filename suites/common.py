"""What the asv suites share: implementations, sizes, skips, device timing, checkpoints.

Benchmark bodies never name an implementation (tests/test_suites.py checks). A suite's ``setup`` asks
``get_impl(impl, device, dtype)`` (impls.get: engine, torch, torch-compile, onnxruntime, and the raw
numpy/cupy arrays) and binds a callable with ``impl.build(impl.op("softmax"), x, dim=-1)`` or loads a
model with ``impl.load(source)``; the timed method only calls it. An implementation that cannot do
something raises impls.Unavailable (a NotImplementedError) with the reason, which asv (and taper's
own runner) records as a skip. impls/base.py documents the interface.

Sizes: ``TAPER_BENCH_QUICK=1`` in the environment (read at import) swaps every size list for tiny
ones, so a whole suite runs in seconds (tests, smoke runs); the parameter values name the sizes
actually used.

asv facts this file relies on: setup_cache takes no parameters and its return value is passed first
to setup and the benchmarks; the asv_runner installed here re-runs setup (and teardown) before
every timed call, so setups memoise what they build (``prepared``) and stay cheap.

Modules: this file holds the memoised setup and the names the suites import; it re-exports the rest,
so ``from suites.common import ...`` reaches everything. ``suites.config``: the TAPER_BENCH_QUICK
switch, parameter lists, dtypes, guarded torch. ``suites.timing``: ``Case``/``case``, device time and
peak memory. ``suites.workloads``: page-cache control, checkpoint and model-dir writers, the
Llama-style ``Decoder`` written once against the op interface.
"""
from __future__ import annotations

import gc

import numpy as np

import engine
import impls
from impls.base import Impl, touch  # noqa: F401
from suites.config import (ALL_IMPLS, DEVICES, DTYPES, IMPLS, MIB, NP_DTYPES, QUICK, RAW_IMPLS,  # noqa: F401
                           _flag, sizes, torch)
from suites.timing import Case, case  # noqa: F401
from suites.workloads import (DECODERS, Decoder, DecoderShape, decoder_arrays, drop_page_cache,  # noqa: F401
                              llama_shape, resident_fraction, speech_audio, speech_features, warm_page_cache,
                              write_checkpoint, write_gguf, write_model_dir)


# ---- memoised setup -------------------------------------------------------------------------------
_MEMO: dict = {}


_MEASURED: dict = {}


def measured(key, factory):
    """A measurement made once per process and kept across reset(): a suite whose setup is costly
    (an LLM loaded and compiled) measures every metric of a parameter set in one go, and each track_
    method reports its part. (asv proper, with a process per benchmark, measures again.) A skip
    (NotImplementedError, e.g. impls.Unavailable after the model loaded) is kept too: later calls
    raise the same exception without loading again."""
    if key not in _MEASURED:
        try:
            _MEASURED[key] = factory()
        except NotImplementedError as e:
            _MEASURED[key] = e
    out = _MEASURED[key]
    if isinstance(out, NotImplementedError):
        raise out.with_traceback(None)  # its old frames hold the model; each raise starts afresh
    return out


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


# ---- implementations (impls/: one file each, one registry) ------------------------------------------------
def get_impl(name: str, device: str, dtype: str = "float32") -> Impl:
    """The implementation for (name, device, dtype); NotImplementedError (a skip) when unavailable."""
    return impls.get(name, device, dtype)


def available(name: str, device: str, dtype: str = "float32") -> bool:
    return impls.available(name, device, dtype)
