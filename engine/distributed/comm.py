"""The Communicator interface of engine.distributed: one process per rank, collectives over tensors.

    comm.rank, comm.world_size, comm.device      # "cpu" or "cuda:<rank>": where this rank's tensors live
    comm.all_reduce(t)                           # t becomes the sum over the ranks, in place; returns t
    comm.barrier()                               # every rank has arrived
    comm.close()                                 # free the channel (NCCL: destroy the communicator)

Implementations: CpuCommunicator (engine/distributed/cpu.py: processes over shared memory) and
NcclCommunicator (engine/distributed/nccl.py: NCCL on the engine's current CUDA stream, so an
all-reduce inside a captured step lands in the CUDA graph). The launcher (engine/distributed/launch.py)
makes one per rank. all_reduce goes through the backend op `all_reduce` (engine/backends/fused.py), so
engine.capture records it like any other op; the backend hands the array back to all_reduce_array.
"""
from __future__ import annotations


class CommunicatorError(RuntimeError):
    """A collective failed or a peer did not arrive (the message names the rank and the operation)."""


class Communicator:
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    def all_reduce(self, t):
        """Sum `t` over the ranks, in place (every rank holds the same result); returns t."""
        if self.world_size == 1:
            return t
        if not t.is_contiguous():
            raise ValueError(f"all_reduce needs a contiguous tensor, got shape {tuple(t.shape)} with strides "
                             f"{tuple(t.stride())} (rank {self.rank})")
        t.backend.all_reduce(t.array, self)
        return t

    def all_reduce_array(self, a) -> None:  # the backend's array, in place (what backend.all_reduce calls)
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, world_size={self.world_size}, device={self.device!r})"
