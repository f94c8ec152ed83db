"""Flash attention forward on the cupy backend: sdpa (torch's F.scaled_dot_product_attention) for 16-bit
q/k/v without the (B, H, L, S) scores ever in memory (engine/backends/cuda/flash_attn.cu, its own program).

flash_ok says which operands the kernel takes (the backend's sdpa falls back to the generic composition
otherwise); sdpa launches it. No cuBLAS, no host reads of device memory: capturable (engine/capture.py).
The result matches torch's fused sdpa within fp16 rounding (float32 scores and softmax, P rounded to the
activations' dtype before P @ V as FlashAttention does); it is not bit-equal to the eager composition.
"""
from __future__ import annotations

import functools
import os

import cupy
import numpy as np

from engine.backends import cupy_kernels as K

_SRC = "\n".join((K._DIR / f).read_text() for f in ("prelude.cuh", "mma.cuh", "flash_attn.cu"))
HEAD_DIMS = (32, 48, 64, 80, 96, 128, 160)  # EP, the padded head dims instantiated (E % 8 == 0, E <= 160)
BLOCK_ROWS = 64  # query rows per block (FA_BM); key tiles of 64 (FA_BN)
_MASK_KINDS = {"bool": 1, "float32": 3}  # else 2: an additive mask of q's dtype
# enabled: sdpa takes the kernel where flash_ok (TAPER_FLASH=0: the composition, for comparisons);
# pipe: the kernel variant with cp.async double-buffered K/V tiles and ldmatrix.trans for V (TAPER_FLASH_PIPE=0:
# the plain one, loads then products); attention: when the attention op's 16-bit rows take the kernel
# (TAPER_FLASH_ATTENTION): "capture" (default) inside captured forwards, where cuBLAS cannot run and the
# composition is slower (H200: BERT batch 32 2.9 against 5.1 ms, Whisper-base encoder 3.6 against 11.1);
# "always" (also eager: Llama-2-7B's 512-token prefill through the decoder took 50 against 28.5 ms with
# cuBLAS + the softmax kernel, not yet explained); "never" (transformers' eager rounding)
_ATTN = {"0": "never", "1": "always"}
FLASH = {"enabled": os.environ.get("TAPER_FLASH", "1") != "0", "pipe": os.environ.get("TAPER_FLASH_PIPE", "1") != "0",
         "attention": _ATTN.get(os.environ.get("TAPER_FLASH_ATTENTION", ""), os.environ.get("TAPER_FLASH_ATTENTION")
                                or "capture")}


def padded_head_dim(E: int) -> int:
    """The instantiation that serves head dim E: the smallest EP >= E (E padded with zeros in shared memory)."""
    return next(ep for ep in HEAD_DIMS if ep >= E)


_FNS: dict = {}


def _fn(t: str, ep: int, pipe: bool):
    """One instantiation, compiled on first use (under a second of NVRTC; cupy keeps it on disk)."""
    key = (t, ep, pipe)
    f = _FNS.get(key)
    if f is None:
        name = f"flash_fwd<{t},{ep},{'true' if pipe else 'false'}>"
        f = _FNS[key] = cupy.RawModule(code=_SRC, options=("-std=c++17",), name_expressions=[name]).get_function(name)
    return f


def smem_bytes(ep: int, pipe: bool) -> int:
    """Q, K and V tiles of 64 rows (K and V twice with pipe), row stride EP + 8 values of 2 bytes."""
    return (5 if pipe else 3) * BLOCK_ROWS * (ep + 8) * 2


@functools.lru_cache(maxsize=None)
def arch_ok(device_id: int) -> bool:
    """The kernel needs sm_80 or newer (mma.sync with bf16, cp.async)."""
    return int(cupy.cuda.Device(device_id).compute_capability) >= 80


def _as4(a):
    """A view of a with 4 dims (leading 1s), or None past 4 dims."""
    return a[(None,) * (4 - a.ndim)] if a.ndim <= 4 else None


def _rows_ok(a) -> bool:
    """Unit last stride, 16-byte aligned start and row/head/batch strides (the kernel's 16-byte loads)."""
    return a.strides[-1] == a.itemsize and a.data.ptr % 16 == 0 and all(
        s % 16 == 0 for n, s in zip(a.shape[:-1], a.strides[:-1]) if n > 1)


