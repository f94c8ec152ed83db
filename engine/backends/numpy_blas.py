"""c = a @ b + beta * c for float32 matrices through numpy's OpenBLAS itself (cblas_sgemm, found by threadpoolctl
as blas_threads finds openblas_set_num_threads): numpy's matmul has no beta, so summing products (a conv's taps)
costs a temporary and an add pass over the output per product (per-tap GEMMs of YOLOv8s' 3x3 convs: 64 channels
at 80x80 1.88 -> 1.48 ms, 128 at 40x40 1.62 -> 1.40, on the idle 2-core EPYC). Without threadpoolctl or an
OpenBLAS of numpy's own (another BLAS), the same sum through np.matmul and an add."""
from __future__ import annotations

import ctypes
import os

import numpy as np

_SGEMM = None  # (cblas_sgemm, its integer type), False when there is none


def _find():
    global _SGEMM
    _SGEMM = False
    try:
        from threadpoolctl import ThreadpoolController
        libs = ThreadpoolController().select(internal_api="openblas").lib_controllers
    except Exception:  # noqa: BLE001 - no threadpoolctl: numpy's matmul
        return
    # numpy's own OpenBLAS, whose kernels and threads numpy's products use: other packages load theirs too (beside
    # ultralytics, opencv-python's OpenBLAS 0.3.15, 32-bit integers, one thread); a lone other one only when it
    # is the one loaded (a system OpenBLAS numpy links)
    here = os.path.dirname(os.path.realpath(np.__file__))
    own = [c for c in libs if os.path.realpath(c.filepath).startswith((here + os.sep, here + ".libs" + os.sep))]
    for c in own or (libs if len(libs) == 1 else []):
        fn, config = c._get_symbol("cblas_sgemm"), c._get_symbol("openblas_get_config")  # a private helper
        if fn is None or config is None:
            continue
        config.restype = ctypes.c_char_p
        it = ctypes.c_int64 if b"USE64BITINT" in config() else ctypes.c_int  # ILP64 builds (scipy_openblas64_)
        fn.restype = None
        fn.argtypes = [it] * 6 + [ctypes.c_float, ctypes.c_void_p, it, ctypes.c_void_p, it, ctypes.c_float,
                                  ctypes.c_void_p, it]
        _SGEMM = (fn, it)
        return


def sgemm_into(a, b, c, beta: float) -> None:
    """c (M, N) = a (M, K) @ b (K, N) + beta * c, float32 2-d arrays whose rows are contiguous (any row stride:
    views of wider planes go as they are), c writable; beta 0 ignores what c held (BLAS's rule)."""
    if _SGEMM is None:
        _find()
    if not _SGEMM or not all(x.dtype == np.float32 and x.ndim == 2 and (x.strides[1] == 4 or x.shape[1] == 1)
                                and x.strides[0] % 4 == 0 and _ld(x) >= x.shape[1] for x in (a, b, c)):
        if beta == 0:
            np.matmul(a, b, out=c)
        else:
            c += a @ b
        return
    (m, k), n = a.shape, b.shape[1]
    if b.shape[0] != k or c.shape != (m, n) or not c.flags.writeable:
        raise ValueError(f"sgemm_into: {a.shape} @ {b.shape} into {c.shape}")
    fn, _ = _SGEMM
    fn(101, 111, 111, m, n, k, 1.0, a.ctypes.data, _ld(a), b.ctypes.data, _ld(b), beta, c.ctypes.data, _ld(c))


def _ld(x) -> int:  # a row-major matrix's leading dimension: its row stride in elements (a one-row one: its width)
    return x.strides[0] // 4 if x.shape[0] > 1 else max(1, x.shape[1])
