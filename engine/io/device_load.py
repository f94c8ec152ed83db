"""Load a whole safetensors checkpoint (single file or sharded) onto a device, fast.

On the CPU the tensors are zero-copy views over the memory-mapped files. On CUDA the cupy backend
reads each file's ranges with several threads into pinned buffers and overlaps the host-to-device
copies (see CupyBackend.load_ranges).
"""
from __future__ import annotations

from engine import device as _dev
from engine import dtype as D
from engine.io.safetensors import open_checkpoint, str_to_dtype
from engine.layout import Layout
from engine.storage import Storage
from engine.tensor import Tensor


def load_to_device(path, device=None, names=None) -> dict:
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
        arrays = backend.load_ranges(f, [(b, e) for _, _, _, b, e in items])
        for (name, dtype, shape, _, _), raw in zip(items, arrays):
            dt = D.get(str_to_dtype(dtype))
            flat = raw.view(dt.np_dtype)
            out[name] = Tensor(Storage(flat, backend), Layout.contiguous(shape), dt)
    return out


def _file_of(ck, name) -> str:
    shard = getattr(ck, "_shard", None)
    return str(shard(name).path) if shard is not None else str(ck.path)
