"""GGUF files (llama.cpp's format): metadata as a Hugging Face config, tensors under their Hugging Face
names, quantized matrices kept in their blocks (engine.quant.QuantWeight), and the tokenizer.

    model = engine.models.from_pretrained("SmolLM2-135M-Instruct.Q4_1.gguf")   # reads it through here
    g = engine.io.gguf.open_gguf(path)      # g.config: the HF config dict; g.tokenizer(): tokenizers.Tokenizer

The file is read by gguf-py's GGUFReader (the reference reader, `pip install gguf`), imported here
only, when a file is opened. What this module adds is the mapping, once, as data:
  - metadata keys (ARCH.*: llama, qwen2, phi3, gemma; a llama with expert_count is a mixtral) -> config.json keys (_LLAMA_CONFIG; transformers'
    GGUF_CONFIG_MAPPING);
  - tensor names (blk.N.attn_q.weight) -> state-dict names (model.layers.N.self_attn.q_proj.weight); a
    mixtral's stacked experts (blk.N.ffn_gate_exps.weight, (E, rows, cols)) -> one name an expert
    (model.layers.N.block_sparse_moe.experts.E.w1.weight), each a slice of the file's bytes;
  - llama.cpp's rotary layout of q and k undone: its converter permutes the rows of each head from
    HF's (two halves) to interleaved pairs; the inverse is a permutation of whole rows, and a row of a
    quantized matrix is whole blocks, so it is applied to the packed bytes exactly
    (transformers' LlamaTensorProcessor._reverse_permute_weights does the same on floats);
  - the tokenizer rebuilt with `tokenizers` (engine/io/gguf_tokenizer.py: byte-level BPE or SentencePiece BPE,
    as transformers' GGUF converter builds them).

A damaged file gives one GGUFError naming the file and what is wrong where: the key or tensor and
the byte offset (a truncated file, a corrupt header, a tensor type no reader knows, or one the engine
does not compute with).
"""
from __future__ import annotations

import functools
import mmap
import os
import re
import struct
from pathlib import Path

import numpy as np

from engine.quant import BY_GGML_TYPE, QTYPES


class GGUFError(ValueError):
    """A GGUF file that cannot be used; the message names the file, and the key or tensor and byte
    offset where it goes wrong."""


# ---- metadata -> config.json (llama.cpp's ARCH.* keys; transformers' GGUF_CONFIG_MAPPING) ----------------
# general.architecture -> whether llama.cpp's converter wrote the q/k rows in its rotary order (LlamaModel
# permutes them; Qwen2Model does not) and the ARCH.* keys that hold the head size ("head_dim": read from the first
# present, all written; llama's rope.dimension_count, as transformers reads it for llama only). The engine
# model_type is the architecture's name.
# phi3: the fused q/k/v and gate/up matrices as the engine (and HF) keep them; its SentencePiece tokenizer's
# word boundary comes from a normalizer (transformers' phi3_tokenizer); rope.dimension_count below the head size
# is Phi's partial rotary; attention.sliding_window its window
# mixtral: llama.cpp writes it as general.architecture "llama" with llama.expert_count / expert_used_count, each
# layer's router as ffn_gate_inp (kept F32) and its experts stacked, ffn_{gate,up,down}_exps (E, rows, cols), q/k
# permuted as llama's ("file": the architecture name in the file and its metadata keys)
# gemma: RMSNorm weights are stored as 1 + w (llama.cpp's GemmaModel adds 1, transformers' Gemma2/3 GGUF loaders
# take it back off: "norm_one"); the head size is attention.key_length (and value_length); a tied head (llama.cpp
# drops lm_head)
ARCHS = {"llama": {"permuted": True, "head_dim": ("rope.dimension_count",)},
         "mixtral": {"permuted": True, "head_dim": ("rope.dimension_count",), "file": "llama"},
         "qwen2": {"permuted": False, "head_dim": ()}, "phi3": {"permuted": False, "head_dim": ()},
         "gemma": {"permuted": False, "head_dim": ("attention.key_length", "attention.value_length"),
                   "norm_one": True}}
