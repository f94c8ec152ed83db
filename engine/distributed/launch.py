"""The launcher: run fn(comm, *args) in N processes, one per rank, and collect their results.

    results = launch(fn, tp=2, device="cuda", args=(spec,))   # [rank 0's result, rank 1's, ...]

fn must be importable by name (a module-level function): the ranks are fresh interpreters
(multiprocessing "spawn"), never forks of a process that may hold a CUDA context. On CUDA rank r runs
on cuda:r with every GPU visible (NCCL needs that for CUDA IPC between processes; isolate=True gives
each rank only its own GPU through CUDA_VISIBLE_DEVICES instead); rank 0 makes the NCCL unique id and
the launcher's queue carries it to the others. On the CPU the ranks share one block of shared memory
(engine/distributed/cpu.py). SAFE_ENV is set in this process and again in every rank before cupy
loads NCCL. A rank that fails ends the run: the launcher stops the other ranks it started and raises
TensorParallelError naming the rank and its error (the traces are in `.tracebacks`).
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
import queue
import threading
import time
import traceback

from engine.distributed.shard import TensorParallelError

# NVLink multicast (NVLS) off in NCCL, PyTorch and NVSHMEM: on shared hosts a program using it can put
# the host's GPUs out of service (the device notes of the lent machines); kept in every child process
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
# Defaults a user may override: without graph-mixing support an all-reduce inside a replayed CUDA graph
# costs 5.5 us instead of 22 us (two H200s, 16 KiB; 70B decode 49.0 -> 49.5 tok/s). NCCL then needs that
# no captured launch is outstanding when a non-captured one starts: NcclCommunicator synchronises once
# before the first eager all-reduce after a replay.
TUNING_ENV = {"NCCL_GRAPH_MIXING_SUPPORT": "0"}


def apply_env() -> None:
    """SAFE_ENV (always) and TUNING_ENV (unless already set) in this process, before NCCL loads."""
    os.environ.update(SAFE_ENV)
    for k, v in TUNING_ENV.items():
        os.environ.setdefault(k, v)


class LaunchError(TensorParallelError):
    def __init__(self, message: str, tracebacks: dict | None = None):
        super().__init__(message)
        self.tracebacks = tracebacks or {}


def cuda_device_count() -> tuple[int, str]:
    """(GPUs visible, why none when 0)."""
    try:
        import cupy
        return int(cupy.cuda.runtime.getDeviceCount()), ""
    except Exception as e:
        return 0, f"{type(e).__name__}: {e}".splitlines()[0]


def check_world(tp, device: str, available: int | None = None, why: str = "", shared_gpu: bool = False) -> str:
    """The device kind ("cpu" or "cuda") for `tp` ranks; ValueError naming the numbers when it cannot be.
    shared_gpu: every rank on cuda:0 (the shared-memory communicator), so one GPU is enough."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise TensorParallelError(f"--tp must be a positive integer, got {tp!r}")
    kind, _, index = str(device or "cpu").strip().lower().partition(":")
    if kind not in ("cpu", "cuda"):
        raise TensorParallelError(f"tensor parallel ranks run on 'cpu' or 'cuda', got device {device!r}")
    if index:
        raise TensorParallelError(f"with tensor parallelism rank r runs on cuda:r; pass --device cuda, not {device!r}")
    if kind == "cuda":
        if available is None:
            available, why = cuda_device_count()
        need = 1 if shared_gpu else tp
        if need > available:
            more = f" ({why})" if why and not available else ""
            raise TensorParallelError(f"--tp {tp} needs {need} GPU{'s' if need > 1 else ''} "
                                      f"({'shared by the ranks' if shared_gpu else 'one per rank'}) but {available} "
                                      f"{'is' if available == 1 else 'are'} visible{more}")
    return kind


