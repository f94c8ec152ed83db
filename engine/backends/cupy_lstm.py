"""The LSTM recurrence of one layer direction as one persistent CUDA kernel (engine/backends/cuda/lstm.cu).

The cupy backend's lstm_recurrence calls `lstm(...)` where `lstm_ok(...)` holds, and FusedOps' plain
composition (a GEMV and ~10 elementwise launches per time step) otherwise. One launch runs every step: each
block keeps its rows of W_hh in shared memory and its cells' state in registers for the whole sequence, and a
step's h goes to every block through global memory (lstm.cu's header says how, and why it cannot hang), by one
of two handovers, LSTM_KERNEL["mode"]:
  "barrier"  a grid-wide barrier (an atomic counter) after each step; blocks then read h from the output
  "flags"    no barrier: each h travels with its step number in one 64-bit word (NCCL's LL protocol), and a
             block waits only until the words it reads carry the step it needs (fewer round trips to L2)

A barrier across blocks needs every block resident at once: the grid is at most one block per SM (the device's
multiprocessor count) and the kernel's occupancy at its shared memory size must be at least one block per SM,
else lstm_ok is False. No cuBLAS, no host read: the launch (a memset of the barrier's counter, then the kernel)
can be captured in a CUDA graph and replayed. float32, float16 and bfloat16 (16-bit rounds after every op as the
composition does); no projection (w_hr), which takes the composition.

TAPER_LSTM_KERNEL=barrier|flags picks the mode (default flags: 2.7 against 3.3 us a step on the H200 for
EnCodec's H=512, both 0.3% of the composition's time, cuDNN 9.6; measurements/h200/session5/run4_lstm_profile.json);
TAPER_LSTM_KERNEL=0 (or LSTM_KERNEL["enabled"] = False) sends every call to the composition.
"""
from __future__ import annotations

import functools
import os

import cupy
import numpy as np

from engine import dtype as D
from engine.backends import cupy_kernels as K

THREADS = 256  # lstm.cu's LSTM_THREADS
MODES = {"barrier": 0, "flags": 1}  # lstm.cu's FLAGS
_ENV = os.environ.get("TAPER_LSTM_KERNEL", "flags")
LSTM_KERNEL = {"enabled": _ENV != "0", "mode": _ENV if _ENV in MODES else "flags"}
_SRC = "\n".join((K._DIR / f).read_text() for f in ("prelude.cuh", "common.cuh", "lstm.cu"))


@functools.lru_cache(maxsize=None)
def _module():
    names = [f"lstm_layer<{t},{f}>" for t in K.TYPES.values() for f in MODES.values()]
    return cupy.RawModule(code=_SRC, options=("-std=c++17",), name_expressions=names)


@functools.lru_cache(maxsize=None)
def compiles() -> bool:
    """Whether lstm.cu compiles here (False sends every call to the composition)."""
    try:
        _module().get_function("lstm_layer<float,0>")
        return True
    except cupy.cuda.compiler.CompileException:
        return False


def _fn(dtype, mode: str):
    return _module().get_function(f"lstm_layer<{K.type_name(dtype)},{MODES[mode]}>")


@functools.lru_cache(maxsize=None)
def sm_count(device: int) -> int:
    return int(cupy.cuda.runtime.deviceGetAttribute(cupy.cuda.runtime.cudaDevAttrMultiProcessorCount, device))


