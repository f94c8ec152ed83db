"""Encoders through impls/: the engine beside torch eager (transformers BertModel / CLIPTextModel),
torch.compile and ONNX Runtime, the same preset shape (engine.models' presets) with random weights.

- ``BertBatch.time_forward``: a batch of sentences (token ids + padding mask, SEQ tokens, the last
  quarter of every other row padded) through the encoder; what a sentence-embedding service runs.
  all-MiniLM-L6-v2 (cpu and GPU) and bert-base (GPU) shapes; batch 1 and 32.
- ``ClipEncode.time_forward``: Stable Diffusion's prompt encoding, 77 tokens through CLIP's text tower
  (SD 1.5 shape); batch 1 (a prompt) and 2 (prompt + negative prompt, classifier-free guidance).

Inputs are placed on the device once (``Model.device_inputs``) and the outputs stay there
(``Model.run``); a GPU call synchronises before it returns. One untimed call first (compilation,
export, lazy imports) at the timed shape. 16-bit dtypes on the cpu only for tiny models (both sides
upcast per matmul there), as in bench_llm.
"""
import numpy as np

from suites.common import DEVICES, IMPLS, get_impl, prepared, sizes

SEQ = sizes([128], [16])[0]
BERT_MODELS = sizes(["bert:all-minilm-l6-v2", "bert:bert-base-uncased"], ["bert:tiny"])
BERT_BATCHES = sizes([1, 32], [1, 4])
CLIP_MODELS = sizes(["clip_text_model:sd-1.5"], ["clip_text_model:tiny"])
CLIP_BATCHES = [1, 2]
CLIP_SEQ = 77


GPU_ONLY = ("bert:bert-base-uncased",)  # seconds per batch-32 call on a 2-core cpu: measured on a GPU


def _check(device, dtype, model):
    if device == "cpu" and model in GPU_ONLY:
        raise NotImplementedError(f"{model} is measured on a GPU (the cpu runs all-MiniLM-L6-v2's shape)")
    if device == "cpu" and dtype != "float32" and not model.endswith(":tiny"):
        raise NotImplementedError(f"{dtype} on the cpu is only benchmarked for tiny models (16-bit matmuls upcast)")


def token_batch(vocab: int, batch: int, length: int, pad: bool = True):
    """(ids, mask) int64 (batch, length): random ids; with pad, every other row's last quarter padded."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1, vocab, (batch, length))
    mask = np.ones((batch, length), np.int64)
    if pad:
        mask[1::2, length - length // 4:] = 0
        ids[mask == 0] = 0
    return ids, mask


def _load(impl, device, dtype, model):
    """The loaded model (memoised per process)."""
    return prepared(("encoder", impl, device, dtype, model), lambda: get_impl(impl, device, dtype).load(model))


def _bind(m, arrays):
    """A zero-argument timed call of model m over device inputs, called once untimed first."""
    run = m.impl.build(m.run, m.device_inputs(*arrays))
    prepared(("encoder-warm", m.impl.name, m.impl.device, m.impl.dtype, str(m.source),
              tuple(a.shape for a in arrays)), lambda: run() is None)
    return run


class BertBatch:
    params = (IMPLS, DEVICES, ["float32", "float16"], BERT_MODELS, BERT_BATCHES)
    param_names = ["impl", "device", "dtype", "model", "batch"]
    timeout = 900

    def setup(self, impl, device, dtype, model, batch):
        _check(device, dtype, model)
        m = _load(impl, device, dtype, model)
        self.run = _bind(m, token_batch(m.config["vocab_size"], batch, SEQ))

    def time_forward(self, impl, device, dtype, model, batch):
        self.run()


class ClipEncode:
    params = (IMPLS, DEVICES, ["float32", "float16"], CLIP_MODELS, CLIP_BATCHES)
    param_names = ["impl", "device", "dtype", "model", "batch"]
    timeout = 900

    def setup(self, impl, device, dtype, model, batch):
        _check(device, dtype, model)
        m = _load(impl, device, dtype, model)
        ids, _ = token_batch(m.config["vocab_size"], batch, CLIP_SEQ, pad=False)  # SD pads with the end token
        self.run = _bind(m, (ids,))

    def time_forward(self, impl, device, dtype, model, batch):
        self.run()
