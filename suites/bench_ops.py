"""Op benchmarks at LLM shapes: the engine against torch and the raw arrays under it (numpy, cupy).

Every class takes (impl, device, dtype, <size>); a combination an implementation cannot run is
skipped in setup. ``time_*`` is one call, synchronised on a GPU (dispatch included: what a decode
step pays per op). On cuda, ``track_device_seconds`` is the per-call time of 20 back-to-back
launches between CUDA events, ``track_first_call_seconds`` the first call (kernel compilation,
cuBLAS handles) timed apart from the warm runs, and ``track_peak_device_bytes`` the memory one
call allocates beyond its inputs (engine pool peak beside torch.cuda.max_memory_allocated).
``Dispatch`` measures the eager per-op host cost on small tensors (``track_host_seconds``: back-to-back
launches, the device not waited for); ``python -m bench.dispatch`` prints it as a table with the
engine's ratio to the raw numpy/cupy call.
"""
from suites.common import ALL_IMPLS, DEVICES, DTYPES, QUICK, case, get_impl, prepared, sizes

MATMUL_SHAPES = sizes(["1x4096@4096x4096", "1x2048@2048x5632", "128x2048@2048x2048"],
                      ["1x64@64x64", "1x32@32x88", "8x32@32x32"])
ROWS = sizes(["1x4096", "128x2048"], ["1x64", "8x32"])
SOFTMAX_SHAPES = sizes(["1x32x128x128", "1x32000"], ["1x4x8x8", "1x256"])
CONV = {  # name -> (input shape, weight shape, stride, padding)
    "resnet 1x64x56x56 k3": ((1, 64, 56, 56), (64, 64, 3, 3), 1, 1),
    "stem 1x3x224x224 k7s2": ((1, 3, 224, 224), (64, 3, 7, 7), 2, 3),
} if not QUICK else {
    "resnet 1x8x8x8 k3": ((1, 8, 8, 8), (8, 8, 3, 3), 1, 1),
    "stem 1x3x16x16 k7s2": ((1, 3, 16, 16), (8, 3, 7, 7), 2, 3),
}
ATTENTION = {  # name -> (q shape, k/v shape, causal)
    "prefill L128 h32 d128 causal": ((1, 32, 128, 128), (1, 32, 128, 128), True),
    "decode S512 h32 d128": ((1, 32, 1, 128), (1, 32, 512, 128), False),
    "decode S512 h32/kv4 d64": ((1, 32, 1, 64), (1, 4, 512, 64), False),
} if not QUICK else {
    "prefill L8 h4 d16 causal": ((1, 4, 8, 16), (1, 4, 8, 16), True),
    "decode S16 h4/kv2 d16": ((1, 4, 1, 16), (1, 2, 16, 16), False),
}
ELEMENTWISE_OPS = ["add", "mul", "silu"]
# eager dispatch: small ops whose array work is negligible, so the time is what one call costs the host
DISPATCH = {  # name -> (op, input shapes, extra positional args, keyword args)
    "add 4096": ("add", [(4096,), (4096,)], (), {}),
    "mul 4096": ("mul", [(4096,), (4096,)], (), {}),
    "silu 4096": ("silu", [(4096,)], (), {}),
    "rms_norm 1x4096": ("rms_norm", [(1, 4096), (4096,)], (), {"eps": 1e-6}),
    "linear 1x64@64x64": ("linear", [(1, 64), (64, 64)], (), {}),
    "reshape 1x4096->64x64": ("reshape", [(1, 4096)], ((64, 64),), {}),
}
ELEMENTWISE_N = sizes([16, 65536], [16, 256])

timeout = 300  # module-wide asv timeout (s): raw numpy fp16 GEMM takes seconds per call
repeat = (1, 10, 10.0)  # asv: at least 1, at most 10 samples, stop sampling after 10 s


def _dims(text):
    return tuple(int(d) for d in text.split("x"))


def _matmul(impl, device, dtype, shape):
    a, b = shape.split("@")
    im = get_impl(impl, device, dtype)
    return case(im, im.op("matmul"), im.randn(*_dims(a), seed=1), im.randn(*_dims(b), seed=2, scale=0.02))


def _softmax(impl, device, dtype, shape):
    im = get_impl(impl, device, dtype)
    return case(im, im.op("softmax"), im.randn(*_dims(shape)), dim=-1)


def _norm(kind, impl, device, dtype, shape):
    im = get_impl(impl, device, dtype)
    dims = _dims(shape)
    x, w = im.randn(*dims), im.randn(dims[-1], seed=3)
    if kind == "layer_norm":
        return case(im, im.op("layer_norm"), x, (dims[-1],), w, im.randn(dims[-1], seed=4), eps=1e-5)
    return case(im, im.op("rms_norm"), x, (dims[-1],), w, eps=1e-6)


def _conv(impl, device, dtype, name):
    xs, ws, stride, padding = CONV[name]
    im = get_impl(impl, device, dtype)
    return case(im, im.op("conv2d"), im.randn(*xs), im.randn(*ws, seed=5, scale=0.05),
                im.randn(ws[0], seed=6), stride=stride, padding=padding)


def _attention(impl, device, dtype, name):
    qs, kvs, causal = ATTENTION[name]
    im = get_impl(impl, device, dtype)
    q, k, v = im.randn(*qs, seed=7), im.randn(*kvs, seed=8), im.randn(*kvs, seed=9)
    return case(im, im.op("sdpa"), q, k, v, is_causal=causal, enable_gqa=qs[1] != kvs[1])


def _elementwise(impl, device, dtype, op, n):
    im = get_impl(impl, device, dtype)
    x = im.randn(n, seed=10)
    args = (x,) if op == "silu" else (x, im.randn(n, seed=11))
    return case(im, im.op(op), *args, warmup=10)


