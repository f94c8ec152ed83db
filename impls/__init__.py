"""Implementations behind one interface: what `taper verify` compares and what the suites measure.

    import impls
    im = impls.get("torch-compile", device="cuda", dtype="float16")   # impls.Unavailable if it cannot run
    lm = im.load("llama:llama-2-7b")            # a preset, a HF model directory, or module:factory
    first = lm.start(prompt_ids, max_new_tokens=128)   # prefill; greedy tokens stay on the device
    for _ in range(127):
        lm.step()
    tokens = lm.tokens()                        # (B, n) host ints, one read at the end

One file per implementation, one registry (REGISTRY). An implementation that cannot run here (no
torch, no GPU, no onnxruntime) raises Unavailable with its reason, which asv and the suites record
as a skip. `taper impls` lists them with their availability on this machine.

Kinds: `engine` is the candidate; `torch`, `torch-compile` and `onnxruntime` are the alternatives a
user would pick instead (speed is always reported against the best of them); `numpy` and `cupy` are
the raw arrays under the engine, measured to show what the engine's dispatch costs over them.
"""
from __future__ import annotations

import importlib

from impls.base import Impl, Model, TapsUnsupported, Unavailable  # noqa: F401

REGISTRY = {
    "engine": "impls.engine:EngineImpl",
    "torch": "impls.torch_eager:TorchImpl",
    "torch-compile": "impls.torch_compile:TorchCompileImpl",
    "onnxruntime": "impls.onnxruntime:OnnxRuntimeImpl",
    "numpy": "impls.raw:NumpyImpl",
    "cupy": "impls.raw:CupyImpl",
}
CANDIDATE = "engine"
ALTERNATIVES = ("torch", "torch-compile", "onnxruntime")
RAW = ("numpy", "cupy")
KIND = {CANDIDATE: "candidate", **{n: "alternative" for n in ALTERNATIVES}, **{n: "raw" for n in RAW}}
NAMES = tuple(REGISTRY)
MODEL_IMPLS = (CANDIDATE,) + ALTERNATIVES  # those that load models (the raw arrays do not)
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")


def impl_class(name: str):
    if name not in REGISTRY:
        raise Unavailable(f"unknown implementation {name!r} (known: {', '.join(REGISTRY)})")
    module, _, cls = REGISTRY[name].partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as e:  # a guarded dependency failed at import
        raise Unavailable(f"{name}: {e}") from None


def get(name: str, device: str = "cpu", dtype: str = "float32") -> Impl:
    """The implementation `name` on `device` in `dtype`; Unavailable (a NotImplementedError) with the
    reason when it cannot run here."""
    return impl_class(name)(device, dtype)


def available(name: str, device: str = "cpu", dtype: str = "float32") -> bool:
    try:
        get(name, device, dtype)
        return True
    except NotImplementedError:
        return False


def availability(names=NAMES, devices=DEVICES, dtype: str = "float32") -> list[dict]:
    """One row per (implementation, device): kind, available, and the reason or the label."""
    rows = []
    for name in names:
        for dev in devices:
            try:
                im = get(name, dev, dtype)
                rows.append({"impl": name, "kind": KIND[name], "device": dev, "available": True, "detail": im.label})
            except NotImplementedError as e:
                rows.append({"impl": name, "kind": KIND.get(name, "?"), "device": dev, "available": False,
                             "detail": str(e)})
    return rows
