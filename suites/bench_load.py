"""Checkpoint loading: the time until every tensor of a checkpoint is ready on the device.

- torch: ``torch.load(model.pt, map_location=device, weights_only=True)``, or
  ``safetensors.torch.load_file(model.safetensors, device=...)`` (skipped without the safetensors
  package).
- engine: ``engine.io`` safetensors, mmapped zero-copy on the cpu, copied to the GPU on cuda. The
  engine never unpickles, so (engine, pt) is skipped: convert first (``taper convert``).

"Ready" is the same for everybody: on the cpu one byte of every 4 KiB page is read after loading
(mmapped weights must really come off the disk; copied ones are already resident), on cuda the
device is synchronised. One untimed load per process comes first. The checkpoint is a Llama-style decoder with random weights, built once by
setup_cache in asv's temporary directory. ``cache`` is ``warm`` (the file was just read) or
``cold`` (evicted from the page cache before every timed load: per file with
posix_fadvise(DONTNEED), else ``echo 3 > /proc/sys/vm/drop_caches`` as root; checked with mincore
and skipped, with the reason, where neither works).
"""
import os

from suites.common import DECODERS, DEVICES, DTYPES, IMPLS, QUICK, decoder_arrays, drop_page_cache, get_impl, prepared
from suites.common import warm_page_cache, write_checkpoint

MODEL = DECODERS["tiny" if QUICK else "small"]
FORMATS = ["pt", "safetensors"]
CACHES = ["warm", "cold"]


class Load:
    params = (IMPLS, DEVICES, DTYPES, [MODEL.name], FORMATS, CACHES)
    param_names = ["impl", "device", "dtype", "model", "format", "cache"]
    number = 1  # one load per sample; setup evicts or warms the file before each
    repeat = (1, 5, 30.0)
    warmup_time = 0.0  # a warm-up load would warm the page cache of a cold case
    timeout = 600

    def setup_cache(self):
        out = {}
        for dtype in DTYPES:
            out[dtype] = write_checkpoint(os.path.abspath(f"ckpt-{dtype}"), decoder_arrays(MODEL, dtype))
        return out

    setup_cache.timeout = 900

    def setup(self, paths, impl, device, dtype, model, fmt, cache):
        im = get_impl(impl, device, dtype)
        if fmt not in paths[dtype]:
            raise NotImplementedError(f"no {fmt} checkpoint was written (torch missing in setup_cache)")
        path = paths[dtype][fmt]
        im.can_load(path)
        self.run = im.build(im.load_checkpoint, path)
        # one untimed load per process first (lazy imports, allocator warm-up); then the cache state
        prepared(("load-warmup", impl, device, dtype, fmt), lambda: self.run() is None)
        if cache == "cold":
            reason = drop_page_cache([path])
            if reason:
                raise NotImplementedError(reason)
        else:
            warm_page_cache([path])

    def time_load(self, paths, impl, device, dtype, model, fmt, cache):
        self.run()