def _dispatch(impl, device, dtype, name):
    op, shapes, extra, kw = DISPATCH[name]
    im = get_impl(impl, device, dtype)
    arrays = [im.randn(*sh, seed=20 + i, scale=0.1 if len(sh) == 2 and op == "linear" else 1.0)
              for i, sh in enumerate(shapes)]
    if op == "rms_norm":  # F.rms_norm(x, normalized_shape, weight, eps=)
        arrays.insert(1, (shapes[0][-1],))
    return case(im, im.op(op), *arrays, *extra, warmup=20, **kw)


class Matmul:
    """x @ w at decode (GEMV) and prefill (GEMM) shapes of 7B/1B-class models."""

    params = (ALL_IMPLS, DEVICES, DTYPES, MATMUL_SHAPES)
    param_names = ["impl", "device", "dtype", "shape"]

    def setup(self, impl, device, dtype, shape):
        self.case = prepared(("matmul", impl, device, dtype, shape), lambda: _matmul(impl, device, dtype, shape))

    def time_matmul(self, impl, device, dtype, shape):
        self.case.run()

    def track_device_seconds(self, impl, device, dtype, shape):
        return self.case.device_seconds()

    track_device_seconds.unit = "seconds"

    def track_first_call_seconds(self, impl, device, dtype, shape):
        return self.case.first_call_s

    track_first_call_seconds.unit = "seconds"

    def track_peak_device_bytes(self, impl, device, dtype, shape):
        return self.case.peak_bytes()

    track_peak_device_bytes.unit = "bytes"


class Softmax:
    params = (ALL_IMPLS, DEVICES, DTYPES, SOFTMAX_SHAPES)
    param_names = ["impl", "device", "dtype", "shape"]

    def setup(self, impl, device, dtype, shape):
        self.case = prepared(("softmax", impl, device, dtype, shape), lambda: _softmax(impl, device, dtype, shape))

    def time_softmax(self, impl, device, dtype, shape):
        self.case.run()


class LayerNorm:
    params = (ALL_IMPLS, DEVICES, DTYPES, ROWS)
    param_names = ["impl", "device", "dtype", "shape"]

    def setup(self, impl, device, dtype, shape):
        self.case = prepared(("layer_norm", impl, device, dtype, shape),
                             lambda: _norm("layer_norm", impl, device, dtype, shape))

    def time_layer_norm(self, impl, device, dtype, shape):
        self.case.run()


class RMSNorm:
    params = (ALL_IMPLS, DEVICES, DTYPES, ROWS)
    param_names = ["impl", "device", "dtype", "shape"]

    def setup(self, impl, device, dtype, shape):
        self.case = prepared(("rms_norm", impl, device, dtype, shape),
                             lambda: _norm("rms_norm", impl, device, dtype, shape))

    def time_rms_norm(self, impl, device, dtype, shape):
        self.case.run()


class Conv2d:
    """ResNet-style convolutions (raw numpy/cupy have none: skipped)."""

    params = (ALL_IMPLS, DEVICES, DTYPES, list(CONV))
    param_names = ["impl", "device", "dtype", "case"]

    def setup(self, impl, device, dtype, name):
        self.case = prepared(("conv2d", impl, device, dtype, name), lambda: _conv(impl, device, dtype, name))

    def time_conv2d(self, impl, device, dtype, name):
        self.case.run()


class Attention:
    """scaled_dot_product_attention: causal prefill, and one decode step over a 512-token cache
    (multi-head and grouped-query)."""

    params = (ALL_IMPLS, DEVICES, DTYPES, list(ATTENTION))
    param_names = ["impl", "device", "dtype", "case"]

    def setup(self, impl, device, dtype, name):
        self.case = prepared(("sdpa", impl, device, dtype, name), lambda: _attention(impl, device, dtype, name))

    def time_sdpa(self, impl, device, dtype, name):
        self.case.run()

    def track_device_seconds(self, impl, device, dtype, name):
        return self.case.device_seconds()

    track_device_seconds.unit = "seconds"

    def track_peak_device_bytes(self, impl, device, dtype, name):
        return self.case.peak_bytes()

    track_peak_device_bytes.unit = "bytes"


class Elementwise:
    """Small elementwise ops: at 16 elements the time is the per-op dispatch overhead."""

    params = (ALL_IMPLS, DEVICES, DTYPES, ELEMENTWISE_OPS, ELEMENTWISE_N)
    param_names = ["impl", "device", "dtype", "op", "numel"]

    def setup(self, impl, device, dtype, op, n):
        self.case = prepared(("elementwise", impl, device, dtype, op, n),
                             lambda: _elementwise(impl, device, dtype, op, n))

    def time_op(self, impl, device, dtype, op, n):
        self.case.run()


class Dispatch:
    """Eager per-op cost on small tensors, where the array work is negligible: the engine against the
    raw arrays under it (numpy, cupy) and torch. ``track_host_seconds`` is the host time per call of
    back-to-back launches (the issue's target: an engine op on CUDA at most 1.2x raw cupy's);
    ``time_op`` is one synchronised call."""

    params = (ALL_IMPLS, DEVICES, DTYPES, list(DISPATCH))
    param_names = ["impl", "device", "dtype", "case"]

    def setup(self, impl, device, dtype, name):
        self.case = prepared(("dispatch", impl, device, dtype, name), lambda: _dispatch(impl, device, dtype, name))

    def time_op(self, impl, device, dtype, name):
        self.case.run()

    def track_host_seconds(self, impl, device, dtype, name):
        return self.case.host_seconds()

    track_host_seconds.unit = "seconds"
