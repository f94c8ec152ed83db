"""The quantized GEMV launchers of the cupy backend: qgemv and qgemv_fused (their contracts: cupy_kernels.py)
through quant_direct.cu's qgemv_direct for Q4_K rows of whole 16-byte chunks (either dot route) and Q8_0 rows of
whole 256-weight units (int8 route), else quant_span.cu's qgemv_span for Q8_0, Q4_K and Q6_K, else quant.cu's
one-warp-per-row kernels.

qgemv_direct loads the weight bytes straight into registers, as the fp16 gemv does, with x widened to fp32 in
shared memory once per block; its grid is at most what the GPU holds at once (direct_launch; DIRECT["blocks"] to
fix it), each warp walking its row pairs.

qgemv_span streams each weight row (ggml's bytes as they lie, no repacked copy) in coalesced 16-byte chunks
through shared memory and decodes 8 consecutive weights per lane against x staged once per block (numerics:
fp32 sums of a * (q . x) - c * sum(x) per 8 weights, within fp32 rounding of the dequantise-then-matmul
composition; quant_span.cuh) on the float route; QUANT_DOT["route"] = "int8" (the default; env
TAPER_QUANT_DOT=int8|float) takes its D = 1 route instead: x (after the norm, rounded into T) quantised into int8
blocks of 32 with an fp32 scale, __dp4a
integer sums per 8 weights, one fp32 FMA each (numerics: numpy_quant.qdot_int8, exactly but for fp32 sum
order; within the quantisation error of x of the composition, numpy_quant.int8_bound). It needs the weight
pointers 16-byte aligned and the staged x rows (int8 route: and their int8 blocks) to fit in shared memory
beside its row buffers. Plain and fused launches of one format take the same kernel, so a
captured step (qgemv_fused) and the eager one (qgemv) sum in the same order.
"""
from __future__ import annotations

import os

import cupy

from . import cupy_kernels as K
from .cupy_launch import launch, sm90

SPAN_FORMATS = {"q8_0": 5, "q4_k": 5, "q6_k": 4}  # the kernel's L::CPL: 8 warps x 2 rows x CPL x 512 bytes of buffers
_SPAN_LAUNCH: dict = {}
# the dot route of the quantized GEMVs: "int8" (x quantised per 32, __dp4a, as llama.cpp's mmvq; the default since
# session 22: its CUDA tests have passed on the H200 since session 12, and it is the route the decode benchmarks
# measure, 1.4-1.5x the float route's tokens/s on a 7B) or "float" (decode to fp32, FMA with x as T: the
# dequantise-then-matmul composition within fp32 rounding, for comparisons at fp32 tolerance)
QUANT_DOT = {"route": os.environ.get("TAPER_QUANT_DOT", "int8")}
if QUANT_DOT["route"] not in ("int8", "float"):
    raise ValueError(f"TAPER_QUANT_DOT={QUANT_DOT['route']!r}: expected int8 or float")


# qgemv_direct (quant_direct.cu): TAPER_QUANT_KERNEL=span keeps every launch on qgemv_span; "blocks" caps its grid;
# its U (units a lane has in flight: of 32 weights on the float route, 64 on the int8 one), B (blocks an SM: its
# launch bounds and the grid), P (1: pipelined loads), L (the weight loads' path, quant_direct.cu's ld_w: 0
# no-allocate, 1 through L1) and X (the int8 route's one 16-bit x row staged and quantised in registers,
# stage_quantise_x, where K <= 2048 X; 0: staged in shared memory, then quantised); None takes the format's or the
# route's own, the fastest measured on an H200 (measurements/h200/NOTES.md, sessions 9, 11 and 14: X = 6 took the
# captured decode's Q4_K from 550.8 to 602.7 tok/s in one run, and every int8 launch of a 7B 1-9% faster)
# M = 1 merges an SM's B blocks into one of 8 B warps where x is quantised in registers (XJ > 0), so x is normed
# and quantised once an SM rather than B times: every block on an SM does that work at once, after pdl_wait, while
# its weights wait in registers (session 15, same run: Q4_K 600.6 -> 621.4 tok/s, Q8_0 354.7 -> 377.7)
DIRECT_SETTINGS = {"u": None, "b": None, "p": None, "l": None, "x": None, "m": None}  # the defaults
_DIRECT_ROUTE = {"float": {"u": 4, "b": 2, "p": 0, "l": 0, "x": 0, "m": 0},
                 "int8": {"u": 1, "b": 3, "p": 0, "l": 0, "x": 6, "m": 1}}
