"""The quantized GEMV launchers of the cupy backend: qgemv and qgemv_fused (their contracts: cupy_kernels.py)
through quant_span.cu's qgemv_span for Q8_0, Q4_K and Q6_K, else through quant.cu's one-warp-per-row kernels.

qgemv_span streams each weight row (ggml's bytes as they lie, no repacked copy) in coalesced 16-byte chunks
through shared memory and decodes 8 consecutive weights per lane against x staged once per block (numerics:
fp32 sums of a * (q . x) - c * sum(x) per 8 weights, within fp32 rounding of the dequantise-then-matmul
composition; quant_span.cuh). It needs the weight pointers 16-byte aligned and the staged x rows to fit in
shared memory beside its row buffers. Plain and fused launches of one format take the same kernel, so a
captured step (qgemv_fused) and the eager one (qgemv) sum in the same order.
"""
from __future__ import annotations

import cupy

from . import cupy_kernels as K

SPAN_FORMATS = {"q8_0": 5, "q4_k": 5, "q6_k": 4}  # the kernel's L::CPL: 8 warps x 2 rows x CPL x 512 bytes of buffers
_SPAN_LAUNCH: dict = {}


def span_ok(x2, qtype: str, datas) -> bool:
    """Whether qgemv_span takes these (already qgemv_ok / qgemv_fused_ok) operands."""
    cpl = SPAN_FORMATS.get(qtype)
    if cpl is None or any(d.data.ptr % 16 for d in datas):
        return False
    return x2.shape[0] * x2.shape[1] * x2.itemsize <= K.SMEM_LIMIT - 16 * 512 * cpl - 1024


def _span_fn(dtype, qtype: str, m: int, smem: int):
    M = 1 if m == 1 else 2 if m <= 2 else 4 if m <= 4 else 8
    fn = K._fn(f"qgemv_span<{K.type_name(dtype)},{K.QFORMATS[qtype]},{M}>")
    static = 16 * 512 * SPAN_FORMATS[qtype] + 64  # the row buffers and the norm's reduction slots
    if smem + static > 48 * 1024 and fn.max_dynamic_shared_size_bytes < K.SMEM_LIMIT - static:
        fn.max_dynamic_shared_size_bytes = K.SMEM_LIMIT - static  # past 48 KiB with them: the opt-in, once
    return fn


def qgemv(x2, data, qtype: str, out, bias=None):
    """out (m, N) = x2 (m, K) @ W.T (+ bias) (cupy_kernels.qgemv's contract; check K.qgemv_ok)."""
    if not span_ok(x2, qtype, (data,)):
        return K.qgemv(x2, data, qtype, out, bias=bias)
    return qgemv_fused(x2, data, qtype, out, bias=bias)


def qgemv_fused(x2, data, qtype: str, out, bias=None, W2=None, bias2=None, act=None, norm=None, residual=None,
                segments=None):
    """cupy_kernels.qgemv_fused's contract (check K.qgemv_fused_ok): qgemv_span where it applies."""
    datas = (data,) + ((W2,) if W2 is not None else ()) + tuple(w for w, _ in segments or ())
    if not span_ok(x2, qtype, datas):
        return K.qgemv_fused(x2, data, qtype, out, bias=bias, W2=W2, bias2=bias2, act=act, norm=norm,
                             residual=residual, segments=segments)
    m, Kd = x2.shape
    nw, eps, style = norm or (None, 0.0, None)
    segs = tuple(w.shape[0] for w, _ in segments) if segments else ()
    isz = x2.itemsize
    res_row = residual.strides[0] // isz if residual is not None else 0
    key = (x2.dtype, qtype, m, data.shape[0], Kd, data.strides[0], W2 is not None, segs, act, style, eps,
           x2.strides[0], out.strides[0], res_row)
    plan = _SPAN_LAUNCH.get(key)
    if plan is None:
        N = data.shape[0] + sum(segs)
        smem = m * Kd * isz
        fn = _span_fn(x2.dtype, qtype, m, smem)
        i32, i64 = cupy.int32, cupy.int64
        scalars = (i64(data.strides[0]), i64(x2.strides[0] // isz), cupy.float32(eps), i32(K.NORM_STYLES[style]),
                   i64(res_row), i64(out.strides[0] // isz), i32(N), i32(Kd), i32(m), i32(K.ACTS.get(act, 0)),
                   i32(data.shape[0]), i32(segs[0] if segs else 0))
        per_block = 8 if W2 is not None else 16  # a warp: GLU's gate and up rows of one output, else two outputs
        plan = _SPAN_LAUNCH[key] = (fn, (-(-N // per_block),), smem, scalars)
    fn, grid, smem, sc = plan
    wb, bb = segments[0] if segments else (None, None)
    wc, bc = segments[1] if segments and len(segments) > 1 else (None, None)
    o = K._opt
    fn(grid, (256,), (data, o(W2), sc[0], x2, sc[1], o(nw), sc[2], sc[3], o(bias), o(bias2), o(residual), sc[4], out,
                      sc[5], sc[6], sc[7], sc[8], sc[9], o(wb), o(wc), o(bb), o(bc), sc[10], sc[11]), shared_mem=smem)
