"""Device registry: "cpu", "cuda", "cuda:N" -> one backend instance each.

The default device comes from the ENGINE_DEVICE environment variable ("cpu" when unset). Adding a
backend means adding a file under engine/backends and a line in BACKENDS; no other code checks for
CUDA.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

BACKENDS = {
    "cpu": "engine.backends.numpy_backend:NumpyBackend",
    "cuda": "engine.backends.cupy_backend:CupyBackend",
}


@dataclass(frozen=True)
class Device:
    type: str
    index: int = 0

    def __eq__(self, other):  # tensors of one backend share its Device object: identity first (ops compare devices)
        if self is other:
            return True
        if type(other) is not Device:
            return NotImplemented
        return self.type == other.type and self.index == other.index

    def __hash__(self) -> int:
        return hash((self.type, self.index))

    def __str__(self) -> str:
        return self.type if self.type == "cpu" else f"{self.type}:{self.index}"

    def __repr__(self) -> str:
        return f"device('{self}')"


_instances: dict = {}


def parse(spec) -> Device:
    if isinstance(spec, Device):
        return spec
    if spec is None:
        return default_device()
    text = str(spec).strip().lower()
    kind, _, idx = text.partition(":")
    if kind not in BACKENDS:
        raise ValueError(f"unknown device {spec!r}; known: {', '.join(BACKENDS)} (with :N for an index)")
    if idx and not idx.isdigit():
        raise ValueError(f"bad device index in {spec!r}: expected an integer after ':'")
    return Device(kind, int(idx) if idx else 0)


def default_device() -> Device:
    return parse(os.environ.get("ENGINE_DEVICE", "cpu") or "cpu")


def backend(spec=None):
    """The backend for a device; an UnavailableBackend (which raises on use) when it cannot load."""
    dev = parse(spec)
    if dev not in _instances:
        module, _, cls = BACKENDS[dev.type].partition(":")
        try:
            _instances[dev] = getattr(importlib.import_module(module), cls)(dev)
        except Exception as e:  # missing cupy, no GPU, bad index: one clear error on first use
            from engine.backends.unavailable import UnavailableBackend
            _instances[dev] = UnavailableBackend(dev, e)
    return _instances[dev]


def is_available(spec) -> bool:
    return backend(spec).available


def available_devices() -> list:
    out = [parse("cpu")]
    if is_available("cuda"):
        out.append(parse("cuda"))
    return out
