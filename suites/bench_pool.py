"""Allocation: the engine's StoragePool against torch's allocators and raw numpy/cupy allocation.

Sizes run from small tensors (256 B, a few KiB: norms, biases, decode-step temporaries) to large
buffers (MiBs: activations, KV caches). Every case is warmed up first (one burst allocated and
freed), so caching allocators run from their steady state, as they would inside a model.

- ``time_alloc_free``: one buffer allocated and dropped at once.
- ``time_alloc_burst``: 32 buffers alive together, then all dropped (a layer's temporaries).
- ``time_first_touch``: allocate and write every byte (synchronised on a GPU): fresh pages fault
  in, pooled ones were faulted in before.
- ``track_reserved_bytes``: what the allocator still holds after a burst was freed (the price of
  caching); NaN where the allocator reports nothing (torch and numpy on the cpu).
"""
import math

from suites.common import ALL_IMPLS, DEVICES, MIB, get_impl, prepared, sizes

NBYTES = sizes([256, 4096, 65536, 4 * MIB, 64 * MIB], [256, 4096, MIB])
BURST = 32


def _prepare(impl, device, nbytes):
    im = get_impl(impl, device, "float32")  # bytes have no dtype; the adapter wants one
    bufs = [im.alloc(nbytes) for _ in range(BURST)]  # warm-up: the pool now holds these blocks
    del bufs
    touch = im.build(lambda: im.fill_zero(im.alloc(nbytes)))
    touch()
    return im, touch


class Alloc:
    params = (ALL_IMPLS, DEVICES, NBYTES)
    param_names = ["impl", "device", "nbytes"]

    def setup(self, impl, device, nbytes):
        self.impl, self.touch = prepared(("alloc", impl, device, nbytes), lambda: _prepare(impl, device, nbytes))
        self.alloc = self.impl.alloc

    def time_alloc_free(self, impl, device, nbytes):
        self.alloc(nbytes)

    def time_alloc_burst(self, impl, device, nbytes):
        alloc = self.alloc
        bufs = [alloc(nbytes) for _ in range(BURST)]
        del bufs

    def time_first_touch(self, impl, device, nbytes):
        self.touch()

    def track_reserved_bytes(self, impl, device, nbytes):
        bufs = [self.alloc(nbytes) for _ in range(BURST)]
        del bufs
        self.impl.synchronize()
        held = self.impl.memory_stats().get("reserved_bytes")
        return math.nan if held is None else float(held)

    track_reserved_bytes.unit = "bytes"
