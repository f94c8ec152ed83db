"""Tensor parallelism: one model split over N processes (one per GPU), all-reduces after the
row-parallel layers, the normal engine path in each rank (engine.models' classes, engine.generation's
captured decode step, with the collectives inside the CUDA graph).

    python -m engine.distributed --tp 2 --device cuda --model llama:llama-2-70b --dtype float16 --ids 1,2,3

    from engine.distributed import launch, from_preset
    def work(comm):                                # runs in every rank
        model = from_preset("llama", "tiny", comm)
        return engine.generation.generate(model, [1, 2, 3], 8).tokens
    launch(work, tp=2, device="cpu")               # [rank 0's tokens, rank 1's tokens]

comm.py: the Communicator interface; cpu.py, nccl.py: its implementations; plan.py: the plan (HF
parameter names -> column / row split; where to all-reduce); shard.py: sharded loading; launch.py:
the launcher; run.py: generation in every rank and its driver (`python -m engine.distributed`, `taper generate --tp`).
"""
from engine.distributed.comm import Communicator, CommunicatorError  # noqa: F401
from engine.distributed.launch import SAFE_ENV, LaunchError, check_world, launch  # noqa: F401
from engine.distributed.shard import (RankPlan, TensorParallelError, from_pretrained, from_preset,  # noqa: F401
                                      preset_config)