def flash_ok(q, k, v, mask) -> bool:
    """Whether the flash kernel takes sdpa's operands (on an sm_80+ GPU): cupy arrays of one 16-bit dtype
    with 2 to 4 dims, (B, Hq, L, E) / (B|1, Hkv, S, E) with Hq a multiple of Hkv, Ev == E, E % 8 == 0 and
    E <= 160, L and S > 0, unit last strides and 16-byte aligned rows; mask None, bool, q's dtype or float32,
    broadcastable to (B, Hq, L, S) without widening the output."""
    if not FLASH["enabled"] or not (type(q) is type(k) is type(v) is cupy.ndarray):
        return False
    if not q.dtype == k.dtype == v.dtype:
        return False
    if q.dtype.itemsize != 2 or not K._kernel_dtype(q.dtype) or not (2 <= q.ndim <= 4 and q.ndim == k.ndim == v.ndim):
        return False
    E, L, S = q.shape[-1], q.shape[-2], k.shape[-2]
    if k.shape[-1] != E or v.shape[-1] != E or v.shape[-2] != S or E % 8 or E > HEAD_DIMS[-1] or not (L and S):
        return False
    q4, k4, v4 = _as4(q), _as4(k), _as4(v)
    B, Hq = q4.shape[:2]
    if k4.shape[:2] != v4.shape[:2] or k4.shape[0] not in (1, B) or Hq % k4.shape[1]:
        return False
    if B >= 65536 or Hq >= 65536 or not all(_rows_ok(a) for a in (q, k, v)) or not arch_ok(q.device.id):
        return False
    if mask is None:
        return True
    if type(mask) is not cupy.ndarray or mask.ndim > 4 or mask.size == 0:
        return False
    if not (mask.dtype == np.bool_ or mask.dtype == q.dtype or mask.dtype == np.float32):
        return False
    return all(m in (1, n) for m, n in zip(_as4(mask).shape, (B, Hq, L, S)))


def _strides(a4, isz) -> list:
    """Element strides of a 4-d view, 0 along dims of size 1 (broadcast)."""
    return [0 if n == 1 else s // isz for n, s in zip(a4.shape, a4.strides)]


def sdpa(q, k, v, mask, causal: bool, scale: float, out, pipe=None) -> None:
    """out (q.shape[:-1] + (E,), q's dtype) = softmax(scale * q @ k^T [+ mask | causal]) @ v. Check flash_ok
    first. out: contiguous, or any view with a unit last stride and 4-byte aligned rows (the attention op's
    (B, L, Hq, E) output seen as (B, Hq, L, E)). pipe: the kernel variant (None: FLASH["pipe"])."""
    q4, k4, v4 = _as4(q), _as4(k), _as4(v)
    B, Hq, L, E = q4.shape
    Hkv, S = k4.shape[1], k4.shape[2]
    isz = q.itemsize
    i64, i32 = cupy.int64, cupy.int32
    qs, ks_, vs, os_ = _strides(q4, isz), _strides(k4, isz), _strides(v4, isz), _strides(_as4(out), isz)
    if mask is None:
        kind, ms = 0, [0, 0, 0, 0]
    else:
        m4 = _as4(mask)
        kind = _MASK_KINDS.get(mask.dtype.name, 2)
        ms = _strides(m4, mask.itemsize)
    ep = padded_head_dim(E)
    pipe = FLASH["pipe"] if pipe is None else pipe
    fn = _fn(K.type_name(q.dtype), ep, pipe)
    smem = smem_bytes(ep, pipe)
    K._allow_smem(fn, smem)
    grid = (-(-L // BLOCK_ROWS), Hq, B)
    fn(grid, (128,), (q, i64(qs[0]), i64(qs[1]), i64(qs[2]), k, i64(ks_[0]), i64(ks_[1]), i64(ks_[2]),
                      v, i64(vs[0]), i64(vs[1]), i64(vs[2]), K._opt(mask), i32(kind), i64(ms[0]), i64(ms[1]),
                      i64(ms[2]), i64(ms[3]), out, i64(os_[0]), i64(os_[1]), i64(os_[2]), i32(Hq), i32(Hq // Hkv),
                      i32(L), i32(S), i32(E),
                      cupy.float32(scale), i32(1 if causal else 0)), shared_mem=smem)



def attention(backend, q, k, v, mask, scale: float, out_dtype):
    """The backend's attention op (engine.nn.attention: LLM prefill, BERT, CLIP, Whisper) for more than one
    16-bit query row through the kernel (where FLASH["attention"] says): q (B, Hq, L, D), k/v (B, Hkv, S, D), additive mask (B|1, 1, L, S)
    -> (B, L, Hq * D); None where the kernel does not take them. Scores and softmax stay in float32 (torch's
    sdpa, transformers' default attn_implementation) rather than rounded as transformers' eager attention."""
    b, hq, L, _ = q.shape
    mode = FLASH["attention"]
    if mode not in ("always", "capture", "never"):
        raise ValueError(f"TAPER_FLASH_ATTENTION={mode!r}: use capture, always or never (1 / 0)")
    if mode == "never" or (mode == "capture" and not backend.capturing()):
        return None
    if not (L > 1 and q.dtype == out_dtype.np_dtype and flash_ok(q, k, v, mask)):
        return None
    dv = v.shape[-1]
    out = backend.empty((b, L, hq * dv), out_dtype)
    sdpa(q, k, v, mask, False, scale, out.reshape(b, L, hq, dv).transpose(0, 2, 1, 3))  # written in place: no copy
    return out
