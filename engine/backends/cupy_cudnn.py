"""cuDNN's convolutions for the cupy backend, through ctypes (cupy 14 ships no cuDNN binding).

The library is NVIDIA's `nvidia-cudnn-cu13` wheel (PyPI; torch's CUDA build already pulls it in) or any
libcudnn.so.9 the dynamic loader finds; TAPER_CUDNN_LIB names a file. Without it `available()` is False
and the backend's own convolutions (im2col + cuBLAS, the implicit-GEMM kernel in captures) serve.

One call is cuDNN 9's cudnnConvolutionForward on NCHW tensors (1-d convs as height-1 2-d ones), with
the algorithm from cuDNN's heuristics (cudnnGetConvolutionForwardAlgorithm_v7: no kernel runs, so a
capture can choose too; the choice is cached per problem), the workspace from the engine's pool (a
graph keeps its blocks), float32 accumulation (16-bit data on tensor cores; float32 data without TF32,
as the composition); a bias is written into y first and blended in with beta = 1, so it is added in float32
before the one rounding (as the composition; torch adds it after, rounding twice). Launches on the current
stream: capturable.
"""
from __future__ import annotations

import ctypes
import glob
import os
import sys

import cupy

from engine import dtype as D
from engine.backends import cupy_kernels as K

_FLOAT, _DOUBLE, _HALF, _BF16 = 0, 1, 2, 9  # cudnnDataType_t
_DTYPES = {"float16": (_HALF, _FLOAT, 1), "bfloat16": (_BF16, _FLOAT, 1),  # (data, compute, math type)
           "float32": (_FLOAT, _FLOAT, 3), "float64": (_DOUBLE, _DOUBLE, 3)}  # 1 tensor-op math, 3 FMA only
_NCHW, _CROSS_CORRELATION = 0, 1
ENABLED = os.environ.get("TAPER_CUDNN", "1").strip() not in ("0", "false", "off", "no")
CONFIG = {"enabled": ENABLED}  # False: the backend's own convs serve (an A/B run, the igemm kernel's tests)
WORKSPACE_LIMIT = 1 << 30  # bytes: an algorithm that asks for more is passed over
_SUBLIBS = ("graph", "engines_precompiled", "engines_runtime_compiled", "heuristic", "ops", "cnn")


class _AlgoPerf(ctypes.Structure):  # cudnnConvolutionFwdAlgoPerf_t
    _fields_ = [("algo", ctypes.c_int), ("status", ctypes.c_int), ("time", ctypes.c_float),
                ("memory", ctypes.c_size_t), ("determinism", ctypes.c_int), ("mathType", ctypes.c_int),
                ("reserved", ctypes.c_int * 3)]


def _candidates() -> list:
    named = os.environ.get("TAPER_CUDNN_LIB")
    if named:
        return [named]
    found = []
    for root in sys.path:  # the nvidia-cudnn wheels: site-packages/nvidia/cudnn/lib (or a cuXX folder)
        for pattern in ("nvidia/cudnn/lib/libcudnn.so.9", "nvidia/*/lib/libcudnn.so.9"):
            found += sorted(glob.glob(os.path.join(root or ".", pattern)))
    return found + ["libcudnn.so.9"]


def _load():
    why = []
    for path in _candidates():
        folder = os.path.dirname(path)
        try:
            for sub in _SUBLIBS if folder else ():  # the shim loads these by name: load them from its folder
                p = os.path.join(folder, f"libcudnn_{sub}.so.9")
                if os.path.exists(p):
                    try:
                        ctypes.CDLL(p, mode=ctypes.RTLD_GLOBAL)
                    except OSError:
                        pass  # an engine library that needs what is not here (NVRTC): cuDNN skips its engines
            lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            lib.cudnnGetVersion.restype = ctypes.c_size_t
            if lib.cudnnGetVersion() < 90000:
                why.append(f"{path}: cuDNN {lib.cudnnGetVersion()} (9 or later needed)")
                continue
            lib.cudnnGetErrorString.restype = ctypes.c_char_p
            return lib, ""
        except (OSError, AttributeError) as e:
            why.append(f"{path}: {e}")
    return None, "cuDNN 9 not found (pip install nvidia-cudnn-cu13): " + "; ".join(why)


_LIB, _WHY = (None, "") if not ENABLED else _load()
if not ENABLED:
    _WHY = "disabled (TAPER_CUDNN=0)"
_HANDLES: dict = {}  # device -> cudnnHandle_t
_PLANS: dict = {}  # problem -> (x desc, w desc, conv desc, y desc, algo, workspace bytes, y shape)


def available() -> bool:
    return _LIB is not None and CONFIG["enabled"]


def why_not() -> str:
    return _WHY


def version() -> int:
    return int(_LIB.cudnnGetVersion()) if _LIB is not None else 0


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"cuDNN {what} failed: {_LIB.cudnnGetErrorString(status).decode()} (status {status})")


def _handle():
    dev = cupy.cuda.runtime.getDevice()
    h = _HANDLES.get(dev)
    if h is None:
        h = ctypes.c_void_p()
        _check(_LIB.cudnnCreate(ctypes.byref(h)), "cudnnCreate")
        _HANDLES[dev] = h
    return h


def _desc(kind: str, setter: str, *args):
    d = ctypes.c_void_p()
    _check(getattr(_LIB, f"cudnnCreate{kind}Descriptor")(ctypes.byref(d)), f"cudnnCreate{kind}Descriptor")
    _check(getattr(_LIB, setter)(d, *(ctypes.c_int(a) for a in args)), setter)
    return d