_DIRECT_OWN = {"q8_0": {"u": 1, "b": 2, "p": 0, "l": 1, "x": 6, "m": 1}}  # a format's own (QD_q8_0h: 9 chunks of one row a lane)
# (format, route) -> settings for a launch whose row pairs fit one wave of `b` blocks an SM (a 7B's o_proj and
# down_proj: 2048 pairs, 256 blocks): two batches a warp in flight from the start, both loading before pdl_wait,
# so while the kernel before ends and x is staged; where U, B and P are all left to the defaults. On an H200
# (session 13, call 6, same run): the captured decode Q4_K 538.6 -> 550.4 tok/s, Q8_0 341.2 -> 344.8, though
# each shape alone in a graph of its own launches is 0.3-0.5 us slower (o_proj 6.19 -> 6.47 us). In merged blocks
# (M) every launch takes them (session 15, call 5, same run: Q4_K 620.4 -> 626.9 tok/s, Q8_0 376.9 -> 379.9)
_DIRECT_ONE_WAVE = {("q4_k", "int8"): {"b": 2, "p": 1}, ("q8_0", "int8"): {"b": 2, "p": 1}}
DIRECT = {"enabled": os.environ.get("TAPER_QUANT_KERNEL", "direct") != "span", "blocks": None, **DIRECT_SETTINGS}
DIRECT_FORMATS = {"q4_k": 3, "q8_0": 2}  # the F of quant_direct.cu
_DIRECT_INT8_ONLY = {"q8_0"}  # their float route stays on qgemv_span (measured slower in quant_direct.cu's layout)


# qgemv_ring (quant_ring.cu): qgemv_direct's int8 route for one 16-bit x row (X > 0) with the weights brought into
# shared memory by bulk copies (sm_90), S batches a warp ahead, the first pre before pdl_wait; the same numbers bit
# for bit. "formats": those it takes; "nw": warps a block; "u": units a lane a batch; "per_sm": blocks an SM in the
# grid; "s": slots a warp (None: as many as fit "smem" bytes a block beside x's blocks; None: an SM's shared memory
# shared by per_sm blocks, at least two); "pre": batches a warp issues before pdl_wait, the rest once x's loads
# are out (None: all S). None takes the format's own (_RING_OWN), the fastest measured on an H200: session 17
# (call 5, the captured decode, same run): Q8_0 387.2 -> 419.1 tok/s at two blocks of 8 warps an SM (two slots a
# warp in place of the four that fit: 381.9), Q4_K slower then at every setting tried (645.6 -> 614.1 at U = 2);
# session 20 (calls 2-5): pre = 1 against all S, Q8_0 431.8 -> 454.3 (pre 2: 441.9, 0: 420.8); Q4_K on the ring
# 651.7 -> 670.5 against 657.7 on qgemv_direct in one run (686.5-686.7 in later ones; u = 1: 640.4; one block of
# 16 warps an SM: 659.0, Q8_0 392.7).
RING = {"enabled": os.environ.get("TAPER_QUANT_RING", "1") != "0", "formats": ("q8_0", "q4_k"), "nw": None, "u": None,
        "per_sm": None, "s": None, "smem": None, "pre": None}
