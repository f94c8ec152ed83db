"""VarBuilder: hands a model its weights by name while it is being built (candle's VarBuilder).

    vb = VarBuilder.from_pretrained("model_dir", dtype=engine.float16, device="cpu")
    with vb.collect():                       # gather every key problem, raise them together at the end
        model = LlamaForCausalLM(config, vb)  # layers call vb.pp("model.layers.0").get("weight", shape)

Weights come from engine.io's memory-mapped safetensors (one file or an index of shards). On the CPU
without a dtype cast a weight is the mapped bytes themselves (zero-copy, read-only); a cast or another
device makes one copy at load time. With mmap=False every weight is read into memory instead
(copy-on-load), for servers that swap checkpoint files under a running process.

Key accounting is strict: outside `collect()`, `get` raises at once for a missing key or a wrong
shape; inside it, problems are gathered and, on exit, one StateDictError lists the missing keys (with
the shape the model expects), the unused checkpoint keys (with their shapes) and the shape
mismatches (both shapes), each list sorted.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import re
from pathlib import Path

import numpy as np

from engine import device as _dev
from engine import dtype as D
from engine import ops
from engine.io.safetensors import INDEX_NAME, open_checkpoint
from engine.nn.module import StateDictError
from engine.quant import QuantWeight
from engine.tensor import Tensor


class _Source:
    """Where tensors come from: name -> (shape, numpy array getter)."""

    def __init__(self, keys, shape_of, get, description):
        self.keys, self.shape_of, self.get, self.description = keys, shape_of, get, description


class _State:
    """Shared by a root VarBuilder and every prefixed child."""

    def __init__(self, source: _Source, dtype, device):
        self.source, self.dtype, self.device = source, dtype, device
        self.used: set = set()
        self.ignored: list = []  # regex patterns of checkpoint keys a model knowingly does not use
        self.collecting = 0
        self.missing: dict = {}
        self.mismatched: dict = {}


class VarBuilder:
    def __init__(self, state: _State, prefix: str = ""):
        self._s, self.prefix = state, prefix

    # ---- construction -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, dtype=None, device=None, mmap: bool = True,
                        variant: str | None = None) -> "VarBuilder":
        """A model directory (model.safetensors or model.safetensors.index.json, or diffusers'
        diffusion_pytorch_model.* names; variant "fp16" picks *.fp16.* files), a .safetensors file or
        an index. dtype None keeps each tensor's stored dtype. mmap=False reads each weight with
        ordinary reads instead of mapping the files (copy-on-load: a file truncated or rewritten in
        place later cannot kill the process with SIGBUS; see engine.io.safetensors).

        Raises FileNotFoundError when there is no checkpoint at `path`, and SafetensorsError (a
        ValueError naming the file, tensor and byte offset) when a file there is damaged or a shard
        the index names is missing."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        if path.is_dir() and not any(path.glob("*.safetensors.index*.json")) and not any(path.glob("*.safetensors")):
            present = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
            raise FileNotFoundError(f"no model.safetensors or {INDEX_NAME} in {path} (found: {present}); "
                                    "convert .bin/.pt checkpoints first with `taper convert`")
        ckpt = open_checkpoint(path, mmap=mmap, variant=variant)
        keys = list(ckpt.keys())
        src = _Source(keys, lambda k: tuple(ckpt.info(k)[1]), ckpt.get_numpy, str(path))
        src.checkpoint = ckpt
        return cls(_State(src, D.get(dtype) if dtype is not None else None, _dev.parse(device)))

    @classmethod
    def from_gguf(cls, path, dtype=None, device=None) -> "VarBuilder":
        """A GGUF file (engine.io.gguf): tensors under their Hugging Face names; quantized matrices
        come as QuantWeights over the packed bytes (dtype sets the dtype they compute in), float
        ones as mapped arrays. GGUFError (a ValueError naming the file, tensor and byte offset) for a
        damaged file or a tensor type the engine does not compute with."""
        from engine.io.gguf import open_gguf
        g = open_gguf(path)
        w = g.weights
        src = _Source(list(w), lambda k: w[k][1], g.get, str(path))
        return cls(_State(src, D.get(dtype) if dtype is not None else None, _dev.parse(device)))

    @classmethod
    def from_tensors(cls, tensors: dict, dtype=None, device=None) -> "VarBuilder":
        """Over a dict of numpy arrays or engine Tensors (tests, converted state dicts)."""
        def get(k):
            t = tensors[k]
            return t.numpy() if isinstance(t, Tensor) else np.asarray(t)
        src = _Source(list(tensors), lambda k: tuple(tensors[k].shape), get, "a dict of tensors")
        return cls(_State(src, D.get(dtype) if dtype is not None else None, _dev.parse(device)))

    def with_rules(self, rules) -> "VarBuilder":
        """The same weights with state-dict rules (engine.nn.rules: weight-norm folds, drops, renames)
        applied, for a model whose checkpoint differs from its attribute paths in declared ways
        (CHECKPOINT_RULES). Keys no rule touches stay the arrays they were (mapped: no copy)."""
        from engine.nn.rules import apply_rules
        src = self._s.source
        if src.keys is None:
            return self
        res = apply_rules({k: src.get(k) for k in src.keys}, rules)
        vb = VarBuilder.from_tensors(res.state, self._s.dtype, self._s.device)
        if res.steps:
            vb._s.source.description = f"{src.description} (after {len(res.steps)} declared rule steps)"
        else:
            vb._s.source.description = src.description
        vb._s.ignored = list(self._s.ignored)
        return vb

    @classmethod
    def random(cls, seed: int = 0, std: float = 0.02, dtype=D.float32, device=None) -> "VarBuilder":
        """Random weights for any requested name and shape: N(0, std) for matrices, 1 for vectors named
        like norm weights and for BatchNorm running_var, 0 for biases and running_mean. For benchmarks and contract tests from a preset; nothing is
        missing or unused. On the CPU the draws come from one host generator in request order; on other
        devices each weight is drawn on the device (backend.random_normal, seeded by seed and name), so
        a 7B model is ready in seconds rather than minutes."""
        rng = np.random.default_rng(seed)
        dev = _dev.parse(device)
        dt = D.get(dtype)

        def make(name, shape):
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "running_var":  # BatchNorm statistics start as torch's (a random variance may be < 0)
                return np.ones(shape, np.float32)
            if leaf == "running_mean":
                return np.zeros(shape, np.float32)
            if len(shape) == 1 and ("norm" in name or leaf == "weight") and leaf != "bias":
                return np.ones(shape, np.float32)
            if leaf == "bias":
                return np.zeros(shape, np.float32)
            if dev.type != "cpu":
                b = _dev.backend(dev)
                name_seed = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little")
                return Tensor._wrap(b.random_normal(shape, dt, (seed << 32) ^ name_seed, std), b, dt)
            a = rng.standard_normal(shape, dtype=np.float32)
            a *= np.float32(std)
            return a
        src = _Source(None, None, make, f"random weights (seed {seed})")
        return cls(_State(src, dt, dev))

    # ---- naming ---------------------------------------------------------------------------------------
    def pp(self, prefix) -> "VarBuilder":
        """A child builder whose names are prefixed by `prefix.` (push prefix)."""
        prefix = str(prefix)
        return VarBuilder(self._s, f"{self.prefix}.{prefix}" if self.prefix else prefix)

    def _name(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    @property
    def dtype(self):
        return self._s.dtype

    @property
    def device(self):
        return self._s.device

    def keys(self) -> list:
        return list(self._s.source.keys or [])

    @property
    def description(self) -> str:
        """Where the tensors come from (a path, 'random weights (seed 0)', ...)."""
        return self._s.source.description

    def shape_of(self, name: str) -> tuple:
        """The stored shape of `prefix.name` (a checkpoint key), without loading it."""
        return tuple(self._s.source.shape_of(self._name(name)))

    def contains(self, name: str) -> bool:
        ks = self._s.source.keys
        return ks is None or self._name(name) in set(ks)

    # ---- loading --------------------------------------------------------------------------------------
    def get(self, name: str, shape, dtype=None) -> Tensor:
        """The tensor `prefix.name`, checked against `shape`, cast to the builder's dtype (or `dtype`)
        and placed on its device."""
        key, shape = self._name(name), tuple(int(s) for s in shape)
        s = self._s
        src = s.source
        target = D.get(dtype) if dtype is not None else s.dtype
        if src.keys is None:  # random source
            s.used.add(key)
            return _to_tensor(src.get(key, shape), target, s.device)
        if key not in self._keyset():
            if not s.collecting:
                raise StateDictError(f"missing weight {key} {shape} in {src.description}"
                                     + _close(key, src.keys))
            s.missing[key] = shape
            return ops.zeros(*shape, dtype=target or D.float32, device=s.device)
        s.used.add(key)
        have = src.shape_of(key)
        if have != shape:
            msg = f"shape mismatch for {key}: checkpoint {have} vs model {shape}"
            if not s.collecting:
                raise StateDictError(f"{msg} (in {src.description})")
            s.mismatched[key] = (have, shape)
            return ops.zeros(*shape, dtype=target or D.float32, device=s.device)
        return _to_tensor(src.get(key), target, s.device)

    def _keyset(self):
        s = self._s
        if not hasattr(s, "_keyset"):
            s._keyset = set(s.source.keys)
        return s._keyset

    def skip(self, *names: str) -> None:
        """Mark checkpoint keys as knowingly unused (a tied lm_head saved anyway), when present."""
        for n in names:
            self._s.used.add(self._name(n))

    def ignore(self, *patterns: str) -> None:
        """Regexes of checkpoint keys a model never uses (e.g. r"rotary_emb\\.inv_freq$")."""
        self._s.ignored.extend(patterns)

    # ---- accounting -------------------------------------------------------------------------------------
    def unused_keys(self) -> list:
        s = self._s
        if s.source.keys is None:
            return []
        return sorted(k for k in s.source.keys if k not in s.used and not any(re.search(p, k) for p in s.ignored))

    def check(self) -> None:
        """Raise one StateDictError listing missing, unused and mis-shaped keys (sorted, with shapes)."""
        s = self._s
        unused = self.unused_keys()
        if not (s.missing or unused or s.mismatched):
            return
        lines = [f"checkpoint {s.source.description} does not match the model:"]
        lines += [f"  missing    {k} {s.missing[k]}" for k in sorted(s.missing)]
        lines += [f"  unexpected {k} {s.source.shape_of(k)}" for k in unused]
        lines += [f"  shape      {k}: checkpoint {a} vs model {b}" for k, (a, b) in sorted(s.mismatched.items())]
        raise StateDictError("\n".join(lines))

    @contextlib.contextmanager
    def collect(self):
        """Gather key problems while building; on a clean exit, check() raises them all at once."""
        self._s.collecting += 1
        try:
            yield self
        finally:
            self._s.collecting -= 1
        self.check()


def _close(key: str, keys) -> str:
    near = difflib.get_close_matches(key, list(keys), n=3, cutoff=0.6)
    return f"; close matches: {', '.join(near)}" if near else ""


def _to_tensor(arr, dtype, device) -> Tensor:
    """Zero-copy over the mapped array when it stays on the CPU in its own dtype; else one copy. A
    Tensor (drawn on its device) is taken as it is when it already has the dtype."""
    if isinstance(arr, Tensor):
        return arr if dtype is None or arr.dtype is dtype else arr.to(dtype)
    if isinstance(arr, QuantWeight):  # stays packed; dtype is what it computes in
        return arr.to(device=device if arr.device != device else None, dtype=dtype)
    have = D.get(arr.dtype)
    target = dtype or have
    if device.type == "cpu" and target is have and arr.flags.c_contiguous:
        return ops.from_numpy(arr, device=device)
    return ops.tensor(arr, dtype=target, device=device)
