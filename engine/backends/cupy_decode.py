"""Decode-step kernels of the cupy backend that save launches (cupy RawModule over cuda/attention.cu and
cuda/decode.cu), one launcher each; like cupy_kernels, none calls cuBLAS or reads the device from the host,
so each runs inside a captured CUDA graph.

  rotary_cache  a decode step's rotary of q and k and the writes of rotated k and of v into the KV cache at
                the step's device slots: one launch for what took four (fused.py's rotary_cache)
  attention     cupy_kernels' split-K decode attention (attn_partial's chunks of ATTN_CHUNK positions, the
                same code) with the combine done by the last block of each (batch, head) to finish
                (attn_fused, the same combine as attn_combine): one launch instead of two. The ticket counters
                (B * Hq uints per device) are allocated once outside a capture and reset by the kernel
                itself, so graph replays start from zero; without them (the first call inside a capture)
                the two-launch path runs.
                On sm_90 and later, where S fits 8 chunks, one thread-block cluster a (batch, head) instead
                (attn_cluster, chunks of 32, 64 or 128 positions: the shortest that fit): each block writes
                its chunk's partial into rank 0's shared memory (distributed shared memory) and exits, rank
                0 combines them with attn_combine's arithmetic (o equal bit for bit to attn_partial +
                attn_combine in chunks of that size); no global partials, fence or tickets. On the H200 a
                Llama-2-7B decode layer's attention (S 264) takes 4.4 us against attn_fused's 6.2
                (measurements/h200/NOTES.md, session 16).
Inside a capture both launch as programmatic dependent launches (cupy_launch): each waits (pdl_wait) for the
kernel before it at its start, so only its launch overlaps that kernel's end; attn_cluster (CLUSTER_ATTENTION
"early") first reads the step's mask and prefetches the live K/V rows into L2, which the step made long before.
"""
from __future__ import annotations

import functools
from pathlib import Path

import cupy

from engine.backends import cupy_kernels as K
from engine.backends.cupy_launch import launch, sm90

_DIR = Path(__file__).resolve().parent / "cuda"
_SRC = "\n".join((_DIR / f).read_text() for f in ("prelude.cuh", "attention.cu", "decode.cu"))
ATTN_PER = (1, 2, 3, 4, 8)  # head dims 32 * PER, as cupy_kernels.attention_ok takes them


def names(t: str) -> tuple:
    """Every instantiation of this module for C type t (compiled together: one NVRTC run per dtype)."""
    return tuple(f"attn_fused<{t},{per}>" for per in ATTN_PER) + (f"rotary_cache<{t}>",)


@functools.lru_cache(maxsize=None)
def _module(t: str):
    return cupy.RawModule(code=_SRC, options=("-std=c++17",), name_expressions=list(names(t)))


def _fn(expr: str):
    t = expr.partition("<")[2].split(",")[0].rstrip(">")
    return _module(t).get_function(expr)


@functools.lru_cache(maxsize=None)
def _cluster_module(t: str, per: int, early: int):
    """attn_cluster<t, per, C, CH, early> for every cluster size and chunk, compiled together (sm_90 and later)."""
    exprs = [f"attn_cluster<{t},{per},{n},{h},{early}>" for n in CLUSTER_SIZES for h in K.ATTN_CHUNKS]
    return cupy.RawModule(code=_SRC, options=("-std=c++17",), name_expressions=exprs)


@functools.lru_cache(maxsize=None)
def _cluster_fn(t: str, per: int, c: int, ch: int, early: int):
    return _cluster_module(t, per, early).get_function(f"attn_cluster<{t},{per},{c},{ch},{early}>")


def _i64(*xs):
    return tuple(cupy.int64(x) for x in xs)


# ---- rotary + cache write -------------------------------------------------------------------------------------
def rotary_cache_ok(q, k, v, cos, sin, k_cache, v_cache, slots, dtype, q_out=None) -> bool:
    """Whether the kernel takes these operands: one kernel dtype throughout, unit last strides, caches of one
    layout (B, Hkv, S, D), q (if any) of k's batch, length and head dim, slots (L,) int64."""
    arrays = [a for a in (q, k, v, cos, sin, k_cache, v_cache, q_out) if a is not None]
    if not K._kernel_dtype(dtype) or any(a.dtype != dtype for a in arrays) or not k.size:
        return False
    if any(a.strides[-1] != a.itemsize for a in arrays) or cos.strides != sin.strides or cos.shape != sin.shape \
            or cos.ndim != 3:
        return False
    B, Hkv, L, D = k.shape
    rot = cos.shape[-1]
    if v.shape != k.shape or k_cache.ndim != 4 or k_cache.shape != v_cache.shape or k_cache.strides != v_cache.strides:
        return False
    if k_cache.shape[:2] != (B, Hkv) or k_cache.shape[3] != D or cos.shape[1] != L or cos.shape[0] not in (1, B):
        return False
    if rot > D or rot % 2 or slots.ndim != 1 or slots.shape[0] != L or slots.dtype != cupy.int64:
        return False
    if q is not None and (q.ndim != 4 or q.shape[0] != B or q.shape[2:] != (L, D)):
        return False
    return q_out is None or (q is not None and q_out.shape == q.shape and q_out.flags.c_contiguous)


