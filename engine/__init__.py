"""engine: a reference ML engine modelled on Candle, with torch-named ops.

    import engine
    x = engine.randn(2, 3, device="cpu")
    y = engine.functional.softmax(x @ x.T, dim=-1)

Backends: numpy on the CPU, cupy on CUDA ("cuda", "cuda:N"). ENGINE_DEVICE sets the default device.
"""
from engine import dtype as _dtype
from engine.device import Device, available_devices, backend, default_device, is_available
from engine.dtype import DType, bfloat16, float16, float32, float64, int32, int64, uint8
from engine.dtype import bool_ as bool  # noqa: A001  (torch spells it engine.bool)
from engine.layout import Layout, ShapeError, broadcast_shapes
from engine.storage import OutOfMemoryError, Storage, StoragePool
from engine.tensor import DeviceMismatchError, DTypeError, Tensor
from engine.backends.unavailable import DeviceUnavailableError
from engine.ops import *  # noqa: F401,F403
from engine.ops import Generator, _export_methods, manual_seed
from engine import functional  # noqa: F401
from engine import capture  # noqa: F401

half, double, long = float16, float64, int64
int16 = None  # not a supported dtype; kept out of the promotion table on purpose
del int16
_export_methods(globals())


def memory_stats(device=None) -> dict:
    """The device's StoragePool statistics: allocated, requested, reserved, cached, peak, hits, misses."""
    return backend(device).pool.stats()


def empty_cache(device=None) -> int:
    return backend(device).pool.empty_cache()


def synchronize(device=None) -> None:
    backend(device).synchronize()
