"""CpuCommunicator: ranks are processes on one machine; all-reduce through shared memory.

Each rank owns one slot of a shared block (multiprocessing.shared_memory, made by the launcher). An
all-reduce of n bytes runs in chunks of at most a slot: every rank writes its chunk into its slot,
waits at the barrier, sums all slots in rank order (in float32 for 16-bit floats, rounded once, so
every rank computes bit-identical results), waits again (no slot is overwritten while a peer reads),
and writes the sum back. A peer that does not arrive within `timeout` seconds raises
CommunicatorError naming the rank, instead of hanging.

With device="cuda:0" the ranks share one GPU and the communicator stages CUDA arrays through host
memory (NCCL refuses two ranks on one GPU): for checking tensor parallelism on a machine with one GPU,
eagerly only, since a host copy cannot sit inside a captured CUDA graph (decode with capture=False).
"""
from __future__ import annotations

import threading  # BrokenBarrierError
from multiprocessing import shared_memory

import numpy as np

from engine.distributed.comm import Communicator, CommunicatorError

SLOT_BYTES = 4 << 20  # per rank; larger tensors go in chunks


class CpuCommunicator(Communicator):
    def __init__(self, rank: int, world_size: int, shm_name: str, barrier, slot_bytes: int = SLOT_BYTES,
                 timeout: float = 300.0, device: str = "cpu"):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size}")
        self.rank, self.world_size, self.device = rank, world_size, device
        self.slot_bytes, self.timeout = slot_bytes, timeout
        self._barrier = barrier
        self._shm = shared_memory.SharedMemory(name=shm_name)
        if self._shm.size < world_size * slot_bytes:
            raise ValueError(f"shared block {shm_name} has {self._shm.size} bytes, need {world_size} x {slot_bytes}")

    @staticmethod
    def create_block(world_size: int, slot_bytes: int = SLOT_BYTES) -> shared_memory.SharedMemory:
        """The launcher's shared block (it unlinks it when the ranks are done)."""
        return shared_memory.SharedMemory(create=True, size=world_size * slot_bytes)

    def _wait(self, what: str) -> None:
        try:
            self._barrier.wait(self.timeout)
        except threading.BrokenBarrierError:
            raise CommunicatorError(f"rank {self.rank}: {what}: a peer rank did not arrive within {self.timeout:g} s "
                                    "(it failed or exited)") from None

    def all_reduce_array(self, a) -> None:
        if hasattr(a, "__cuda_array_interface__") and self.device != "cpu":
            return self._staged(a)
        if not isinstance(a, np.ndarray):
            raise TypeError(f"CpuCommunicator reduces host (numpy) arrays, got {type(a).__module__}.{type(a).__name__}"
                            " (a CUDA tensor needs the NCCL communicator: launch with --device cuda)")
        if not a.flags.c_contiguous:
            raise ValueError(f"all_reduce needs a contiguous array, got strides {a.strides}")
        flat = a.reshape(-1)
        acc = np.float32 if a.dtype.name in ("float16", "bfloat16") else a.dtype  # 16-bit: summed in fp32
        per = max(1, self.slot_bytes // a.itemsize)
        buf = self._shm.buf
        for lo in range(0, flat.size, per):
            part = flat[lo:lo + per]
            slots = [np.ndarray((part.size,), a.dtype, buf, offset=r * self.slot_bytes) for r in range(self.world_size)]
            slots[self.rank][...] = part
            self._wait("all_reduce")
            total = slots[0].astype(acc)  # rank order on every rank: bit-identical sums
            for s in slots[1:]:
                total += s.astype(acc)
            self._wait("all_reduce")
            part[...] = total.astype(a.dtype)
            del slots  # views of the shared block must go before it is closed

    def _staged(self, a) -> None:
        import cupy
        if cupy.cuda.get_current_stream().is_capturing():
            raise CommunicatorError(f"rank {self.rank}: the shared-memory communicator copies through the host, "
                                    "which a captured CUDA graph cannot hold; decode with capture=False, or use NCCL")
        host = cupy.asnumpy(a)  # waits for the stream
        self.all_reduce_array(host)
        a.set(host)

    def barrier(self) -> None:
        self._wait("barrier")

    def close(self) -> None:
        shm, self._shm = self._shm, None
        if shm is not None:
            shm.close()