def rotary_cache(q, k, v, cos, sin, k_cache, v_cache, slots, q_out):
    """k_cache[:, :, slots] = rotary(k), v_cache[:, :, slots] = v and q_out = rotary(q) (q None: the writes
    alone) in one launch; check rotary_cache_ok. Returns q_out."""
    B, Hkv, L, D = k.shape
    Hq = q.shape[1] if q is not None else 0
    isz = k.itemsize
    qs = [s // isz for s in q.strides[:3]] if q is not None else [0, 0, 0]
    cb = 0 if cos.shape[0] == 1 else cos.strides[0] // isz
    launch(_fn(f"rotary_cache<{K.type_name(k.dtype)}>"), (B * L * (Hq + 2 * Hkv),), (min(256, max(32, D)),), (
        K._opt(q), *_i64(*qs), k, *_i64(*(s // isz for s in k.strides[:3])), v,
        *_i64(*(s // isz for s in v.strides[:3])), cos, sin, *_i64(cb, cos.strides[1] // isz), K._opt(q_out), k_cache,
        v_cache, *_i64(*(s // isz for s in k_cache.strides[:3])), slots, cupy.int64(slots.strides[0] // 8),
        cupy.int32(Hq), cupy.int32(Hkv), cupy.int32(L), cupy.int32(D), cupy.int32(cos.shape[-1])))
    return q_out


# ---- decode attention with the combine folded in ------------------------------------------------------------
ONE_LAUNCH_ATTENTION = {"enabled": True}  # False: attn_partial + attn_combine (A/B runs: bench/decode_fuse.py)
# chunks: the chunk sizes a cluster may take, in order of preference (the first whose chunks fit CLUSTER_SIZES[-1])
CLUSTER_ATTENTION = {"enabled": True, "chunks": (32, 64, 128), "early": True}  # enabled False: attn_fused's tickets;
# early: attn_cluster reads the mask and prefetches the live K/V rows into L2 before pdl_wait (attention.cu)
CLUSTER_SIZES = (1, 2, 4, 8)  # attn_cluster's C: the smallest >= the chunks runs
_COUNTERS: dict = {}  # device id -> zeroed uint32 tickets (attn_fused resets each one it uses)
_OUTGROWN: list = []  # replaced ticket arrays, kept: graphs captured with them still read them
MIN_COUNTERS = 4096  # tickets allocated at least (batch x query heads of any decode here)


def counters(n: int, capturing: bool):
    """n zeroed tickets on the current device, or None inside a capture when none this large exist yet (an
    allocation there would belong to the graph)."""
    dev = cupy.cuda.runtime.getDevice()
    c = _COUNTERS.get(dev)
    if c is None or c.size < n:
        if capturing:
            return None
        if c is not None:
            _OUTGROWN.append(c)
        c = _COUNTERS[dev] = cupy.zeros(max(n, MIN_COUNTERS, c.size * 2 if c is not None else 0), cupy.uint32)
    return c


def attention(q, k, v, mask, scale: float, out, capturing: bool = False) -> None:
    """cupy_kernels.attention's contract (check K.attention_ok) in one launch: a cluster where cluster_size
    gives one, else attn_fused where the tickets exist, else the two launches."""
    B, Hq, _, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    isz = q.itemsize
    qs = [s // isz for s in q.strides]
    ks = [s // isz for s in k.strides]
    vs = [s // isz for s in v.strides]
    if mask is not None:
        mb, mstr = (0 if mask.shape[0] == 1 else mask.strides[0] // isz), mask.strides[-1] // isz
    else:
        mb = mstr = 0
    operands = (q, *_i64(qs[0], qs[1]), k, *_i64(ks[0], ks[1], ks[2]), v, *_i64(vs[0], vs[1], vs[2]), K._opt(mask),
                *_i64(mb, mstr))
    t = K.type_name(q.dtype)
    if (cc := cluster_size(S)) is not None:
        c, ch = cc
        launch(_cluster_fn(t, D // 32, c, ch, int(bool(CLUSTER_ATTENTION["early"]))), (B * Hq, c), (128,),
               (*operands, cupy.int32(Hq), cupy.int32(Hkv), cupy.int32(S), cupy.float32(scale), out))
        return
    tickets = counters(B * Hq, capturing) if ONE_LAUNCH_ATTENTION["enabled"] else None
    if tickets is None:
        return K.attention(q, k, v, mask, scale, out)
    n_chunks = -(-S // K.ATTN_CHUNK)
    part = cupy.empty((B * Hq, n_chunks, D + 2), cupy.float32)
    launch(_fn(f"attn_fused<{t},{D // 32}>"), (B * Hq, n_chunks), (128,), (
        *operands, part, cupy.int32(Hq), cupy.int32(Hkv), cupy.int32(S), cupy.float32(scale), out, tickets))


def cluster_size(S: int):
    """(C, CH): attn_cluster's cluster size and chunk for S cached positions on the current device (the first
    chunk of CLUSTER_ATTENTION's whose chunks fit a cluster, the smallest cluster that holds them), or None:
    disabled, a device older than sm_90, or more positions than any cluster takes."""
    if not (ONE_LAUNCH_ATTENTION["enabled"] and CLUSTER_ATTENTION["enabled"]):
        return None
    ch = next((h for h in CLUSTER_ATTENTION["chunks"] if -(-S // h) <= CLUSTER_SIZES[-1]), None)
    if ch is None:
        return None
    return (next(c for c in CLUSTER_SIZES if c * ch >= S), ch) if sm90() else None