def takes(x, w, b, stride, padding, groups: int, out_dtype) -> bool:
    """A 1-d or 2-d conv of contiguous, 16-byte aligned NCHW x and OIHW w of one float dtype (the output's),
    symmetric padding, a contiguous bias of that dtype or none (a view at an odd offset goes elsewhere)."""
    return (_LIB is not None and CONFIG["enabled"] and x.ndim in (3, 4) and w.ndim == x.ndim and x.dtype == w.dtype
            and x.dtype == out_dtype.np_dtype and x.dtype.name in _DTYPES and x.flags.c_contiguous
            and w.flags.c_contiguous and x.size > 0 and w.size > 0 and x.shape[1] == w.shape[1] * groups
            and x.data.ptr % 16 == 0 and w.data.ptr % 16 == 0
            and all(lo == hi >= 0 for lo, hi in padding) and len(stride) == x.ndim - 2
            and (b is None or (b.dtype == x.dtype and b.flags.c_contiguous and b.size == w.shape[0])))


def _plan(x4, w4, stride, pad, dilation, groups: int):
    key = (x4.shape, w4.shape, x4.dtype.str, stride, pad, dilation, groups)
    plan = _PLANS.get(key)
    if plan is not None:
        return plan
    data, compute, math = _DTYPES[x4.dtype.name]
    xd = _desc("Tensor", "cudnnSetTensor4dDescriptor", _NCHW, data, *x4.shape)
    wd = _desc("Filter", "cudnnSetFilter4dDescriptor", data, _NCHW, *w4.shape)
    cd = _desc("Convolution", "cudnnSetConvolution2dDescriptor", *pad, *stride, *dilation, _CROSS_CORRELATION,
               compute)
    _check(_LIB.cudnnSetConvolutionGroupCount(cd, ctypes.c_int(groups)), "cudnnSetConvolutionGroupCount")
    _check(_LIB.cudnnSetConvolutionMathType(cd, ctypes.c_int(math)), "cudnnSetConvolutionMathType")
    dims = (ctypes.c_int * 4)()
    _check(_LIB.cudnnGetConvolution2dForwardOutputDim(cd, xd, wd, *(ctypes.byref(dims, 4 * i) for i in range(4))),
           "cudnnGetConvolution2dForwardOutputDim")
    out_shape = tuple(dims)
    yd = _desc("Tensor", "cudnnSetTensor4dDescriptor", _NCHW, data, *out_shape)
    perf, n = (_AlgoPerf * 8)(), ctypes.c_int()
    _check(_LIB.cudnnGetConvolutionForwardAlgorithm_v7(_handle(), xd, wd, cd, yd, ctypes.c_int(8), ctypes.byref(n),
                                                       perf), "cudnnGetConvolutionForwardAlgorithm_v7")
    usable = [p for p in perf[:n.value] if p.status == 0 and p.memory <= WORKSPACE_LIMIT]
    if not usable:
        raise RuntimeError(f"cuDNN has no forward algorithm for x {x4.shape} w {w4.shape} {x4.dtype} stride "
                           f"{stride} padding {pad} dilation {dilation} groups {groups}")
    algo = usable[0].algo
    ws = ctypes.c_size_t()
    _check(_LIB.cudnnGetConvolutionForwardWorkspaceSize(_handle(), xd, wd, cd, yd, ctypes.c_int(algo),
                                                        ctypes.byref(ws)), "cudnnGetConvolutionForwardWorkspaceSize")
    plan = _PLANS[key] = (xd, wd, cd, yd, algo, ws.value, out_shape)
    return plan


def conv(backend, x, w, b, stride, padding, dilation, groups: int, out_dtype):
    """out = conv(x, w) + b through cuDNN (check takes() first), in the backend's pooled memory."""
    one_d = x.ndim == 3
    x4 = x.reshape(x.shape[:2] + (1, x.shape[2])) if one_d else x
    w4 = w.reshape(w.shape[:2] + (1, w.shape[2])) if one_d else w
    st = (1,) + tuple(stride) if one_d else tuple(stride)
    pad = (0, padding[0][0]) if one_d else (padding[0][0], padding[1][0])
    dil = (1,) + tuple(dilation) if one_d else tuple(dilation)
    xd, wd, cd, yd, algo, ws_bytes, out_shape = _plan(x4, w4, st, pad, dil, groups)
    out = backend.empty(out_shape if not one_d else out_shape[:2] + out_shape[3:], out_dtype)
    ws = backend.empty((ws_bytes,), D.uint8) if ws_bytes else None
    if b is not None:  # y = conv + 1 * y: cuDNN adds the bias in float32 before its one rounding
        if not K.bias_fill(out, b, 1):
            out[...] = b.reshape((1, -1) + (1,) * (out.ndim - 2))
    h = _handle()
    _check(_LIB.cudnnSetStream(h, ctypes.c_void_p(cupy.cuda.get_current_stream().ptr)), "cudnnSetStream")
    scale = ctypes.c_double if x.dtype.name == "float64" else ctypes.c_float
    one, beta = scale(1.0), scale(1.0 if b is not None else 0.0)
    _check(_LIB.cudnnConvolutionForward(h, ctypes.byref(one), xd, ctypes.c_void_p(x4.data.ptr), wd,
                                        ctypes.c_void_p(w4.data.ptr), cd, ctypes.c_int(algo),
                                        ctypes.c_void_p(ws.data.ptr if ws is not None else 0),
                                        ctypes.c_size_t(ws_bytes), ctypes.byref(beta), yd,
                                        ctypes.c_void_p(out.data.ptr)), "cudnnConvolutionForward")
    return out
