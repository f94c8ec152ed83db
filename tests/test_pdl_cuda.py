"""Programmatic dependent launches (engine/backends/cupy_launch.py) in a captured graph: a chain of GEMVs, each
reading the output of the one before (its x, its residual), captured with the GEMVs as PDLs, gives what the same
chain gives launched one by one the usual way, bit for bit: a kernel that read x or the residual before the kernel
before it had finished would differ. The fp16 gemv (cupy_kernels.gemv) and qgemv_direct (cupy_quant) both take
PDLs; the chain mixes them with a kernel launched the usual way (rms_norm_rows) between."""
from __future__ import annotations

import numpy as np
import pytest

import engine  # noqa: F401  (the engine's pool owns cupy's memory)
from helpers import DEVICE

cuda = pytest.mark.skipif(DEVICE.type != "cuda", reason="PDL: CUDA kernels")


def _chain(steps: list, x0, capture: bool):
    """Run steps (each out = step(x)) from x0; every output is a new array. Captured: one graph, replayed."""
    import cupy
    outs = []
    cupy.cuda.Device().synchronize()  # the weights, quantised on the legacy stream, which this one does not wait for
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        if capture:
            from engine.backends.cupy_launch import pdl_ok
            outs = [cupy.empty_like(x0) for _ in steps]
            stream.begin_capture()
            assert pdl_ok(stream) == (int(cupy.cuda.Device().compute_capability) >= 90)
            x = x0
            for step, out in zip(steps, outs):
                x = step(x, out)
            graph = stream.end_capture()
            for o in outs:
                o.fill(0)
            graph.launch(stream)
        else:
            x = x0
            for step in steps:
                x = step(x, cupy.empty_like(x0))
                outs.append(x)
    stream.synchronize()
    return [o.get() for o in outs]


@cuda
@pytest.mark.parametrize("kind", ["fp16", "q8_0", "q4_k", "mixed"])
def test_pdl_chain_equals_plain_launches(monkeypatch, kind):
    import cupy

    from engine.backends import cupy_kernels as K
    from engine.backends import cupy_quant as Q
    from engine.io.gguf import quantize_matrix
    monkeypatch.setitem(K.QUANT_KERNELS, "enabled", True)
    monkeypatch.setitem(Q.QUANT_DOT, "route", "int8")  # Q8_0's direct kernel is the int8 route's
    n = 4096
    rng = cupy.random.default_rng(0)
    nw = (1 + 0.1 * rng.standard_normal(n, dtype=cupy.float32)).astype(cupy.float16)
    x0 = rng.standard_normal((1, n), dtype=cupy.float32).astype(cupy.float16)
    fmts = {"fp16": ["fp16"], "q8_0": ["q8_0"], "q4_k": ["q4_k"], "mixed": ["fp16", "q8_0", "q4_k"]}[kind]
    steps = []
    for i in range(12):
        fmt = fmts[i % len(fmts)]
        w = rng.standard_normal((n, n), dtype=cupy.float32) * 0.02
        if fmt == "fp16":
            W = w.astype(cupy.float16)
            steps.append(lambda x, out, W=W: K.gemv(x, W, out, norm=(nw, 1e-5, "llama"), residual=x, pdl=True) or out)
        else:
            W = quantize_matrix(w, fmt)
            assert Q.direct_ok(x0, fmt, (W,))
            steps.append(lambda x, out, W=W, f=fmt: Q.qgemv_fused(x, W, f, out, norm=(nw, 1e-5, "llama"),
                                                                  residual=x, pdl=True) or out)
        if i % 4 == 3:  # a kernel launched the usual way between PDLs
            steps.append(lambda x, out: K.rms_norm(x, nw, 1e-5, "llama", out) or out)
    plain = _chain(steps, x0, capture=False)
    graph = _chain(steps, x0, capture=True)
    assert all(np.isfinite(p.astype(np.float32)).all() for p in plain)
    for i, (p, g) in enumerate(zip(plain, graph)):
        np.testing.assert_array_equal(g, p, err_msg=f"step {i}")
