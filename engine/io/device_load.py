"""Load a whole safetensors checkpoint (single file or sharded) onto a device, fast.

On the CPU the tensors are zero-copy views over the memory-mapped files (mmap=False: copies read
with ordinary reads, see engine.io.safetensors on SIGBUS). On CUDA the cupy backend reads each
file's ranges with several threads into pinned buffers and overlaps the host-to-device copies (see
CupyBackend.load_ranges). Headers are validated first (engine.io.safetensors), and each file is
checked to still cover every range just before it is read.
"""
from __future__ import annotations

import os

import numpy as np

from engine import device as _dev
from engine import dtype as D
from engine.io.safetensors import SafetensorsError, open_checkpoint, str_to_dtype
from engine.layout import Layout
from engine.storage import Storage
from engine.tensor import Tensor


def load_to_device(path, device=None, names=None, mmap: bool = True) -> dict:
    """{name: Tensor} for every tensor (or `names`) of the checkpoint at `path`, on `device`."""
    backend = _dev.backend(device)
    ck = open_checkpoint(path)
    try:
        wanted = list(ck.keys()) if names is None else list(names)
        by_file: dict = {}
        for name in wanted:
            dtype, shape, (begin, end) = ck.info(name)
            f = _file_of(ck, name)
            by_file.setdefault(f, []).append((name, dtype, shape, begin, end))
    finally:
        ck.close()
    out = {}
    for f, items in by_file.items():
        _check_covers(f, items)
        ranges = [(b, e) for _, _, _, b, e in items]
        if not mmap and backend.device.type == "cpu":
            arrays = _read_ranges(f, items)
        else:
            arrays = backend.load_ranges(f, ranges)
        for (name, dtype, shape, _, _), raw in zip(items, arrays):
            dt = D.get(str_to_dtype(dtype))
            flat = raw.view(dt.np_dtype)
            out[name] = Tensor(Storage(flat, backend), Layout.contiguous(shape), dt)
    return out


def _check_covers(path: str, items) -> None:
    """The file must still hold every range (a file truncated since its header was read would fault)."""
    size = os.path.getsize(path)
    for name, _, _, begin, end in items:
        if end > size:
            raise SafetensorsError(f"the file is now {size} bytes; this tensor's data [{begin}, {end}) is gone "
                                   "(truncated or rewritten since its header was read)", path, name, begin)


def _read_ranges(path: str, items) -> list:
    """Each range read into a new array (copy-on-load); a short read raises SafetensorsError."""
    out = []
    with open(path, "rb", buffering=0) as f:
        for name, _, _, begin, end in items:
            buf = bytearray(end - begin)
            got = os.preadv(f.fileno(), [buf], begin) if end > begin else 0
            if got != end - begin:
                raise SafetensorsError(f"read {got} of {end - begin} bytes: the file shrank", path, name, begin)
            out.append(np.frombuffer(buf, np.uint8))
    return out


def _file_of(ck, name) -> str:
    shard = getattr(ck, "_shard", None)
    return str(shard(name).path) if shard is not None else str(ck.path)
