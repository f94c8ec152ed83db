"""ONNX Runtime: the torch model exported with torch.onnx (the dynamo exporter), run by an
InferenceSession on the CPU execution provider, or the CUDA one where onnxruntime has it. Inputs and
outputs stay OrtValues on the session's device, so a timed call is the session's own work. Each
distinct set of input shapes is exported once (fixed shapes: what ONNX Runtime optimises best).

Decoding is not offered: it needs the KV cache as graph inputs and outputs (an export with
past_key_values, as optimum's exporter makes); a decode without a cache would misstate ONNX Runtime.
"""
from __future__ import annotations

import os
import tempfile
import time
import warnings

import numpy as np

from impls.base import Impl, Model, TapsUnsupported, Unavailable, as_ids
from impls.torch_eager import TorchImpl, torch

try:
    import onnxruntime as ort
except ImportError:
    ort = None


class OnnxRuntimeImpl(TorchImpl):
    name = "onnxruntime"

    def __init__(self, device, dtype):
        if ort is None:
            raise Unavailable("onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu)")
        try:
            import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter needs it)
        except ImportError:
            raise Unavailable("onnxruntime: torch.onnx's exporter needs onnxscript (pip install onnxscript)") from None
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise Unavailable(f"onnxruntime {ort.__version__} has no CUDA execution provider here "
                              f"(providers: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu")
        if dtype == "bfloat16":
            raise Unavailable("onnxruntime: bfloat16 kernels are missing for most ops")
        super().__init__(device, dtype)
        self.providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        self._dirs = []
        self.ort_device = "cuda" if device == "cuda" else "cpu"

    @property
    def label(self):
        return f"onnxruntime {ort.__version__} ({self.providers[0]})"

    @property
    def model_class(self):
        """What load() (TorchImpl's: the torch module it builds is what gets exported) returns."""
        return OrtModel

    @property
    def seq2seq_class(self):
        return OrtSeq2SeqModel

    # ---- sessions -------------------------------------------------------------------------------------------
    def session(self, module, example: tuple):
        """An InferenceSession for `module` exported at the shapes of `example` (torch tensors)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(module, example, dynamo=True, verbose=False)
        # a protobuf holds at most 2 GB: larger models go through a file with external weights
        d = tempfile.TemporaryDirectory(prefix="taper-onnx-")
        path = os.path.join(d.name, "model.onnx")
        prog.save(path, external_data=True)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads and threads.isdigit():
            opts.intra_op_num_threads = int(threads)
        sess = ort.InferenceSession(path, opts, providers=self.providers)
        self._dirs.append(d)  # the external weights stay on disk as long as this implementation
        return sess

    # ---- ops: each op exported as a one-node module, per input shapes --------------------------------------
    def _ops(self):
        out = {}
        for name, fn in super()._ops().items():
            out[name] = _OrtOp(self, name, fn)
        return out

    def tensor(self, array):
        a = np.ascontiguousarray(np.asarray(array), dtype=self.np_dtype if np.asarray(array).dtype.kind == "f"
                                 else None)
        return ort.OrtValue.ortvalue_from_numpy(a, self.ort_device, 0)

    def as_input(self, a):
        """A host array as a torch tensor (the export's example input; ops take OrtValues)."""
        a = np.asarray(a)
        if a.dtype.kind == "f":
            return TorchImpl.tensor(self, a)
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.tdevice)

    def ids(self, values):
        return ort.OrtValue.ortvalue_from_numpy(np.asarray(values, np.int64), self.ort_device, 0)

    def to_numpy(self, x):
        return np.asarray(x.numpy(), dtype=np.float32)

    def load_checkpoint(self, path):
        raise Unavailable("onnxruntime loads exported graphs, not checkpoints")

    def memory_stats(self):
        return Impl.memory_stats(self)  # none kept (not torch's allocator: the sessions run the work)

    def synchronize(self):
        pass  # session.run returns when its outputs are ready


class _Wrap(torch.nn.Module if torch is not None else object):
    """fn with its non-tensor arguments (shapes, dims, eps) baked in: the graph takes the tensors."""

    def __init__(self, fn, args, kwargs):
        super().__init__()
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def forward(self, *tensors):
        it = iter(tensors)
        return self.fn(*[next(it) if a is _TENSOR else a for a in self.args], **self.kwargs)


_TENSOR = object()  # marks where a tensor argument goes


