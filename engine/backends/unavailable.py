"""Stands in for a backend that cannot load (no cupy, no GPU, bad index) and raises one clear error."""
from __future__ import annotations


class DeviceUnavailableError(RuntimeError):
    pass


class UnavailableBackend:
    available = False

    def __init__(self, device, cause: Exception):
        self.device = device
        self.cause = cause

    def _raise(self):
        hint = ""
        if self.device.type == "cuda":
            hint = (" The cuda device needs cupy and an NVIDIA GPU: pip install 'taper[cuda13]' "
                    "(or [cuda12]) on a machine with a GPU.")
        raise DeviceUnavailableError(f"device {self.device} is not available: "
                                     f"{type(self.cause).__name__}: {self.cause}.{hint}") from self.cause

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        self._raise()