def launch(fn, tp: int, device: str = "cpu", args: tuple = (), timeout: float = 3600.0, isolate: bool = False,
           comm_timeout: float = 300.0, grace: float = 10.0, shared_gpu: bool = False) -> list:
    """fn(comm, *args) in tp processes; returns the ranks' results in rank order (see module docstring).
    After a rank fails, its peers get `grace` seconds to report before they are stopped. shared_gpu
    (device cuda): every rank on cuda:0 through the shared-memory communicator, eager steps only (a
    correctness check on a machine with one GPU; NCCL refuses two ranks on one GPU)."""
    kind = check_world(tp, device, shared_gpu=shared_gpu)
    apply_env()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    block = None
    if kind == "cpu" or shared_gpu or tp == 1:  # one rank needs no NCCL: its all-reduces are no-ops
        from engine.distributed.cpu import CpuCommunicator
        block = CpuCommunicator.create_block(tp)
        spec = ("cpu", block.name, ctx.Barrier(tp), comm_timeout, "cpu" if kind == "cpu" else "cuda:0")
    else:
        spec = ("cuda", ctx.Queue(), isolate, comm_timeout)
    procs = [ctx.Process(target=_rank_main, args=(r, tp, spec, fn, args, results, os.getpid()), name=f"taper-tp-rank{r}")
             for r in range(tp)]
    try:
        for p in procs:
            p.start()
        return _collect(procs, results, timeout, grace)
    finally:
        for p in procs:  # only the processes started here, by their handles
            if p.is_alive():
                p.terminate()
            p.join(5)
        if block is not None:
            block.close()
            block.unlink()


def _collect(procs, results, timeout: float, grace: float = 10.0) -> list:
    """Every rank's result; on a failure, the first error reported (its peers may be stuck in a
    collective: after `grace` seconds they are not waited for)."""
    tp = len(procs)
    out, errors, tracebacks = {}, {}, {}
    deadline = time.monotonic() + timeout
    first_error = None

    def record(rank, ok, value, tb):
        nonlocal first_error
        if ok:
            out[rank] = value
            return
        errors[rank], tracebacks[rank] = value, tb
        first_error = first_error or time.monotonic()

    while len(out) + len(errors) < tp:
        try:
            record(*results.get(timeout=0.5))
            continue
        except queue.Empty:
            pass
        dead = [r for r, p in enumerate(procs) if p.exitcode is not None and r not in out and r not in errors]
        if dead:  # its last message may still be on its way
            try:
                while True:
                    record(*results.get(timeout=1.0))
            except queue.Empty:
                pass
            for r in dead:
                if r not in out and r not in errors:  # killed, or out of memory
                    record(r, False, f"the process exited with code {procs[r].exitcode} before reporting", "")
        now = time.monotonic()
        if first_error is not None and now - first_error > grace:
            break
        if now > deadline:
            late = [r for r in range(tp) if r not in out and r not in errors]
            raise LaunchError(f"tensor parallel run: rank(s) {late} still running after {timeout:g} s", tracebacks)
    if errors:
        r = next(iter(errors))
        raise LaunchError(f"rank {r} of {tp} failed: {errors[r]}", tracebacks)
    return [out[r] for r in range(tp)]


def _orphan_watch(parent: int) -> None:
    """Exit when the launcher is gone (killed by a timeout, say): a rank must not hold its GPU for ever."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(3)


def _rank_main(rank: int, tp: int, spec, fn, args, results, parent: int | None = None) -> None:
    apply_env()
    if parent is not None:
        threading.Thread(target=_orphan_watch, args=(parent,), daemon=True, name="orphan-watch").start()
    comm = None
    try:
        if spec[0] == "cpu":
            from engine.distributed.cpu import CpuCommunicator
            comm = CpuCommunicator(rank, tp, spec[1], spec[2], timeout=spec[3], device=spec[4])
        else:
            ids, isolate, wait = spec[1], spec[2], spec[3]
            if isolate:
                visible = os.environ.get("CUDA_VISIBLE_DEVICES")
                devs = visible.split(",") if visible else [str(i) for i in range(tp)]
                os.environ["CUDA_VISIBLE_DEVICES"] = devs[rank]
            from engine.distributed.nccl import NcclCommunicator, unique_id
            if rank == 0:
                uid = unique_id()
                for _ in range(tp - 1):
                    ids.put(uid)
            else:
                try:
                    uid = ids.get(timeout=wait)
                except queue.Empty:
                    raise TensorParallelError(f"rank {rank}: no NCCL id from rank 0 within {wait:g} s") from None
            comm = NcclCommunicator(rank, tp, uid, device_index=0 if isolate else rank)
        os.environ["ENGINE_DEVICE"] = comm.device
        value = fn(comm, *args)
        results.put((rank, True, value, ""))
    except BaseException as e:  # noqa: BLE001 -- reported to the launcher, which raises it
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        results.put((rank, False, f"{type(e).__name__}: {msg}", traceback.format_exc()))
    finally:
        if comm is not None:
            try:
                gc.collect()  # captured graphs (Decoder <-> Captured cycles) go before the communicator
                comm.close()
            except Exception:
                pass