class _Sessions(dict):
    """key -> (InferenceSession, its input names), each exported once, on first use; export_s: the
    seconds spent exporting so far."""

    def __init__(self, impl):
        super().__init__()
        self.impl, self.export_s = impl, 0.0

    def get_or_export(self, key, build) -> tuple:
        """The session for key; on first use build() gives (module, example torch tensors) and the
        module is exported at the example's shapes."""
        if key not in self:
            t0 = time.perf_counter()
            sess = self.impl.session(*build())
            self[key] = (sess, [i.name for i in sess.get_inputs()])
            self.export_s += time.perf_counter() - t0
        return self[key]


class _OrtOp:
    """op(*args, **kwargs) -> OrtValue, OrtValue arguments feeding the graph and the others baked in;
    exported on first use per shapes and arguments."""

    def __init__(self, impl, name, fn):
        self.impl, self.name, self.fn, self.sessions = impl, name, fn, _Sessions(impl)

    def __call__(self, *args, **kwargs):
        vals = [a for a in args if isinstance(a, ort.OrtValue)]
        spec = tuple(_TENSOR if isinstance(a, ort.OrtValue) else a for a in args)
        key = (tuple((tuple(v.shape()), v.data_type()) for v in vals),
               tuple("T" if a is _TENSOR else repr(a) for a in spec), tuple(sorted(kwargs.items())))
        sess, names = self.sessions.get_or_export(
            key, lambda: (_Wrap(self.fn, spec, kwargs), tuple(torch.from_numpy(v.numpy()) for v in vals)))
        return sess.run_with_ort_values(None, dict(zip(names, vals)))[0]


class OrtModel(Model):
    def __init__(self, impl, source, module, config, weight_bytes, inputs=None):
        super().__init__(impl, source, config, weight_bytes)
        self.module, self.example_inputs, self.sessions = module, inputs, _Sessions(impl)

    @property
    def export_s(self) -> float:
        """Seconds spent exporting this model's graphs (kept apart from the timed runs)."""
        return self.sessions.export_s

    def _run(self, key, wrapper, host_inputs):
        sess, names = self.sessions.get_or_export(
            key, lambda: (wrapper, tuple(self.impl.as_input(a) for a in host_inputs)))
        feeds = {n: _feed(self.impl, a) for n, a in zip(names, host_inputs)}
        return [np.asarray(o) for o in sess.run(None, feeds)]

    def forward(self, *arrays, method=None):
        arrays = [np.asarray(a) for a in arrays]
        key = ("forward", method) + tuple((a.shape, a.dtype.str) for a in arrays)
        wrapper = self.module if method is None else _Wrap(getattr(self.module, method), (_TENSOR,) * len(arrays), {})
        return [o.astype(np.float32) if o.dtype.kind == "f" else o for o in self._run(key, wrapper, arrays)]

    def device_inputs(self, *arrays):
        return [np.asarray(a) for a in arrays]  # session.run feeds host arrays (zero-copy on the cpu)

    def run(self, inputs, method=None):
        return self.forward(*inputs, method=method)

    def logits(self, ids):
        ids = as_ids(ids)
        key = ("logits", ids.shape)
        return self._run(key, _Logits(self.module), [ids])[0].astype(np.float32)

    def prefill(self, ids):
        """The prompt's logits through the exported graph (it has no cache): the same work as a prefill."""
        return self.logits(ids)[:, -1].argmax(-1)

    def start(self, ids, max_new_tokens: int):
        raise Unavailable("onnxruntime: no decode loop (the KV cache must be exported as graph inputs and "
                          "outputs, as optimum does; a decode without a cache would misstate ONNX Runtime)")

    def tap(self, names, callback):
        raise TapsUnsupported("onnxruntime runs the exported graph as one program: outputs only")


class OrtSeq2SeqModel(OrtModel):
    """Whisper: the encoder exported and run by ONNX Runtime (per input shape); no decode loop (as OrtModel)."""

    def encode(self, features):
        f = np.asarray(features)
        self.encoder_out = self._run(("encode", f.shape), _Encoder(self.module), [f])[0]
        return self.encoder_out

    def logits(self, ids):
        raise Unavailable("onnxruntime: Whisper's decoder is not exported (the encoder is)")

    def prefill(self, ids):
        raise Unavailable("onnxruntime: Whisper's decoder is not exported (the encoder is)")


class _Encoder(torch.nn.Module if torch is not None else object):
    def __init__(self, whisper):
        super().__init__()
        self.encoder = whisper.model.encoder

    def forward(self, features):
        return self.encoder(features).last_hidden_state


class _Logits(torch.nn.Module if torch is not None else object):
    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, ids):
        return self.lm(ids, use_cache=False).logits


def _feed(impl, a):
    a = np.asarray(a)
    if a.dtype.kind == "f":
        a = a.astype(impl.np_dtype)
    return np.ascontiguousarray(a)
