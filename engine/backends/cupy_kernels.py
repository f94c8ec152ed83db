"""CUDA kernels of the cupy backend (cupy RawModule), one launcher each.

Each kernel is the fast path of one backend op for the shapes it takes (the backend falls back to the
plain composition otherwise) and has a parity test against that composition (tests/test_fused.py).
None calls cuBLAS or reads the device from the host, so every one can run inside a captured CUDA
graph. Rounding follows the composition op by op (16-bit values round to T after each op the
composition rounds after; float32 ops use the _rn intrinsics, so nothing is contracted into an FMA
that the composition computes in two steps), which makes a fused launch equal the eager ops it
replaces bit for bit where the reduction order is the same.

  gemv       y[m] = x[m] @ W.T (+ b) for m < 8 rows, with optional rms_norm prologue (the norm of each
             x row, styles llama / gemma / torch), GLU epilogue over two weights (act(gate) * up) and
             residual epilogue; 16-byte loads, rows x K-split warps per block (gemv_config)
  layer_norm one block a row: LayerNorm over the last dim in float32 (rows of huge values scaled first)
  rms_norm   one block per row, the same prologue code as gemv
  rotary     HF rotate_half rotary on (B, H, L, D) strided views
  attention  one query row per (batch, head) over a KV cache, split over chunks of 128 positions
             (flash-decoding), additive mask; a chunk whose mask hides every position is skipped
  qgemv      y[m] = x[m] @ W.T (+ b) for m <= 8 rows with W in a ggml block format (engine/quant.py):
             the packed blocks read from device memory and dequantised in registers, fp32 sums
  qdequant   rows of such a W (gathered by an index, for embeddings), dequantised exactly as gguf-py
  group_norm_act  one block per (sample, group): GroupNorm, optionally followed by an activation; a large
             group (few groups for the card) in chunks: statistics per chunk, then Chan's combine per block
  conv2d     16-bit 2-d convolution as an implicit GEMM on tensor cores (wmma), the im2col tile gathered
             into shared memory (no cuBLAS, no column matrix: capturable)
Layouts: weights row-major [N, K] (torch's Linear layout); element strides are passed for views.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import cupy

from .cupy_launch import launch

_DIR = Path(__file__).resolve().parent / "cuda"
# the sources, in include order (each .cu file relies on the headers before it)
_FILES = ("prelude.cuh", "common.cuh", "mma.cuh", "gemv.cu", "rows.cu", "attention.cu", "sample.cu",
          "quant_formats.cuh", "quant.cu", "quant_span.cuh", "quant_span.cu", "quant_direct.cu", "quant_ring.cu",
          "group_norm.cu")
PRELUDE = (_DIR / "prelude.cuh").read_text()
_SRC = "\n".join((_DIR / f).read_text() for f in _FILES)
# the tensor-core conv includes <mma.h>: its own program, so an install without CUDA's crt/ headers loses
# only conv2d_igemm (conv2d_ok is then False), not every kernel
_CONV_SRC = "\n".join((_DIR / f).read_text() for f in ("prelude.cuh", "common.cuh", "conv.cu"))

TYPES = {"float16": "__half", "bfloat16": "__nv_bfloat16", "float32": "float"}
ATTN_CHUNK = 128  # positions per attention block (attention.cu's CH)
ATTN_CHUNKS = (32, 64, ATTN_CHUNK)  # the chunk sizes compiled (cupy_decode's clusters take the shorter ones)
SOFTMAX_WARP_E = (1, 2, 4, 8, 16, 32)  # softmax_mask_warp instantiations: up to 32 * E positions a row
MAX_ROWS = 8  # gemv takes at most this many rows of x (decode batches); more rows go to cuBLAS
_SMEM_OPTIN: dict = {}  # device id -> its dynamic shared memory a block with the opt-in


def smem_limit() -> int:
    """The current device's dynamic shared memory a block with the opt-in above 48 KiB
    (cudaDevAttrMaxSharedMemoryPerBlockOptin: 227 KiB on sm_90, 163 KiB on sm_80, 99 KiB on sm_86 and sm_89),
    read once a device: the shapes whose staged rows fit it are the ones the kernels take."""
    dev = cupy.cuda.runtime.getDevice()
    v = _SMEM_OPTIN.get(dev)
    if v is None:
        v = _SMEM_OPTIN[dev] = int(cupy.cuda.Device(dev).attributes["MaxSharedMemoryPerBlockOptin"])
    return v


def _bundle(expr: str) -> tuple:
    """The instantiations compiled together with `expr` (one NVRTC run each: a model's decode needs
    only a few bundles per dtype, so the first step compiles in seconds, and cupy keeps them on disk)."""
    name, _, args = expr.partition("<")
    t = args.split(",")[0].rstrip(">")
    u = GEMV_CONFIG["unroll"]
    if name == "gemv" and expr in {f"gemv<{t},{r},{k},{m},{u}>" for r, k in _DEFAULT_RS for m in (1, 2, 4, 8)}:
        return tuple(f"gemv<{t},{r},{k},{m},{u}>" for r, k in _DEFAULT_RS for m in (1, 2, 4, 8))
    if name in ("attn_partial", "attn_combine"):
        return tuple(f"attn_partial<{t},{per},{ch}>" for per in (1, 2, 3, 4, 8) for ch in ATTN_CHUNKS) + (
            f"attn_combine<{t}>",)
    if name in ("qgemv", "qdequant_rows"):  # one bundle per (dtype, format): every row count and the dequantiser
        f = args.split(",")[1].rstrip(">")
        return tuple(f"qgemv<{t},{f},{m}>" for m in (1, 2, 4, 8)) + (f"qdequant_rows<{t},{f}>",)
    if name in ("qgemv_fused", "qgemv_span"):  # qgemv_span: cupy_quant.py's
        f, d = args.split(",")[1].rstrip(">"), "".join("," + a.rstrip(">") for a in args.split(",")[3:])
        return tuple(f"{name}<{t},{f},{m}{d}>" for m in (1, 2, 4, 8))  # d: qgemv_span's D (the dp4a route)
    if name == "qgemv_direct":  # cupy_quant.py's: every row count of one (dtype, format, D)
        f, d = args.split(",")[1], "".join("," + a.rstrip(">") for a in args.split(",")[3:])
        return tuple(f"qgemv_direct<{t},{f},{m}{d}>" for m in (1, 2, 4, 8))
    if name == "qgemv_ring":  # cupy_quant.py's: every XJ of one (dtype, format, NW, U, norm style)
        _, f, nw, _, u, st = args.rstrip(">").split(",")
        return tuple(f"qgemv_ring<{t},{f},{nw},{xj},{u},{st}>" for xj in (2, 4, 6))
    if name == "conv2d_igemm":
        return ("conv2d_igemm<__half>", "conv2d_igemm<__nv_bfloat16>")
    if name.startswith("group_norm_"):
        return tuple(f"{n}<{t}>" for n in ("group_norm_act", "group_norm_stats", "group_norm_apply"))
    misc = ("rms_norm_rows", "rotary", "moe_combine", "sample_rows", "gemm_tiled", "softmax_mask_rows",
            "layer_norm_rows", "bias_fill", "rope", "causal_mask")
    if name in misc or name in ("softmax_mask_warp", "advance"):  # advance: no type, in each dtype's bundle
        t = t or "float"
        return tuple(f"{n}<{t}>" for n in misc) + tuple(f"softmax_mask_warp<{t},{e}>" for e in SOFTMAX_WARP_E) + (
            "advance",)
    return (expr,)


@functools.lru_cache(maxsize=None)
def _module(bundle: tuple):
    src = _CONV_SRC if bundle[0].startswith("conv2d_igemm") else _SRC
    return cupy.RawModule(code=src, options=("-std=c++17",), name_expressions=list(bundle))


_FNS: dict = {}


def _fn(expr: str):
    """A kernel instantiation, compiled with its bundle on first use."""
    f = _FNS.get(expr)
    if f is None:
        f = _FNS[expr] = _module(_bundle(expr)).get_function(expr)
    return f


_BY_DTYPE = {}  # numpy dtype -> C type (dtype.name is slow on the launch path)


def type_name(dtype) -> str:
    t = _BY_DTYPE.get(dtype)
    if t is None:
        name = getattr(dtype, "name", str(dtype))
        if name not in TYPES:
            raise TypeError(f"CUDA kernels support float16, bfloat16 and float32, got {name}")
        t = _BY_DTYPE[dtype] = TYPES[name]
    return t


def _kernel_dtype(dtype) -> bool:
    return dtype in _BY_DTYPE or getattr(dtype, "name", str(dtype)) in TYPES


def _opt(a):
    """An optional array argument: a null pointer when absent."""
    return _NULL if a is None else a


def _vec(dtype) -> int:
    return 16 // dtype.itemsize


def _aligned(a) -> bool:
    return a.data.ptr % 16 == 0


# ---- gemv ----------------------------------------------------------------------------------------------------
# (rows per warp, warps splitting K): from bench/kernel_profile.py on the H200 (graph replays, Llama-2-7B
# shapes, measurements/h200/): four rows per warp always won; K split over 2 warps for K <= 8192 and
# over 4 for longer rows (down_proj) keeps enough 16-byte loads in flight; unroll mattered by < 2%.
GEMV_VARIANTS = ((2, 1), (2, 2), (4, 2), (2, 4), (4, 4), (2, 8))
GEMV_CONFIG = {"short_k": (4, 2), "long_k": (4, 4), "unroll": 4,
               # 16-bit x with at least mma_rows rows runs on tensor cores (gemv_mma: K slices, unroll); None: never
               "mma_rows": 5, "mma": (4, 4)}
_DEFAULT_RS = (GEMV_CONFIG["short_k"], GEMV_CONFIG["long_k"])


def gemv_config(N: int, K: int) -> tuple:
    """By K alone, so every GEMV over the same K sums each row in the same order (grouped and batched
    launches then equal separate ones bit for bit)."""
    return GEMV_CONFIG["short_k"] if K <= 8192 else GEMV_CONFIG["long_k"]


NORM_STYLES = {None: 0, "llama": 1, "gemma": 2, "torch": 3}
ACTS = {"silu": 1, "gelu_tanh": 2, "gelu": 3}


def gemv_ok(x2, W, W2=None) -> bool:
    """Whether gemv takes these operands: at most MAX_ROWS rows, 16-byte aligned contiguous rows."""
    if x2.ndim != 2 or W.ndim != 2 or not 0 < x2.shape[0] <= MAX_ROWS or x2.dtype != W.dtype:
        return False
    if not _kernel_dtype(W.dtype) or x2.shape[1] != W.shape[1] or W.shape[0] == 0:
        return False
    v = _vec(W.dtype)
    K = W.shape[1]
    ws = [W] + ([W2] if W2 is not None else [])
    if K % v or any(not w.flags.c_contiguous or not _aligned(w) for w in ws):
        return False
    if x2.strides[1] != x2.itemsize or x2.strides[0] % 16 or not _aligned(x2):
        return False
    return x2.shape[0] * K * W.dtype.itemsize <= smem_limit() - 8 * 1024


def _allow_smem(fn, smem: int) -> None:
    """Let fn take `smem` bytes of dynamic shared memory (past 48 KiB with the static part a launch must
    ask). The limit belongs to the kernel, not the launch: only ever raised, since one instantiation
    serves several K (a smaller K setting it lower would make the larger one's launch invalid)."""
    if smem > 44 * 1024 and smem > fn.max_dynamic_shared_size_bytes:
        fn.max_dynamic_shared_size_bytes = smem


def _mma_ok(m: int, K: int, dtype) -> bool:
    """Whether gemv runs on tensor cores (gemv_mma): 16-bit, enough rows, K in chunks of 32, and the
    8 staged x rows fit in shared memory."""
    lo = GEMV_CONFIG["mma_rows"]
    return (lo is not None and m >= lo and dtype.itemsize == 2 and K % 32 == 0
            and MAX_ROWS * K * dtype.itemsize <= smem_limit() - 8 * 1024)


_GEMV_LAUNCH: dict = {}  # launch plan by shape: kernel, grid, shared memory and the scalar arguments
_NULL = cupy.uint64(0)


def gemv(x2, W, out, bias=None, W2=None, bias2=None, act=None, norm=None, residual=None,
         rows_k=None, unroll=None, segments=None, pdl: bool = False):
    """out (m, N) = x2 (m, K) @ W.T (+ bias) [GLU: act(.) * (x2 @ W2.T + bias2), out (m, N)];
    norm = (weight, eps, style) applies rms_norm to each x row first; residual (m, N) is added last;
    segments [(W_b, bias_b), (W_c, bias_c)] stack more weights under W (out holds each one's rows).
    Check gemv_ok first. The launch plan of a shape is kept, so a call costs little host time. pdl: W (W2,
    segments) no earlier kernel still running may write: a programmatic dependent launch inside a capture."""
    m, K = x2.shape
    nw, eps, style = norm or (None, 0.0, None)
    segs = tuple(w.shape[0] for w, _ in segments) if segments else ()
    isz = W.dtype.itemsize
    res_row = residual.strides[0] // isz if residual is not None else 0
    key = (W.dtype, m, W.shape[0], K, W2 is not None, segs, rows_k, unroll, act, style, eps,
           x2.strides[0], out.strides[0], res_row, GEMV_CONFIG["mma_rows"], GEMV_CONFIG["mma"])
    plan = _GEMV_LAUNCH.get(key)
    if plan is None:
        N = W.shape[0]
        n_virtual = 2 * N if W2 is not None else N + sum(segs)
        if rows_k is None and _mma_ok(m, K, W.dtype):
            S, U = GEMV_CONFIG["mma"]
            fn, R, smem = _fn(f"gemv_mma<{type_name(W.dtype)},{S},{U}>"), 16, MAX_ROWS * K * isz
        else:
            R, S = rows_k or gemv_config(n_virtual, K)
            U = unroll or GEMV_CONFIG["unroll"]
            M = 1 if m == 1 else 2 if m <= 2 else 4 if m <= 4 else 8
            fn = _fn(f"gemv<{type_name(W.dtype)},{R},{S},{M},{U}>")
            smem = M * K * isz
        _allow_smem(fn, smem)
        i32, i64 = cupy.int32, cupy.int64
        scalars = (i64(x2.strides[0] // isz), cupy.float32(eps), i32(NORM_STYLES[style]), i64(res_row),
                   i64(out.strides[0] // isz), i32(n_virtual), i32(K), i32(m), i32(ACTS.get(act, 0)), i32(1), i64(0),
                   i32(N), i32(segs[0] if segs else 0))
        plan = _GEMV_LAUNCH[key] = (fn, (-(-n_virtual // ((8 // S) * R)),), smem, scalars)
    fn, grid, smem, sc = plan
    wb, bb = segments[0] if segments else (None, None)
    wc, bc = segments[1] if segments and len(segments) > 1 else (None, None)
    o = _opt
    launch(fn, grid, (256,), (W, o(W2), x2, sc[0], o(nw), sc[1], sc[2], o(bias), o(bias2), o(residual), sc[3], out,
                              sc[4], sc[5], sc[6], sc[7], sc[8], _NULL, _NULL, _NULL, sc[9], sc[10], o(wb), o(wc),
                              o(bb), o(bc), sc[11], sc[12]), smem, pdl=pdl)


def gemv_routed(x2, table, ids, x_div: int, out, table2=None, act=None, n: int = 0, k_dim: int = 0):
    """Problem p (one per element of ids) computes out[p] = x2[p // x_div] @ W_e.T with W_e = the
    weight table[ids[p]] (n x k_dim each), or the GLU act(W_e x) * (W2_e x) with table2."""
    P = ids.size
    dt = out.dtype
    t = type_name(dt)
    n_virtual = 2 * n if table2 is not None else n
    R, S = gemv_config(n_virtual, k_dim)
    fn = _fn(f"gemv<{t},{R},{S},1,{GEMV_CONFIG['unroll']}>")
    smem = k_dim * dt.itemsize
    _allow_smem(fn, smem)
    isz = dt.itemsize
    grid = (-(-n_virtual // ((8 // S) * R)), P)
    fn(grid, (256,), (cupy.uint64(0), cupy.uint64(0), x2, cupy.int64(x2.strides[0] // isz), cupy.uint64(0),
                      cupy.float32(0), cupy.int32(0), cupy.uint64(0), cupy.uint64(0), cupy.uint64(0), cupy.int64(0),
                      out, cupy.int64(0), cupy.int32(n_virtual), cupy.int32(k_dim), cupy.int32(1),
                      cupy.int32(ACTS.get(act, 0)), table, _opt(table2), ids, cupy.int32(x_div),
                      cupy.int64(out.strides[0] // isz), cupy.uint64(0), cupy.uint64(0), cupy.uint64(0),
                      cupy.uint64(0), cupy.int32(0), cupy.int32(0)), shared_mem=smem)


def moe_combine(y, weights, ids, out):
    T_, H = out.shape
    _fn(f"moe_combine<{type_name(out.dtype)}>")((T_,), (256,), (y, weights, ids, out, cupy.int32(H),
                                                              cupy.int32(ids.shape[1])))


def rms_norm(x2, weight, eps: float, style: str, out):
    """out (rows, K) = rms_norm of each x2 row (16-byte aligned rows, K a multiple of 16 bytes)."""
    rows, K = x2.shape
    _fn(f"rms_norm_rows<{type_name(x2.dtype)}>")((rows,), (256,), (
        x2, cupy.int64(x2.strides[0] // x2.itemsize), _opt(weight), out, cupy.int32(K), cupy.float32(eps),
        cupy.int32(NORM_STYLES[style])))


def layer_norm_ok(x2, weight, bias) -> bool:
    """layer_norm takes rows (R, K) of a kernel dtype with unit element stride, K a multiple of 16 bytes,
    16-byte aligned rows, and contiguous weight and bias of x's dtype (or none)."""
    k = x2.shape[1]
    return (_kernel_dtype(x2.dtype) and k > 0 and k % (16 // x2.itemsize) == 0 and x2.strides[1] == x2.itemsize
            and x2.strides[0] % 16 == 0 and x2.data.ptr % 16 == 0 and x2.shape[0] > 0
            and all(a is None or (a.dtype == x2.dtype and a.flags.c_contiguous and a.size == k
                                  and a.data.ptr % 16 == 0) for a in (weight, bias)))


def layer_norm(x2, weight, bias, eps: float, out):
    """out (rows, K) = layer_norm of each x2 row over its K values (check layer_norm_ok)."""
    rows, K = x2.shape
    _fn(f"layer_norm_rows<{type_name(x2.dtype)}>")((rows,), (256,), (
        x2, cupy.int64(x2.strides[0] // x2.itemsize), _opt(weight), _opt(bias), out, cupy.int32(K), cupy.float32(eps)))


def bias_fill(out, b, axis: int) -> bool:
    """out (..., C, *inner) contiguous = b (C,) along `axis`, broadcast over the other dims, in one vectorised
    launch; False (nothing written) where the layout does not fit: out[...] = b's broadcast is then the caller's."""
    if not (_kernel_dtype(out.dtype) and out.flags.c_contiguous and b.flags.c_contiguous and b.dtype == out.dtype
            and out.size and b.ndim == 1 and out.shape[axis] == b.size and out.data.ptr % 16 == 0
            and b.data.ptr % 16 == 0):
        return False
    v = 16 // out.itemsize
    inner = 1
    for n in out.shape[axis % out.ndim + 1:]:
        inner *= n
    if inner == 1 and b.size % v == 0:
        inner_v = 0
    elif inner > 1 and inner % v == 0:
        inner_v = inner // v
    else:
        return False
    total_v = out.size // v
    _fn(f"bias_fill<{type_name(out.dtype)}>")((min(-(-total_v // 256), 2048),), (256,), (
        b, out, cupy.int64(total_v), cupy.int32(b.size), cupy.int64(inner_v)))
    return True


def rotary(x, cos, sin, out):
    """x (B, H, L, D) with unit last stride; cos/sin (B|1, L, rot) with unit last stride; out contiguous."""
    B, H, L, D = x.shape
    isz = x.itemsize
    sb, sh, sl = (s // isz for s in x.strides[:3])
    cb = 0 if cos.shape[0] == 1 else cos.strides[0] // isz
    _fn(f"rotary<{type_name(x.dtype)}>")((B * H * L,), (min(256, max(32, D)),), (
        x, cupy.int64(sb), cupy.int64(sh), cupy.int64(sl), cos, sin, cupy.int64(cb),
        cupy.int64(cos.strides[1] // isz), out, cupy.int32(H), cupy.int32(L), cupy.int32(D),
        cupy.int32(cos.shape[-1])))


def attention_ok(q, k, v, mask) -> bool:
    """Whether attn_partial takes these operands: one query row, head dim 32 * (1, 2, 3, 4 or 8), unit last
    strides, k and v of one layout with 16-byte aligned rows (the kernel reads them 16 bytes at a time)."""
    if q.ndim != 4 or q.shape[2] != 1 or not _kernel_dtype(q.dtype) or not (q.dtype == k.dtype == v.dtype):
        return False
    D = q.shape[-1]
    if D % 32 or D // 32 not in (1, 2, 3, 4, 8) or v.shape[-1] != D or k.shape[2] == 0:
        return False
    if any(a.strides[-1] != a.itemsize for a in (q, k, v)):
        return False
    if any(s % 16 for s in k.strides[:3]) or not (_aligned(k) and _aligned(v)) or k.strides != v.strides:
        return False
    return mask is None or (mask.dtype == q.dtype and mask.shape[-2] == 1)


def attention(q, k, v, mask, scale: float, out, chunk: int = ATTN_CHUNK):
    """out (B, 1, Hq * D) = attention of q (B, Hq, 1, D) over k/v (B, Hkv, S, D) (check attention_ok), in
    chunks of `chunk` positions (one of ATTN_CHUNKS)."""
    B, Hq, _, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    isz = q.itemsize
    n_chunks = -(-S // chunk)
    part = cupy.empty((B * Hq, n_chunks, D + 2), cupy.float32)
    t = type_name(q.dtype)
    qs = [s // isz for s in q.strides]
    ks = [s // isz for s in k.strides]
    if mask is not None:
        mb = 0 if mask.shape[0] == 1 else mask.strides[0] // isz
        mstr = mask.strides[-1] // isz
    else:
        mb = mstr = 0
    _fn(f"attn_partial<{t},{D // 32},{chunk}>")((B * Hq, n_chunks), (128,), (
        q, cupy.int64(qs[0]), cupy.int64(qs[1]), k, cupy.int64(ks[0]), cupy.int64(ks[1]), cupy.int64(ks[2]),
        v, cupy.int64(ks[0]), cupy.int64(ks[1]), cupy.int64(ks[2]), _opt(mask), cupy.int64(mb), cupy.int64(mstr),
        part, cupy.int32(Hq), cupy.int32(Hkv), cupy.int32(S), cupy.float32(scale)))
    _fn(f"attn_combine<{t}>")((B * Hq,), (128,), (part, out, cupy.int32(D), cupy.int32(n_chunks)))


def sample(logits, seen, penalty: float, temperature: float, top_k, top_p, seed: int, counter, out):
    """out (B,) int64 = the next token of each logits row (engine/sampling.py's steps); the caller
    advances counter."""
    B, V = logits.shape
    if logits.strides[1] != logits.itemsize:
        logits = cupy.ascontiguousarray(logits)
    scratch = cupy.empty((B, V), cupy.float32)
    _fn(f"sample_rows<{type_name(logits.dtype)}>")((B,), (1024,), (
        logits, cupy.int64(logits.strides[0] // logits.itemsize), _opt(seen), cupy.float32(penalty),
        cupy.float32(temperature), cupy.int32(top_k or 0), cupy.float32(1.0 if top_p is None else top_p),
        cupy.uint64(seed & ((1 << 64) - 1)), counter, scratch, out, cupy.int32(V)))


def gemm(a3, b3, out, bias=None):
    """out (batch, M, N) = a3 (batch, M, K) @ b3 (batch, K, N) (+ bias (N,)) with any element strides;
    the capture-safe product (no cuBLAS), a plain tiled kernel."""
    batch, M, K = a3.shape
    N = b3.shape[-1]
    isz = a3.itemsize
    sa = [s // isz for s in a3.strides]
    sb = [s // isz for s in b3.strides]
    _fn(f"gemm_tiled<{type_name(out.dtype)}>")((-(-N // 64), -(-M // 64), batch), (256,), (
        a3, cupy.int64(sa[0]), cupy.int64(sa[1]), cupy.int64(sa[2]), b3, cupy.int64(sb[0]), cupy.int64(sb[1]),
        cupy.int64(sb[2]), _opt(bias), out, cupy.int32(M), cupy.int32(N), cupy.int32(K)))


def softmax_mask_rows(s, mask, scale: float, L: int, per_batch: int, p):
    """p (rows, S) = the rounded float32 softmax of round(round(s * scale) + mask) per row; rows of
    one batch element are `per_batch` consecutive rows whose query position is row % L."""
    rows, S = s.shape
    isz = s.itemsize
    if mask is not None:
        mb = 0 if mask.shape[0] == 1 else mask.strides[0] // isz
        ml, ms = mask.strides[2] // isz, mask.strides[3] // isz
    else:
        mb = ml = ms = 0
    args = (s, _opt(mask), cupy.int64(mb), cupy.int64(ml), cupy.int64(ms), p, cupy.int32(S), cupy.int32(L),
            cupy.int32(per_batch), cupy.float32(scale))
    t = type_name(s.dtype)
    e = next((e for e in SOFTMAX_WARP_E if 32 * e >= S), None)
    if e is None:  # long rows: a block of 256 threads per row, three passes over it
        _fn(f"softmax_mask_rows<{t}>")((rows,), (256,), args)
    else:  # a warp per row, its values in registers
        _fn(f"softmax_mask_warp<{t},{e}>")((-(-rows // 8),), (256,), args + (cupy.int64(rows),))


# ---- quantized weights (engine/quant.py): fused dequant-GEMV and dequantisation ------------------------------
QFORMATS = {"q4_0": 0, "q4_1": 1, "q8_0": 2, "q4_k": 3, "q6_k": 4}  # the F of quant.cu's templates
_QALIGN = {"q4_0": 2, "q4_1": 4, "q8_0": 2, "q4_k": 16, "q6_k": 2}  # the widest load each format makes


# The quantized kernels (qgemv, qgemv_span, qgemv_fused, qdequant): their CUDA tests (tests/test_gguf_cuda.py)
# pass on the H200 (measurements/h200/session5/). TAPER_QUANT_KERNELS=0 (or QUANT_KERNELS["enabled"] = False)
# sends CUDA GGUF models to the reference path (dequantised tiles, cuBLAS).
QUANT_KERNELS = {"enabled": os.environ.get("TAPER_QUANT_KERNELS", "1") != "0"}


def qdata_ok(data, qtype: str) -> bool:
    """Whether the kernels read these blocks: (rows, row_bytes) uint8, C-contiguous, aligned for the format's loads."""
    return (QUANT_KERNELS["enabled"] and qtype in QFORMATS and data.ndim == 2 and data.dtype == cupy.uint8 and data.flags.c_contiguous
            and data.data.ptr % _QALIGN[qtype] == 0 and data.strides[0] % _QALIGN[qtype] == 0)


def qgemv_ok(x2, data, qtype: str) -> bool:
    """Whether qgemv takes these operands: 1..MAX_ROWS rows of a kernel dtype, 16-byte aligned rows."""
    if x2.ndim != 2 or not 0 < x2.shape[0] <= MAX_ROWS or not _kernel_dtype(x2.dtype) or data.shape[0] == 0:
        return False
    if x2.strides[1] != x2.itemsize or x2.strides[0] % 16 or not _aligned(x2):
        return False
    return qdata_ok(data, qtype)


_QGEMV_LAUNCH: dict = {}


def qgemv(x2, data, qtype: str, out, bias=None):
    """out (m, N) = x2 (m, K) @ W.T (+ bias), W (N, K) the ggml blocks `data` (N, row_bytes); check qgemv_ok.
    One warp per weight row; the launch plan of a shape is kept."""
    m, K = x2.shape
    isz = x2.itemsize
    key = (x2.dtype, qtype, m, data.shape[0], K, data.strides[0], x2.strides[0], out.strides[0])
    plan = _QGEMV_LAUNCH.get(key)
    if plan is None:
        N = data.shape[0]
        M = 1 if m == 1 else 2 if m <= 2 else 4 if m <= 4 else 8
        fn = _fn(f"qgemv<{type_name(x2.dtype)},{QFORMATS[qtype]},{M}>")
        i32, i64 = cupy.int32, cupy.int64
        plan = _QGEMV_LAUNCH[key] = (fn, (-(-N // 8),), (i64(data.strides[0]), i64(x2.strides[0] // isz),
                                                        i64(out.strides[0] // isz), i32(N), i32(K), i32(m)))
    fn, grid, sc = plan
    fn(grid, (256,), (data, sc[0], x2, sc[1], _opt(bias), out, sc[2], sc[3], sc[4], sc[5]))


def qdequant(data, qtype: str, K: int, out, idx=None):
    """out (r, K) = rows idx (int64, on the device; None: all rows in order) of W dequantised into out's dtype
    (float32: bit-identical to gguf-py's dequantiser; 16-bit: that value rounded once). Check qdata_ok."""
    rows = out.shape[0]
    if rows == 0:
        return
    _fn(f"qdequant_rows<{type_name(out.dtype)},{QFORMATS[qtype]}>")((rows,), (256,), (
        data, cupy.int64(data.strides[0]), _opt(idx), out, cupy.int32(K)))


def qgemv_fused_ok(x2, data, qtype: str, others=()) -> bool:
    """Whether qgemv_fused takes these operands: qgemv's conditions, the other weights (GLU's up, the group's
    segments) alike in format and aligned, and the x rows staged in shared memory."""
    if not qgemv_ok(x2, data, qtype) or any(not qdata_ok(o, qtype) or o.strides[0] != data.strides[0] for o in others):
        return False
    return x2.shape[0] * x2.shape[1] * x2.itemsize <= smem_limit() - 8 * 1024


_QFUSED_LAUNCH: dict = {}


def qgemv_fused(x2, data, qtype: str, out, bias=None, W2=None, bias2=None, act=None, norm=None, residual=None,
                segments=None):
    """gemv's contract (norm prologue, GLU over data and W2, segments, bias, residual) over quantized weights:
    out (m, N) = [rms_norm](x2) @ W.T ... with W the blocks `data` (N, row_bytes). Check qgemv_fused_ok."""
    m, K = x2.shape
    nw, eps, style = norm or (None, 0.0, None)
    segs = tuple(w.shape[0] for w, _ in segments) if segments else ()
    isz = x2.itemsize
    res_row = residual.strides[0] // isz if residual is not None else 0
    key = (x2.dtype, qtype, m, data.shape[0], K, data.strides[0], W2 is not None, segs, act, style, eps,
           x2.strides[0], out.strides[0], res_row)
    plan = _QFUSED_LAUNCH.get(key)
    if plan is None:
        N = data.shape[0] + sum(segs)
        M = 1 if m == 1 else 2 if m <= 2 else 4 if m <= 4 else 8
        fn = _fn(f"qgemv_fused<{type_name(x2.dtype)},{QFORMATS[qtype]},{M}>")
        smem = m * K * isz
        _allow_smem(fn, smem)
        i32, i64 = cupy.int32, cupy.int64
        scalars = (i64(data.strides[0]), i64(x2.strides[0] // isz), cupy.float32(eps), i32(NORM_STYLES[style]),
                   i64(res_row), i64(out.strides[0] // isz), i32(N), i32(K), i32(m), i32(ACTS.get(act, 0)),
                   i32(data.shape[0]), i32(segs[0] if segs else 0))
        plan = _QFUSED_LAUNCH[key] = (fn, (-(-N // 8),), smem, scalars)
    fn, grid, smem, sc = plan
    wb, bb = segments[0] if segments else (None, None)
    wc, bc = segments[1] if segments and len(segments) > 1 else (None, None)
    o = _opt
    fn(grid, (256,), (data, o(W2), sc[0], x2, sc[1], o(nw), sc[2], sc[3], o(bias), o(bias2), o(residual), sc[4], out,
                      sc[5], sc[6], sc[7], sc[8], sc[9], o(wb), o(wc), o(bb), o(bc), sc[10], sc[11]), shared_mem=smem)


def group_norm_ok(x, weight, bias, groups: int) -> bool:
    return (x.ndim >= 2 and x.flags.c_contiguous and x.size > 0 and _kernel_dtype(x.dtype)
            and all(a is None or (a.flags.c_contiguous and a.dtype == x.dtype and a.size == x.shape[1])
                    for a in (weight, bias)))


def group_norm_act(x, weight, bias, groups: int, eps: float, act, out):
    """out = act(group_norm(x)) for contiguous x (N, C, *S) (check group_norm_ok); act None, silu,
    gelu_tanh or gelu."""
    n, c = x.shape[:2]
    hw = x.size // (n * c)
    t, a = type_name(x.dtype), cupy.int32(ACTS.get(act, 0) if act else 0)
    length = c // groups * hw
    chunks = min(GN_MAX_CHUNKS, -(-length // GN_CHUNK)) if n * groups < GN_SPLIT_BELOW else 1
    if chunks == 1:
        _fn(f"group_norm_act<{t}>")((n * groups,), (256,), (x, _opt(weight), _opt(bias), out, cupy.int32(c),
                                                            cupy.int32(groups), cupy.int64(hw), cupy.float32(eps), a))
        return
    chunk = -(-length // chunks)
    st = cupy.empty((n * groups * chunks * 3,), cupy.float32)  # pooled: a capture keeps the block
    grid, dims = (n * groups * chunks,), (cupy.int32(c), cupy.int32(groups), cupy.int64(hw), cupy.int32(chunks),
                                          cupy.int64(chunk))
    _fn(f"group_norm_stats<{t}>")(grid, (256,), (x, st) + dims)
    _fn(f"group_norm_apply<{t}>")(grid, (256,), (x, _opt(weight), _opt(bias), out, st) + dims + (cupy.float32(eps), a))


# group_norm_act splits a group into chunks of about GN_CHUNK elements (at most GN_MAX_CHUNKS) when the
# (sample, group) blocks are fewer than GN_SPLIT_BELOW (a VAE's 32 groups of 1M elements at 512 x 512)
GN_CHUNK, GN_MAX_CHUNKS, GN_SPLIT_BELOW = 16384, 64, 264


CONV_TILE = (64, 64)  # (output channels, positions) per block of conv2d_igemm (CV_BM, CV_BN in conv.cu)


@functools.lru_cache(maxsize=None)
def conv_compiles() -> bool:
    """Whether conv2d_igemm compiles here (it needs <mma.h> and CUDA's crt/ headers beside it)."""
    try:
        _fn("conv2d_igemm<__half>")
        return True
    except cupy.cuda.compiler.CompileException:
        return False


def conv2d_ok(x, w, groups: int) -> bool:
    """conv2d takes 16-bit NCHW x and OIHW w of one dtype, contiguous, groups 1 (and the kernel compiles)."""
    return (groups == 1 and x.ndim == 4 and w.ndim == 4 and x.dtype == w.dtype and x.dtype.itemsize == 2
            and _kernel_dtype(x.dtype) and x.flags.c_contiguous and w.flags.c_contiguous and x.size > 0
            and x.shape[1] == w.shape[1] and x.size < 2 ** 31 and w.size < 2 ** 31 and conv_compiles())


def conv2d(x, w, bias, stride, padding, dilation, out, act=None):
    """out (N, O, OH, OW) = act(conv2d(x, w) + bias) (check conv2d_ok); padding ((top, bottom), (left, right))
    with top == bottom handled by the kernel's offsets (the output size comes from out)."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow = out.shape[2:]
    grid = (-(-(n * oh * ow) // CONV_TILE[1]), -(-o // CONV_TILE[0]))
    i32 = cupy.int32
    _fn(f"conv2d_igemm<{type_name(x.dtype)}>")(grid, (128,), (
        x, w, _opt(bias), out, i32(n), i32(c), i32(h), i32(wd), i32(o), i32(kh), i32(kw), i32(oh), i32(ow),
        i32(stride[0]), i32(stride[1]), i32(padding[0][0]), i32(padding[1][0]), i32(dilation[0]), i32(dilation[1]),
        i32(ACTS.get(act, 0) if act else 0)))