def grid_for(H: int, sms: int) -> tuple:
    """(blocks, units per block): the fewest units per block that leave at most one block per SM."""
    units = -(-H // max(1, sms))
    return -(-H // units), units


def smem_bytes(H: int, N: int, units: int, itemsize: int) -> int:
    """lstm.cu's dynamic shared memory: 4U weight rows of T (padded to 16 bytes), h (N x H floats), dots (4U x N)."""
    w = (4 * units * H * itemsize + 15) // 16 * 16
    return w + 4 * N * H + 4 * 4 * units * N


@functools.lru_cache(maxsize=None)
def _resident(device: int, dtype_name: str, mode: str, smem: int) -> bool:
    """Whether a block of the kernel fits on an SM with `smem` bytes of dynamic shared memory (occupancy >= 1)."""
    from cupy_backends.cuda.api import driver
    fn = _fn(np.dtype(D.get(dtype_name).np_dtype), mode)
    K._allow_smem(fn, smem)
    return driver.occupancyMaxActiveBlocksPerMultiprocessor(fn.kernel.ptr, THREADS, smem) >= 1


def lstm_ok(xw, h, c, w_hh, b_hh, w_hr, out_dtype) -> bool:
    """Whether the kernel takes this layer: no projection, every operand in out_dtype (float32/16/bf16), torch's
    shapes (xw (L, N, 4H), h and c (N, H), w_hh (4H, H), b_hh (4H,) or None) with L, N >= 1, a cell thread per
    (unit, batch row) of a block, and the grid co-resident (see the module docstring)."""
    if not LSTM_KERNEL["enabled"] or w_hr is not None or out_dtype.name not in K.TYPES:
        return False
    dt = out_dtype.np_dtype
    if any(a is not None and (not isinstance(a, cupy.ndarray) or a.dtype != dt) for a in (xw, h, c, w_hh, b_hh)):
        return False
    if xw.ndim != 3 or h.ndim != 2 or c.ndim != 2 or w_hh.ndim != 2:
        return False
    L, N, H4 = xw.shape
    H = c.shape[1]
    if L < 1 or N < 1 or H < 1 or H4 != 4 * H or h.shape != (N, H) or c.shape != (N, H) or w_hh.shape != (4 * H, H):
        return False
    if b_hh is not None and b_hh.shape != (4 * H,):
        return False
    dev = xw.device.id
    blocks, units = grid_for(H, sm_count(dev))
    smem = smem_bytes(H, N, units, dt.itemsize)
    if units * N > THREADS or smem > K.smem_limit() or L * blocks >= 2 ** 31 or xw.size >= 2 ** 62:
        return False
    return compiles() and _resident(dev, out_dtype.name, LSTM_KERNEL["mode"], smem)


_TIMEOUTS: dict = {}  # device -> (1,) uint32: blocks that ever gave up at a barrier (never reset by the kernel)


def _timeouts(backend, capturing: bool):
    dev = backend.device.index
    if dev not in _TIMEOUTS and not capturing:  # made on an eager call (engine.capture's first call is eager)
        _TIMEOUTS[dev] = cupy.zeros((1,), cupy.uint32)
    return _TIMEOUTS.get(dev, K._NULL)


def barrier_timeouts(device: int = 0) -> int:
    """How many blocks of lstm launches on `device` gave up waiting at a barrier (their outputs are NaN): 0 unless
    the grid was not co-resident. Reads the device (a host sync): for tests and diagnosis, not the launch path."""
    t = _TIMEOUTS.get(device)
    return 0 if t is None else int(t.get()[0])


def lstm(backend, xw, h, c, w_hh, b_hh, reverse: bool, out_dtype, mode: str | None = None) -> tuple:
    """(outs (L, N, H), h_n (N, H), c_n (N, H)) of one layer direction; check lstm_ok first. mode: "barrier" or
    "flags" (default LSTM_KERNEL["mode"])."""
    mode = mode or LSTM_KERNEL["mode"]
    L, N, _ = xw.shape
    H = c.shape[1]
    xw, h, c, w_hh = (cupy.ascontiguousarray(a) for a in (xw, h, c, w_hh))
    b = None if b_hh is None else cupy.ascontiguousarray(b_hh)
    dev = xw.device.id
    blocks, units = grid_for(H, sm_count(dev))
    smem = smem_bytes(H, N, units, out_dtype.itemsize)
    fn = _fn(xw.dtype, mode)
    K._allow_smem(fn, smem)
    outs = backend.empty((L, N, H), out_dtype)
    h_n, c_n = backend.empty((N, H), out_dtype), backend.empty((N, H), out_dtype)
    # [barrier counter, give-up flag] (16 bytes) and, for "flags", the exchange words (2, N, H) uint64: zeroed on
    # the stream before the launch (a memset node when captured)
    nbytes = 16 + (16 * N * H if mode == "flags" else 0)
    buf = backend.empty((nbytes,), D.uint8)
    stream = cupy.cuda.get_current_stream()
    cupy.cuda.runtime.memsetAsync(buf.data.ptr, 0, nbytes, stream.ptr)
    xb = buf[16:] if mode == "flags" else K._NULL
    i32 = cupy.int32
    fn((blocks,), (THREADS,), (xw, h, c, w_hh, K._opt(b), outs, h_n, c_n, buf, xb,
                               _timeouts(backend, stream.is_capturing()), i32(L), i32(N), i32(H), i32(units),
                               i32(1 if reverse else 0)), shared_mem=smem)
    return outs, h_n, c_n
