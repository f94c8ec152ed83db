"""Kernel launches as programmatic dependent launches (PDL): on sm_90 and later a kernel so launched may start
while the kernel before it in the stream still runs, load what no earlier kernel writes (its weights) and wait in
pdl_wait() (cuda/prelude.cuh) for the rest. In a captured decode step, where one GEMV follows another, each GEMV's
first weight loads then overlap the previous kernel's last blocks instead of starting after its end. A GEMV
launches so only when its caller says nothing the step runs writes its weights (capture_plan's Fused.frozen:
parameters, not a weight computed in the step); the decode's rotary_cache and attn_fused wait at their start.

cupy's RawKernel launches take no launch attributes, so a PDL launch calls the driver's cuLaunchKernelEx
(ctypes) on cupy's CUfunction and current stream, with the arguments marshalled as cupy marshals them (arrays as
device pointers, numpy scalars as their C types). Only while the stream is capturing a graph: there the launch is
recorded once; an uncaptured step is host-bound, and cupy's own launch costs the host less.

TAPER_PDL=0 (or PDL["enabled"] = False) launches every kernel the usual way (A/B runs: bench/gguf_decode.py).
"""
from __future__ import annotations

import ctypes
import os

import cupy
import numpy as np

PDL = {"enabled": os.environ.get("TAPER_PDL", "1") != "0"}
_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CUlaunchAttributeID
_C_TYPES = {np.int32: ctypes.c_int32, np.int64: ctypes.c_int64, np.uint32: ctypes.c_uint32,
            np.uint64: ctypes.c_uint64, np.float32: ctypes.c_float}


class _Attribute(ctypes.Structure):  # CUlaunchAttribute: the id, padding, a 64-byte value union
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int),
                ("rest", ctypes.c_char * 60)]


class _Config(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("shared_mem", ctypes.c_uint),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(_Attribute)), ("n_attrs", ctypes.c_uint)]


_DRIVER: list = []  # [libcuda] once loaded
_CAPABLE: dict = {}  # device id -> compute capability >= 9.0
_ATTR = _Attribute(_PROGRAMMATIC_STREAM_SERIALIZATION, b"", 1, b"")


def _driver():
    if not _DRIVER:
        lib = ctypes.CDLL("libcuda.so.1")
        lib.cuLaunchKernelEx.argtypes = [ctypes.POINTER(_Config), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.cuLaunchKernelEx.restype = ctypes.c_int
        _DRIVER.append(lib)
    return _DRIVER[0]


def sm90() -> bool:
    """Whether the current device is sm_90 or later (PDL, thread-block clusters)."""
    dev = cupy.cuda.runtime.getDevice()
    ok = _CAPABLE.get(dev)
    if ok is None:
        ok = _CAPABLE[dev] = int(cupy.cuda.Device(dev).compute_capability) >= 90
    return ok


def pdl_ok(stream) -> bool:
    """Whether a launch on `stream` now goes as a PDL: enabled, an sm_90+ device, the stream capturing."""
    return PDL["enabled"] and sm90() and stream.is_capturing()


def _c_arg(a):
    if isinstance(a, cupy.ndarray):
        return ctypes.c_uint64(a.data.ptr)
    ct = _C_TYPES.get(type(a))
    if ct is None:
        raise TypeError(f"a PDL launch takes cupy arrays and numpy int32/int64/uint32/uint64/float32 scalars, "
                        f"got {type(a).__name__}")
    return ct(a)


def launch(fn, grid: tuple, block: tuple, args: tuple, shared_mem: int = 0, pdl: bool = True) -> None:
    """fn(grid, block, args, shared_mem=shared_mem), as a PDL where pdl and pdl_ok: fn's kernel then must call
    pdl_wait() before it reads anything the kernel before it may write, and before it writes anything."""
    stream = cupy.cuda.get_current_stream() if pdl and PDL["enabled"] else None  # none asked: no runtime calls
    if stream is None or not pdl_ok(stream):
        fn(grid, block, args, shared_mem=shared_mem)
        return
    vals = [_c_arg(a) for a in args]
    params = (ctypes.c_void_p * len(vals))(*(ctypes.addressof(v) for v in vals))
    g, b = tuple(grid) + (1,) * (3 - len(grid)), tuple(block) + (1,) * (3 - len(block))
    cfg = _Config((ctypes.c_uint * 3)(*g), (ctypes.c_uint * 3)(*b), shared_mem, stream.ptr,
                  ctypes.pointer(_ATTR), 1)
    kernel = getattr(fn, "kernel", fn)  # RawKernel -> its cupy.cuda.function.Function (the CUfunction)
    err = _driver().cuLaunchKernelEx(ctypes.byref(cfg), kernel.ptr, params, None)
    if err:
        raise RuntimeError(f"cuLaunchKernelEx failed with CUresult {err} (grid {g}, block {b}, {shared_mem} bytes "
                           f"of shared memory)")
