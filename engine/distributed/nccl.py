"""NcclCommunicator: one process per GPU, NCCL through cupy (cupy.cuda.nccl).

Rank 0 makes the unique id (`unique_id()`, 128 bytes in cupy 14); the launcher hands the bytes to the
other ranks; every rank then builds `NcclCommunicator(world_size, uid, rank)` with its GPU current
(cupy.cuda.Device(rank).use(): one GPU per process, all GPUs visible, so NCCL can use CUDA IPC and
NVLink between them). all_reduce_array issues ncclAllReduce in place on the engine's current stream:
inside engine.capture's stream capture that is the capture stream, so the collective becomes a node of
the CUDA graph and every rank's replay runs it (all ranks capture and replay the same step). close()
destroys the communicator: a process that exits with one alive can hang at exit.

Environment (set by the launcher in every rank before cupy loads NCCL): NCCL_NVLS_ENABLE=0 (NVLink
multicast off), see launch.SAFE_ENV; NCCL_GRAPH_MIXING_SUPPORT=0 unless set (launch.TUNING_ENV), with the
one synchronisation it asks for (_settle).
"""
from __future__ import annotations

from engine.distributed.comm import Communicator, CommunicatorError


def _nccl():
    try:
        from cupy.cuda import nccl
    except Exception as e:  # cupy missing
        raise CommunicatorError(f"NCCL needs cupy with NCCL (pip install 'taper[cuda13]'): {type(e).__name__}: {e}") from e
    if not getattr(nccl, "available", True):
        raise CommunicatorError("cupy cannot load the NCCL library (libnccl.so.2): pip install nvidia-nccl-cu13 "
                                "(or -cu12 for CUDA 12)")
    return nccl


def unique_id() -> bytes:
    """Rank 0's NCCL id (it also starts NCCL's bootstrap listener in this process)."""
    uid = _nccl().get_unique_id()
    return bytes(uid) if not isinstance(uid, bytes) else uid


def _dtypes(nccl) -> dict:
    return {"float16": nccl.NCCL_FLOAT16, "float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64,
            "bfloat16": nccl.NCCL_BFLOAT16, "int32": nccl.NCCL_INT32, "int64": nccl.NCCL_INT64}


class NcclCommunicator(Communicator):
    def __init__(self, rank: int, world_size: int, uid: bytes, device_index: int | None = None):
        import cupy
        nccl = _nccl()
        self.rank, self.world_size = rank, world_size
        self.device_index = rank if device_index is None else device_index
        n = cupy.cuda.runtime.getDeviceCount()
        if self.device_index >= n:
            raise CommunicatorError(f"rank {rank} wants cuda:{self.device_index} but {n} GPU(s) are visible")
        cupy.cuda.Device(self.device_index).use()
        self.device = f"cuda:{self.device_index}"
        self._cupy, self._nccl, self._types = cupy, nccl, _dtypes(nccl)
        self._comm = nccl.NcclCommunicator(world_size, uid, rank)
        self._one = None
        import os
        self._graphs_unmixed = os.environ.get("NCCL_GRAPH_MIXING_SUPPORT") == "0"

    def _settle(self) -> None:
        """With NCCL_GRAPH_MIXING_SUPPORT=0 a non-captured collective must not start while a replayed graph
        holding collectives may still run: wait for the device once after any replay."""
        import engine
        b = engine.backend(self.device)
        if b.replayed:
            self._cupy.cuda.runtime.deviceSynchronize()
            b.replayed = False

    def all_reduce_array(self, a) -> None:
        cupy = self._cupy
        if not isinstance(a, cupy.ndarray):
            raise TypeError(f"NcclCommunicator reduces CUDA (cupy) arrays, got {type(a).__module__}.{type(a).__name__}")
        if not a.flags.c_contiguous:
            raise ValueError(f"all_reduce needs a contiguous array, got strides {a.strides}")
        dt = self._types.get(a.dtype.name)
        if dt is None:
            raise TypeError(f"NCCL all_reduce: no NCCL type for {a.dtype.name} (have {', '.join(self._types)})")
        stream = cupy.cuda.get_current_stream()  # the capture stream while engine.capture records a graph
        if not stream.is_capturing() and self._graphs_unmixed:
            self._settle()
        self._comm.allReduce(a.data.ptr, a.data.ptr, a.size, dt, self._nccl.NCCL_SUM, stream.ptr)

    def barrier(self) -> None:
        cupy = self._cupy
        if self._one is None:
            self._one = cupy.zeros(1, cupy.float32)
        self.all_reduce_array(self._one)
        cupy.cuda.get_current_stream().synchronize()

    def close(self) -> None:
        comm, self._comm = self._comm, None
        if comm is not None:
            self._cupy.cuda.Device(self.device_index).synchronize()
            comm.destroy()