_LLAMA_CONFIG = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "rope.freq_base": "rope_theta",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "vocab_size": "vocab_size",
}
_TOKEN_IDS = {"bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id", "padding_token_id": "pad_token_id"}

# ---- tensor names: GGUF -> HF (gguf-py's TensorNameMap for LLAMA, inverted; a test checks them) ------
_LLAMA_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LLAMA_BLOCK = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_BLOCKS = {"llama": _LLAMA_BLOCK, "qwen2": _LLAMA_BLOCK, "gemma": _LLAMA_BLOCK,
           "phi3": {**_LLAMA_BLOCK, "attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"},
           "mixtral": {**{k: v for k, v in _LLAMA_BLOCK.items() if not v.startswith("mlp.")},
                       "ffn_gate_inp": "block_sparse_moe.gate"}}
_EXPERTS = {"ffn_gate_exps": "w1", "ffn_up_exps": "w3", "ffn_down_exps": "w2"}  # stacked: one tensor, E experts
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")
_EXPERT_RE = re.compile(r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$")


def file_arch(model_type: str) -> str:
    """general.architecture (and the metadata keys' prefix) of a model_type in a GGUF file."""
    return ARCHS[model_type].get("file", model_type)


def hf_name(gguf_name: str, arch: str = "llama") -> str:
    """The state-dict name of a GGUF tensor of `arch` (llama's names; qwen2 adds q/k/v biases, phi3 has fused
    attn_qkv and ffn_up); a name outside the table comes back unchanged
    (so the model's strict key check lists it as unexpected, under the name the file uses)."""
    m, block = _BLOCK_RE.match(gguf_name), _BLOCKS[arch]
    if m and m.group(2) in block:
        return f"model.layers.{m.group(1)}.{block[m.group(2)]}.{m.group(3)}"
    base, dot, leaf = gguf_name.rpartition(".")
    if dot and base in _LLAMA_TOP:
        return f"{_LLAMA_TOP[base]}.{leaf}"
    return gguf_name


def unpermute_rows(n_rows: int, n_head: int) -> np.ndarray:
    """Row order that undoes llama.cpp's rotary permutation of a q or k projection with n_head heads:
    hf = gguf[perm]. llama.cpp wrote, per head, rows (d, 2) from HF's (2, d) halves."""
    d = n_rows // n_head // 2
    return np.arange(n_rows).reshape(n_head, d, 2).swapaxes(1, 2).reshape(-1)


# ---- opening ----------------------------------------------------------------------------------------------
def open_gguf(path) -> "GGUFFile":
    """The GGUF file at `path` (read once per path and modification time)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    st = path.stat()
    return _open(str(path.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=2)
def _open(path: str, mtime_ns: int, size: int) -> "GGUFFile":
    return GGUFFile(path)


class GGUFFile:
    def __init__(self, path):
        self.path = Path(path)
        try:
            from gguf import GGUFReader
        except ImportError:
            raise ImportError("reading GGUF files needs the gguf package: pip install gguf "
                              "(or pip install 'taper[gguf]')") from None
        try:
            self.reader = GGUFReader(self.path)
        except Exception as e:  # noqa: BLE001  (the reader raises bare ValueError/IndexError; say where instead)
            raise GGUFError(f"{self.path}: {diagnose(self.path) or f'unreadable GGUF ({type(e).__name__}: {e})'}") from None
        self.metadata = {k: _value(f) for k, f in self.reader.fields.items() if not k.startswith("GGUF.")}
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.architecture = self.metadata.get("general.architecture")
        # the engine's model_type: the architecture's name, or mixtral for a llama with experts (as llama.cpp writes)
        self.model_type = "mixtral" if self.architecture == "llama" and self.metadata.get("llama.expert_count") \
            else self.architecture

    # ---- config ---------------------------------------------------------------------------------------------
    @functools.cached_property
    def config(self) -> dict:
        """The Hugging Face config dict (config.json's keys) the metadata describes."""
        arch, md, mt = self.architecture, self.metadata, self.model_type
        if mt not in ARCHS or file_arch(mt) != arch:
            raise GGUFError(f"{self.path}: architecture {arch!r} (general.architecture) is not one the engine "
                            f"reads from GGUF (known: {', '.join(sorted({file_arch(a) for a in ARCHS}))})")
        cfg = {"model_type": mt}
        for key, name in _LLAMA_CONFIG.items():
            if f"{arch}.{key}" in md:
                cfg[name] = md[f"{arch}.{key}"]
        head = next((md[f"{arch}.{k}"] for k in ARCHS[mt]["head_dim"] if f"{arch}.{k}" in md), None)
        if head is not None:
            cfg["head_dim"] = int(head)
        for key in ("embedding_length", "block_count", "attention.head_count"):
            if f"{arch}.{key}" not in md:
                raise GGUFError(f"{self.path}: metadata key {arch}.{key} is missing")
        if mt == "mixtral":
            if not md.get(f"{arch}.expert_used_count"):
                raise GGUFError(f"{self.path}: metadata key {arch}.expert_used_count is missing (the file has "
                                f"{arch}.expert_count = {md[f'{arch}.expert_count']} experts)")
            cfg["num_local_experts"] = int(md[f"{arch}.expert_count"])
            cfg["num_experts_per_tok"] = int(md[f"{arch}.expert_used_count"])
        if "vocab_size" not in cfg and "tokenizer.ggml.tokens" in md:
            cfg["vocab_size"] = len(md["tokenizer.ggml.tokens"])
        scaling = md.get(f"{arch}.rope.scaling.type")
        if scaling not in (None, "none"):
            if scaling != "linear":
                raise GGUFError(f"{self.path}: {arch}.rope.scaling.type {scaling!r} is not supported (none, linear)")
            cfg["rope_scaling"] = {"rope_type": "linear", "factor": float(md[f"{arch}.rope.scaling.factor"])}
        if arch == "phi3":
            if "rope_factors_long.weight" in self.tensors or md.get("phi3.rope.scaling.attn_factor") is not None:
                raise GGUFError(f"{self.path}: LongRoPE (rope_factors_long/short: Phi-3's 128k variants) is not "
                                "implemented in the engine's phi3")
            if md.get("phi3.attention.sliding_window"):
                cfg["sliding_window"] = int(md["phi3.attention.sliding_window"])
            rot, head = md.get("phi3.rope.dimension_count"), cfg["hidden_size"] // cfg["num_attention_heads"]
            if rot is not None and int(rot) != head:
                cfg["partial_rotary_factor"] = int(rot) / head
        cfg["tie_word_embeddings"] = "output.weight" not in self.tensors  # llama.cpp drops a tied head
        for key, name in _TOKEN_IDS.items():
            if f"tokenizer.ggml.{key}" in md:
                cfg[name] = int(md[f"tokenizer.ggml.{key}"])
        for k, v in list(cfg.items()):
            if isinstance(v, (np.integer, np.floating)):
                cfg[k] = v.item()
        return cfg

    # ---- tensors --------------------------------------------------------------------------------------------
    @functools.cached_property
    def weights(self) -> dict:
        """{HF name: (GGUF tensor, logical shape (numpy order), expert index or None)}; every tensor's type
        checked. A stacked expert tensor (mixtral's ffn_*_exps, (E, rows, cols)) gives one name an expert."""
        out = {}
        for name, t in self.tensors.items():
            self._check_type(t)
            shape = tuple(int(s) for s in reversed(t.shape.tolist()))
            m = _BLOCK_RE.match(name)
            if self.model_type == "mixtral" and m and m.group(2) in _EXPERTS:
                if len(shape) != 3:
                    raise GGUFError(f"{self.path}: tensor {name} has shape {shape}, expected (experts, rows, cols)")
                for e in range(shape[0]):
                    out[f"model.layers.{m.group(1)}.block_sparse_moe.experts.{e}.{_EXPERTS[m.group(2)]}.weight"] = \
                        (t, shape[1:], e)
                continue
            out[hf_name(name, self.model_type)] = (t, shape, None)
        return out

    def _check_type(self, t):
        tt = int(t.tensor_type)
        if tt in (0, 1, 30) or tt in BY_GGML_TYPE:  # F32, F16, BF16, or a block format the engine computes with
            return
        raise GGUFError(f"{self.path}: tensor {t.name} (data at byte offset {t.data_offset}) has type "
                        f"{t.tensor_type.name}, which the engine does not compute with (supported: F32, F16, "
                        f"BF16, {', '.join(q.upper() for q in QTYPES)})")

    def _heads(self, key):
        cfg = self.config
        return cfg["num_attention_heads"] if key.endswith(("q_proj.weight", "q_proj.bias")) else \
            cfg.get("num_key_value_heads") or cfg["num_attention_heads"]

    def get(self, key: str):
        """The weight `key` (HF name): a numpy array (float types, zero-copy over the file where no
        permutation applies) or a host QuantWeight over the packed bytes."""
        from engine import ops
        from engine.quant import QuantWeight
        t, shape, expert = self.weights[key]
        tt = int(t.tensor_type)
        arr = t.data if expert is None else t.data[expert]
        if tt == 30:  # BF16 comes as bytes
            import ml_dtypes
            arr = arr.view(ml_dtypes.bfloat16)
        if ARCHS[self.model_type]["permuted"] and (".self_attn.q_proj." in key or ".self_attn.k_proj." in key):
            arr = arr[unpermute_rows(shape[0], self._heads(key))]
        if tt in BY_GGML_TYPE:
            return QuantWeight(ops.from_numpy(np.ascontiguousarray(arr)), BY_GGML_TYPE[tt], shape)
        if ARCHS[self.model_type].get("norm_one") and key.endswith("norm.weight"):
            return arr.reshape(shape).astype(np.float32) - np.float32(1)  # exact: 1 + (stored - 1) is stored
        return arr.reshape(shape)

    # ---- tokenizer -------------------------------------------------------------------------------------------
    def tokenizer(self):
        """A tokenizers.Tokenizer from the metadata (gguf_tokenizer.build_tokenizer)."""
        from engine.io.gguf_tokenizer import build_tokenizer
        return build_tokenizer(self.metadata, self.path)


def _value(field):
    """A metadata value: a scalar, a string, or a list."""
    v = field.contents()
    return v.item() if isinstance(v, np.generic) else v


# ---- diagnosis of a file the reader refused -------------------------------------------------------------------
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Bad(Exception):
    pass


def diagnose(path) -> str | None:
    """What is wrong with a GGUF file and at which byte, by walking its header (magic, key/value
    pairs, tensor infos) and checking every tensor's data lies inside the file; None if the walk
    finds nothing (then the reader's own message is used)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    size = os.path.getsize(path)
    if size == 0:
        return "the file is empty (0 bytes)"
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        pos = 0

        def take(fmt, what):
            nonlocal pos
            n = struct.calcsize(fmt)
            if pos + n > size:
                raise _Bad(f"{what} at byte offset {pos} needs {n} bytes, but the file ends at byte {size} (truncated?)")
            v = struct.unpack_from(fmt, m, pos)[0]
            pos += n
            return v

        def string(what):
            nonlocal pos
            n = take("<Q", f"the length of {what}")
            if pos + n > size:
                raise _Bad(f"{what} at byte offset {pos} claims {n} bytes, but the file ends at byte {size} "
                           "(truncated or corrupt)")
            s = bytes(m[pos:pos + n])
            pos += n
            try:
                return s.decode("utf-8")
            except UnicodeDecodeError:
                raise _Bad(f"{what} at byte offset {pos - n} is not UTF-8 (corrupt header)") from None

        def skip(n, what, at):
            nonlocal pos
            if pos + n > size:
                raise _Bad(f"{what} at byte offset {at} needs {n} bytes of elements, but the file ends at byte "
                           f"{size} (truncated?)")
            pos += n

        def value(vt, what):
            if vt in _SCALAR:
                return take(_SCALAR[vt], what)
            if vt == _STRING:
                return string(what)
            if vt == _ARRAY:
                at = pos
                sub, n = take("<I", f"the element type of {what}"), take("<Q", f"the length of {what}")
                if sub not in _SCALAR and sub not in (_STRING, _ARRAY):
                    raise _Bad(f"{what} at byte offset {at} has unknown element type {sub} (corrupt header)")
                if sub in _SCALAR:  # skip fixed-size elements in one step
                    skip(n * struct.calcsize(_SCALAR[sub]), what, at)
                    return None
                for i in range(n):
                    value(sub, f"{what}[{i}]")
                return None
            raise _Bad(f"{what} at byte offset {pos - 4} has unknown value type {vt} (corrupt header)")

        try:
            magic = bytes(m[:4])
            if magic != b"GGUF":
                return f"not a GGUF file: the first 4 bytes are {magic!r}, not b'GGUF'"
            pos = 4
            version = take("<I", "the version")
            if version not in (2, 3):
                return f"GGUF version {version} at byte offset 4 is not one the reader knows (2, 3)"
            n_tensors, n_kv = take("<Q", "the tensor count"), take("<Q", "the key count")
            alignment = 32
            for i in range(n_kv):
                key = string(f"key {i}")
                v = value(take("<I", f"the value type of {key}"), f"the value of {key}")
                if key == "general.alignment":
                    alignment = v or 32
            infos = []
            known = {int(t) for t in GGMLQuantizationType}
            for i in range(n_tensors):
                name = string(f"the name of tensor {i}")
                nd = take("<I", f"the rank of tensor {name}")
                if nd > 4:
                    raise _Bad(f"tensor {name}: rank {nd} at byte offset {pos - 4} (at most 4; corrupt header)")
                dims = [take("<Q", f"dim {d} of tensor {name}") for d in range(nd)]
                at = pos
                tt = take("<I", f"the type of tensor {name}")
                if tt not in known:
                    raise _Bad(f"tensor {name}: unknown ggml type {tt} at byte offset {at} (no GGUF reader knows it; "
                               "corrupt header, or a newer format)")
                infos.append((name, dims, GGMLQuantizationType(tt), take("<Q", f"the data offset of tensor {name}")))
            start = -(-pos // alignment) * alignment
            for name, dims, tt, off in infos:
                block, tsize = GGML_QUANT_SIZES[tt]
                n = int(np.prod(dims)) if dims else 1
                if dims and dims[0] % block:
                    return (f"tensor {name}: {tt.name} shape {list(reversed(dims))} has rows of {dims[0]} weights, "
                            f"not a whole number of {block}-weight blocks")
                lo, hi = start + off, start + off + n // block * tsize
                if hi > size:
                    return (f"tensor {name} ({tt.name}, shape {list(reversed(dims))}) needs bytes {lo} to {hi}, but "
                            f"the file ends at byte {size} (truncated?)")
        except _Bad as e:
            return str(e)
    return None


# ---- writing -------------------------------------------------------------------------------------------------
# the block formats save_gguf quantises to: gguf-py's numpy quantisers (bit-exact to ggml) for the legacy
# ones, engine/quantizers.py (ggml's reference algorithm) for the k-quants; q4_k_m is llama.cpp's mix (mix_qtype)
_WRITE_QTYPES = ("q8_0", "q4_0", "q4_1", "q4_k", "q6_k", "q4_k_m")
_FILE_TYPES = {"q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0", "q4_1": "MOSTLY_Q4_1", "q4_k": "MOSTLY_Q4_K_S",
               "q6_k": "MOSTLY_Q6_K", "q4_k_m": "MOSTLY_Q4_K_M"}
# a k-quant needs rows of whole 256-weight super-blocks; a matrix whose rows are not falls back (as
# llama-quantize does: it takes Q5_0 for Q4_K and Q8_0 for Q6_K; the engine has no Q5_0, so Q4_1)
_FALLBACK = {"q4_k": "q4_1", "q6_k": "q8_0"}


def _more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers and every third one between."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def mix_qtype(name: str, shape, quantize: str | None, n_layers: int) -> str | None:
    """The block format of HF tensor `name` (shape in numpy order) when a model is written as `quantize`;
    None keeps it F32 (vectors, and rows that are not whole 32-weight blocks).
    q4_k_m is llama-quantize's Q4_K_M recipe (llama_tensor_get_type, no importance matrix): Q6_K for
    lm_head (output.weight) and for v_proj (attn_v) and down_proj (ffn_down) in the layers _more_bits
    picks, Q4_K for every other matrix, the token embedding included; a Mixtral's experts' w2 count as down_proj
    (llama.cpp's ffn_down_exps; its further bumps for 8-expert models, attn_k to Q8_0, are not reproduced).
    A Mixtral's router (block_sparse_moe.gate, llama.cpp's ffn_gate_inp) stays F32, as llama-quantize keeps it."""
    if quantize is None or len(shape) != 2 or shape[1] % 32 or name.endswith("block_sparse_moe.gate.weight"):
        return None
    q = quantize
    if q == "q4_k_m":
        m = re.match(r"model\.layers\.(\d+)\.(self_attn\.v_proj|mlp\.down_proj|block_sparse_moe\.experts\.\d+\.w2)"
                     r"\.weight$", name)
        q = "q6_k" if name == "lm_head.weight" or (m and _more_bits(int(m.group(1)), n_layers)) else "q4_k"
    if q in _FALLBACK and shape[1] % 256:
        q = _FALLBACK[q]
    return q


def quantize_matrix(a, q: str):
    """A (rows, cols) float matrix as (rows, row_bytes) uint8 blocks of `q`, a tile of rows at a time
    (so a memory-mapped source is read, converted and quantised in bounded memory): the converter's
    quantiser. The k-quants, and any format of a cupy array, through engine/quantizers.py; the legacy
    formats of host arrays through gguf-py's own quantisers."""
    from engine.quantizers import TILE_WEIGHTS, array_module, quantize
    if q in ("q4_k", "q6_k") or array_module(a) is not np:
        return quantize(a, q)
    import gguf
    rows, cols = a.shape
    out = np.empty((rows, cols // 32 * QTYPES[q].type_size), np.uint8)
    step = max(1, TILE_WEIGHTS // cols)
    for r0 in range(0, rows, step):
        tile = np.ascontiguousarray(a[r0:r0 + step], dtype=np.float32)
        out[r0:r0 + tile.shape[0]] = gguf.quants.quantize(tile, gguf.GGMLQuantizationType[q.upper()])
    return out


def gguf_name(hf: str, arch: str = "llama") -> str:
    """The GGUF name of a state-dict name of `arch` (the inverse of hf_name)."""
    inv_block = {v: k for k, v in _BLOCKS[arch].items()}
    m = re.match(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)$", hf)
    if m and m.group(2) in inv_block:
        return f"blk.{m.group(1)}.{inv_block[m.group(2)]}.{m.group(3)}"
    base, _, leaf = hf.rpartition(".")
    inv_top = {v: k for k, v in _LLAMA_TOP.items()}
    if base in inv_top:
        return f"{inv_top[base]}.{leaf}"
    raise KeyError(f"{hf}: no GGUF name for this {arch} tensor")


def save_gguf(path, config: dict, tensors: dict, quantize: str | None = None, tokenizer: dict | None = None,
              shapes: dict | None = None) -> Path:
    """Write a llama, mixtral, qwen2, phi3 or gemma model as GGUF, as llama.cpp's converter lays it out: ARCH.*
    metadata from the HF `config`, tensors {HF name: numpy float array} renamed, (llama, mixtral) q/k rows permuted
    into llama.cpp's rotary order, (mixtral) each layer's experts stacked into ffn_{gate,up,down}_exps, (gemma)
    norm weights stored as 1 + w, 2-d matrices quantised to `quantize` (q8_0,
    q4_0, q4_1, q4_k, q6_k, or the q4_k_m mix: mix_qtype; None keeps float32), vectors F32.
    Streaming: a value may also be a zero-argument callable that returns the array (then `shapes`
    gives its shape), and it is called only when that tensor is written, so at most one tensor (and a
    tile of its float32 copy) is in memory at a time, whatever the model size.
    tokenizer: extra tokenizer.ggml.* metadata {key suffix: value} (model, tokens, merges, token_type, pre, scores,
    add_bos_token).
    Written to a temp file and renamed (engine.io.atomic)."""
    import gguf
    from engine.io.atomic import discard, temp_path
    arch = config.get("model_type")
    if arch not in ARCHS:
        raise ValueError(f"save_gguf writes {', '.join(ARCHS)} models, not model_type {arch!r}")
    if quantize is not None and quantize not in _WRITE_QTYPES:
        raise ValueError(f"cannot quantise to {quantize!r}: save_gguf quantises to {', '.join(_WRITE_QTYPES)}")
    from engine.nn.rotary import rope_parameters
    rope = rope_parameters(config)  # rope_theta and scaling, from transformers 5's rope_parameters or the older keys
    if rope["rope_type"] not in ("default", "linear"):
        raise ValueError(f"save_gguf: rope type {rope['rope_type']!r} is not written (the engine reads GGUF rope "
                         "scaling none or linear)")
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    n_layers = int(config["num_hidden_layers"])
    tied = config.get("tie_word_embeddings", False)
    plan = []  # (GGUF name, [HF names: one, or a stacked tensor's experts in order], numpy shape, format or None)
    stacks: dict = {}  # (layer, w1|w2|w3) -> {expert: HF name} (mixtral)
    for name in sorted(tensors):
        if tied and name == "lm_head.weight":
            continue  # llama.cpp leaves a tied head out
        v = tensors[name]
        shape = tuple(int(d) for d in (shapes[name] if callable(v) else np.shape(v)))
        m = _EXPERT_RE.match(name) if arch == "mixtral" else None
        if m:
            stacks.setdefault((int(m.group(1)), m.group(3)), {})[int(m.group(2))] = (name, shape)
            continue
        plan.append((gguf_name(name, arch), [name], shape, mix_qtype(name, shape, quantize, n_layers)))
    for (layer, wk), by_e in sorted(stacks.items()):
        n_exp = int(config["num_local_experts"])
        if sorted(by_e) != list(range(n_exp)) or len({sh for _, sh in by_e.values()}) != 1:
            raise ValueError(f"save_gguf: layer {layer}'s {wk} experts are {sorted(by_e)} of shapes "
                             f"{sorted({sh for _, sh in by_e.values()})}; expected experts 0..{n_exp - 1} of one shape")
        names = [by_e[e][0] for e in range(n_exp)]
        shape = by_e[0][1]
        gname = f"blk.{layer}.{ {v: k for k, v in _EXPERTS.items()}[wk]}.weight"
        plan.append((gname, names, (n_exp, *shape), mix_qtype(names[0], shape, quantize, n_layers)))
    path = Path(path)
    tmp = temp_path(path)
    w = gguf.GGUFWriter(str(tmp), file_arch(arch))
    try:
        w.add_context_length(int(config.get("max_position_embeddings", 2048)))
        w.add_embedding_length(int(config["hidden_size"]))
        w.add_block_count(n_layers)
        w.add_feed_forward_length(int(config["intermediate_size"]))
        w.add_head_count(int(heads))
        w.add_head_count_kv(int(kv))
        for key in ARCHS[arch]["head_dim"]:
            w.add_uint32(f"{file_arch(arch)}.{key}", int(head_dim))
        if arch == "mixtral":
            w.add_expert_count(int(config["num_local_experts"]))
            w.add_expert_used_count(int(config["num_experts_per_tok"]))
        if arch == "phi3":  # n_rot (Phi's partial rotary) and the attention window, as llama.cpp writes them
            w.add_rope_dimension_count(int(head_dim * (config.get("partial_rotary_factor") or 1.0)))
            if config.get("sliding_window"):
                w.add_sliding_window(int(config["sliding_window"]))
        w.add_rope_freq_base(float(rope["rope_theta"]))
        if rope["rope_type"] == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(rope["factor"]))
        w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
        w.add_vocab_size(int(config["vocab_size"]))
        if quantize is not None:
            w.add_file_type(gguf.LlamaFileType[_FILE_TYPES[quantize]])
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if isinstance(config.get(key), int):
                getattr(w, {"pad_token_id": "add_pad_token_id"}.get(key, f"add_{key}"))(config[key])
        for key, value in (tokenizer or {}).items():
            if key == "model":
                w.add_tokenizer_model(value)
            elif key == "tokens":
                w.add_token_list(value)
            elif key == "merges":
                w.add_token_merges(value)
            elif key == "token_type":
                w.add_token_types(value)
            elif key == "pre":
                w.add_tokenizer_pre(value)
            elif key == "scores":
                w.add_token_scores(value)
            elif key == "add_bos_token":
                w.add_add_bos_token(bool(value))
            else:
                raise ValueError(f"save_gguf: unknown tokenizer metadata {key!r}")
        for gname, _, shape, q in plan:  # every tensor's header first; the data follows one tensor at a time
            if q is None:
                w.add_tensor_info(gname, shape, np.dtype(np.float32), 4 * int(np.prod(shape)))
            else:
                qt = QTYPES[q]
                row = shape[-1] // qt.block_size * qt.type_size
                w.add_tensor_info(gname, (*shape[:-1], row), np.dtype(np.uint8), row * int(np.prod(shape[:-1])),
                                  raw_dtype=gguf.GGMLQuantizationType[q.upper()])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for _, names, shape, q in plan:
            parts = []  # one array, or a stacked tensor's experts one at a time (each quantised on its own)
            for name in names:
                v = tensors[name]
                a = v() if callable(v) else v
                want = shape if len(names) == 1 else shape[1:]
                if tuple(a.shape) != want:
                    raise ValueError(f"save_gguf: tensor {name} has shape {tuple(a.shape)}, expected {want}")
                if ARCHS[arch]["permuted"] and name.endswith(("q_proj.weight", "q_proj.bias", "k_proj.weight",
                                                              "k_proj.bias")):
                    n = heads if ".q_proj." in name else kv
                    a = a.reshape(n, 2, a.shape[0] // n // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)
                if ARCHS[arch].get("norm_one") and name.endswith("norm.weight"):
                    a = np.asarray(a, dtype=np.float32) + np.float32(1)
                parts.append(quantize_matrix(a, q) if q is not None else np.ascontiguousarray(a, dtype=np.float32))
                del a
            data = parts[0] if len(names) == 1 else np.stack(parts)
            del parts
            w.write_tensor_data(data)
            del data
        w.close()
        os.replace(tmp, path)
    except BaseException:
        try:
            w.close()
        except Exception:  # noqa: BLE001  (the original error matters, not a failed close)
            pass
        discard(None, tmp)
        raise
    return path