_RING_OWN = {"q8_0": {"nw": 8, "u": 1, "per_sm": 2, "pre": 1}, "q4_k": {"nw": 8, "u": 2, "per_sm": 2, "pre": 1}}
_RING_UNIT_BYTES = {"q4_k": 144 // 4, "q8_0": 272 // 2}  # a unit's bytes of a row (quant_direct.cu's TS / UPB)


def _ring(qtype: str, key: str) -> int:
    return RING[key] if RING[key] is not None else _RING_OWN[qtype][key]


def _ring_pre(qtype: str, s: int) -> int:
    """Batches a warp issues before pdl_wait (at most S): RING["pre"], else the format's own, else all S."""
    pre = _ring(qtype, "pre")
    return s if pre is None else max(0, min(s, pre))


def _ring_at(qtype: str, k: int) -> int:
    """QRing::ring_at: x's int8 blocks (quant_direct.cu's xbytes), their scales and sums, to 128 bytes."""
    xb = k // 32 * 34 if qtype == "q8_0" else k // 64 * 80
    return -(-(xb + k // 32 * 8) // 128) * 128


def ring_plan(x2, qtype: str, datas):
    """(S, dynamic shared memory) of qgemv_ring for these (already direct_ok) operands, or None where it does not
    apply: a format in RING["formats"], the int8 route, one 16-bit x row quantised in registers (K <= 12288),
    sm_90, two slots a warp at least."""
    m, k = x2.shape
    if (not RING["enabled"] or qtype not in RING["formats"] or qtype not in _RING_OWN or dot_route() != "int8"
            or m != 1 or x2.itemsize != 2 or not _xj(m, k, 2, 6) or not sm90()):
        return None
    nw, u, at = _ring(qtype, "nw"), _ring(qtype, "u"), _ring_at(qtype, k)
    slot = 32 * u * _RING_UNIT_BYTES[qtype] * (1 if qtype == "q8_0" else 2)  # QRing::SLOT (Q8_0: a split pair)
    sm_smem, block_smem = _smem_limits()
    budget = RING["smem"] or sm_smem // max(2, _ring(qtype, "per_sm")) - 1024 - 128  # less the static slots
    s = RING["s"] or (budget - at) // (nw * (slot + 8))
    smem = at + nw * s * (slot + 8)
    return (s, smem) if s >= 2 and smem <= block_smem - 128 else None


def _smem_limits() -> tuple:
    """The device's shared memory an SM (each block's 1 KiB reserve included: 228 KiB on sm_90) and a block's
    opt-in maximum (227 KiB there)."""
    if "smem" not in DIRECT:
        DIRECT["smem"] = (cupy.cuda.Device().attributes["MaxSharedMemoryPerMultiprocessor"], K.smem_limit())
    return DIRECT["smem"]


def dot_route() -> str:
    """Which route qgemv_span takes now ("int8" or "float")."""
    return QUANT_DOT["route"]


def _x_smem(m: int, k: int, itemsize: int) -> int:
    """Dynamic shared memory of qgemv_span: x staged in T, then (int8 route) its int8 blocks and their scales."""
    return m * k * itemsize + (m * k + m * k // 32 * 4 if dot_route() == "int8" else 0)


def span_ok(x2, qtype: str, datas) -> bool:
    """Whether qgemv_span takes these (already qgemv_ok / qgemv_fused_ok) operands."""
    cpl = SPAN_FORMATS.get(qtype)
    if cpl is None or any(d.data.ptr % 16 for d in datas):
        return False
    return _x_smem(x2.shape[0], x2.shape[1], x2.itemsize) <= K.smem_limit() - 16 * 512 * cpl - 1024


def _direct_smem(m: int, k: int, itemsize: int, qtype: str) -> int:
    """Dynamic shared memory of qgemv_direct: x staged in T (to 16 bytes), then its fp32 copy and the sums of its
    runs of 16, or (int8 route) its int8 blocks (Q4_K: 16 bytes of padding after every 64 values, quant_direct.cu's
    XPAD; Q8_0: 34 bytes a block of 32, its own layout), their scales and their sums."""
    if dot_route() == "int8":
        rest = (m * k // 32 * 34 if qtype == "q8_0" else m * k // 64 * 80) + m * k // 32 * 8
    else:
        rest = m * k * 4 + m * k // 16 * 4
    return -(-m * k * itemsize // 16) * 16 + rest


def direct_ok(x2, qtype: str, datas) -> bool:
    """Whether qgemv_direct takes these (already qgemv_ok / qgemv_fused_ok) operands: Q4_K (either dot route) or
    Q8_0 (int8 route, rows of whole 8-block units: K % 256 == 0), 16-byte aligned rows of whole 16-byte chunks,
    x's copies within shared memory."""
    if not DIRECT["enabled"] or qtype not in DIRECT_FORMATS:
        return False
    if qtype in _DIRECT_INT8_ONLY and (dot_route() != "int8" or x2.shape[1] % 256):
        return False
    if datas[0].strides[0] % 16 or any(d.data.ptr % 16 for d in datas):
        return False
    return _direct_smem(x2.shape[0], x2.shape[1], x2.itemsize, qtype) <= K.smem_limit() - 1024


def _sms() -> int:
    if "sms" not in DIRECT:
        DIRECT["sms"] = cupy.cuda.Device().attributes["MultiProcessorCount"]
    return DIRECT["sms"]


def direct_settings(qtype: str = "q4_k", pairs: int | None = None, merged: bool = False) -> tuple:
    """qgemv_direct's (U, B, P, LA, X) for a format on the current dot route and a launch of `pairs` row pairs
    (merged: in merged blocks): DIRECT's where set, else the one-wave settings where they apply, else the format's
    own, else the route's."""
    own = _DIRECT_OWN.get(qtype) or _DIRECT_ROUTE[dot_route()]
    wave = _DIRECT_ONE_WAVE.get((qtype, dot_route()))
    if (wave and pairs is not None and DIRECT["u"] is None and DIRECT["b"] is None and DIRECT["p"] is None
            and (merged or -(-pairs // 8) <= wave["b"] * _sms())):
        own = {**own, **wave}
    la = DIRECT["l"] if DIRECT["l"] is not None else own["l"]
    p = DIRECT["p"] if DIRECT["p"] is not None else own["p"]
    x = DIRECT["x"] if DIRECT["x"] is not None else own["x"]
    return DIRECT["u"] or own["u"], DIRECT["b"] or own["b"], p, la, x


def _own(qtype: str, key: str):
    """DIRECT[key] where set, else the format's or the route's own."""
    own = _DIRECT_OWN.get(qtype) or _DIRECT_ROUTE[dot_route()]
    return DIRECT[key] if DIRECT[key] is not None else own[key]


def direct_launch(qtype: str, pairs: int, m: int, k: int, itemsize: int) -> tuple:
    """qgemv_direct's template arguments after M (D, U, B, P, LA, XJ, NW) and its grid for `pairs` row pairs of m
    rows of x (K = k, `itemsize` bytes a value): B blocks of NW = 8 warps an SM (M = 1 and XJ > 0: one block of 8 B
    warps), at most DIRECT["blocks"] or as many as the GPU holds at once (x staged once a resident block), each warp
    walking pairs."""
    xj = _xj(m, k, itemsize, _own(qtype, "x"))
    merged = bool(xj and _own(qtype, "m"))
    u, b, p, la, _ = direct_settings(qtype, pairs, merged)
    nw, b = (8 * b, 1) if merged else (8, b)
    return (int(dot_route() == "int8"), u, b, p, la, xj, nw), min(-(-pairs // nw), DIRECT["blocks"] or b * _sms())


def _xj(m: int, k: int, itemsize: int, x: int) -> int:
    """quant_direct.cu's XJ: stage_quantise_x's chunks a thread (even), or 0 (x staged in shared memory)."""
    if not x or dot_route() != "int8" or m != 1 or itemsize != 2 or k > 2048 * x:
        return 0
    j = -(-k // 2048)
    return j + (j & 1)


def _direct_fn(dtype, qtype: str, m: int, targs: tuple, smem: int):
    M = 1 if m == 1 else 2 if m <= 2 else 4 if m <= 4 else 8
    fn = K._fn(f"qgemv_direct<{K.type_name(dtype)},{DIRECT_FORMATS[qtype]},{M}," + ",".join(map(str, targs)) + ">")
    if smem > 48 * 1024 and fn.max_dynamic_shared_size_bytes < smem:
        fn.max_dynamic_shared_size_bytes = K.smem_limit() - 1024  # past 48 KiB: the opt-in, once
    return fn


def _span_fn(dtype, qtype: str, m: int, smem: int):
    M = 1 if m == 1 else 2 if m <= 2 else 4 if m <= 4 else 8
    d = ",1" if dot_route() == "int8" else ""
    fn = K._fn(f"qgemv_span<{K.type_name(dtype)},{K.QFORMATS[qtype]},{M}{d}>")
    static = 16 * 512 * SPAN_FORMATS[qtype] + 64  # the row buffers and the norm's reduction slots
    if smem + static > 48 * 1024 and fn.max_dynamic_shared_size_bytes < K.smem_limit() - static:
        fn.max_dynamic_shared_size_bytes = K.smem_limit() - static  # past 48 KiB with them: the opt-in, once
    return fn


def qgemv(x2, data, qtype: str, out, bias=None):
    """out (m, N) = x2 (m, K) @ W.T (+ bias) (cupy_kernels.qgemv's contract; check K.qgemv_ok)."""
    if not direct_ok(x2, qtype, (data,)) and not span_ok(x2, qtype, (data,)):
        return K.qgemv(x2, data, qtype, out, bias=bias)
    return qgemv_fused(x2, data, qtype, out, bias=bias)


def qgemv_fused(x2, data, qtype: str, out, bias=None, W2=None, bias2=None, act=None, norm=None, residual=None,
                segments=None, pdl: bool = False):
    """cupy_kernels.qgemv_fused's contract (check K.qgemv_fused_ok): qgemv_direct or qgemv_span where they apply;
    pdl: as cupy_kernels.gemv's (qgemv_direct only)."""
    datas = (data,) + ((W2,) if W2 is not None else ()) + tuple(w for w, _ in segments or ())
    direct = direct_ok(x2, qtype, datas)
    if not direct and not span_ok(x2, qtype, datas):
        return K.qgemv_fused(x2, data, qtype, out, bias=bias, W2=W2, bias2=bias2, act=act, norm=norm,
                             residual=residual, segments=segments)
    m, Kd = x2.shape
    nw, eps, style = norm or (None, 0.0, None)
    segs = tuple(w.shape[0] for w, _ in segments) if segments else ()
    isz = x2.itemsize
    res_row = residual.strides[0] // isz if residual is not None else 0
    N = data.shape[0] + sum(segs)
    pairs = N if W2 is not None else -(-N // 2)  # a warp's two rows: GLU's gate and up, else two outputs
    dl = direct and direct_launch(qtype, pairs, m, Kd, isz)
    key = (direct, dl, tuple(RING.values()), dot_route(), x2.dtype, qtype, m,
           data.shape[0], Kd, data.strides[0], W2 is not None, segs, act, style, eps, x2.strides[0], out.strides[0],
           res_row)
    plan = _SPAN_LAUNCH.get(key)
    if plan is None:
        ring = direct and ring_plan(x2, qtype, datas)
        if ring:
            (_, smem), warps = ring, _ring(qtype, "nw")
            fn = K._fn(f"qgemv_ring<{K.type_name(x2.dtype)},{DIRECT_FORMATS[qtype]},{warps},{_xj(m, Kd, 2, 6)},"
                       f"{_ring(qtype, 'u')},{K.NORM_STYLES[style]}>")  # the norm style compiled in
            if smem > 48 * 1024 and fn.max_dynamic_shared_size_bytes < smem:
                fn.max_dynamic_shared_size_bytes = _smem_limits()[1] - 128
            grid, block = (min(-(-pairs // warps), _ring(qtype, "per_sm") * _sms()),), (32 * warps,)
        elif direct:
            smem = _direct_smem(m, Kd, isz, qtype)
            (targs, nb) = dl
            fn, grid, block = _direct_fn(x2.dtype, qtype, m, targs, smem), (nb,), (32 * targs[-1],)
        else:
            smem = _x_smem(m, Kd, isz)
            fn, grid, block = _span_fn(x2.dtype, qtype, m, smem), (-(-pairs // 8),), (256,)
        i32, i64 = cupy.int32, cupy.int64
        scalars = (i64(data.strides[0]), i64(x2.strides[0] // isz), cupy.float32(eps), i32(K.NORM_STYLES[style]),
                   i64(res_row), i64(out.strides[0] // isz), i32(N), i32(Kd), i32(m), i32(K.ACTS.get(act, 0)),
                   i32(data.shape[0]), i32(segs[0] if segs else 0)) + ((i32(ring[0]), i32(_ring_pre(qtype, ring[0])))
                                                                        if ring else ())
        plan = _SPAN_LAUNCH[key] = (fn, grid, block, smem, scalars)
    fn, grid, block, smem, sc = plan
    wb, bb = segments[0] if segments else (None, None)
    wc, bc = segments[1] if segments and len(segments) > 1 else (None, None)
    o = K._opt
    args = (data, o(W2), sc[0], x2, sc[1], o(nw), sc[2], sc[3], o(bias), o(bias2), o(residual), sc[4], out, sc[5],
            sc[6], sc[7], sc[8], sc[9], o(wb), o(wc), o(bb), o(bc), *sc[10:])
    launch(fn, grid, block, args, smem, pdl=pdl and direct)  # qgemv_direct's pdl_wait: after its first weight loads
