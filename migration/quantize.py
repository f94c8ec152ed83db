"""Quantise a safetensors LLaMA model directory to a GGUF file (`taper convert --quantize q8_0 SRC DST.gguf`).

The file is written by engine.io.gguf.save_gguf (llama.cpp's layout, atomic): q8_0, q4_0 and q4_1
through gguf-py's quantisers, q4_k and q6_k through engine/quantizers.py (llama.cpp's reference
quantize_row_q4_K_ref / q6_K_ref), and q4_k_m, llama-quantize's Q4_K_M recipe (Q6_K for lm_head and
for v_proj / down_proj in the first and last eighth of the layers and every third one between, Q4_K
elsewhere; engine.io.gguf.mix_qtype). What stays float: every 1-d tensor (the RMSNorm weights,
biases) as F32, and any matrix whose rows are not whole 32-wide blocks; a k-quant matrix whose rows
are not whole 256-wide super-blocks falls back to q4_1 (for q4_k) or q8_0 (for q6_k). Every 2-d
matrix is quantised, the token embedding and lm_head included, as llama.cpp's converter does.

Streaming: tensors are read one at a time from the checkpoint (copy-on-load reads, so pages of a
memory map never pile up in the resident set) and written out before the next is read, so the
peak memory is about one tensor, not the model (a 7B model does not need 28 GB).

The tokenizer (tokenizer.json, byte-level BPE: GPT-2, LLaMA-3, SmolLM2 style) goes into the
tokenizer.ggml.* metadata when the directory has one; other tokenizers are left out (the report says).
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.io.gguf import _WRITE_QTYPES, ARCHS, mix_qtype, save_gguf
from engine.io.gguf_tokenizer import pre_name
from migration.source import ConvertError

# what is not offered, and why (asked for by users who know llama.cpp's names)
_NOT_OFFERED = {"q5_k": "the engine does not compute with Q5_K", "q5_k_m": "the engine does not compute with Q5_K",
                "q5_0": "the engine does not compute with Q5_0", "q4_k_s": "use q4_k (all Q4_K) or q4_k_m"}
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 1, 2, 3, 4, 6  # llama.cpp token types


@dataclass
class QuantizeReport:
    src: str
    dst: str
    qtype: str
    quantized: list[str] = field(default_factory=list)  # HF names stored in blocks
    formats: dict = field(default_factory=dict)  # HF name -> the block format it got (q4_k_m mixes two)
    kept_float: list[str] = field(default_factory=list)  # HF names stored as F32
    tokenizer: str = "none"
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0

    def __str__(self):
        mix = sorted(set(self.formats.values()))
        return (f"{self.src} -> {self.dst}: {len(self.quantized)} matrices quantised to {self.qtype}"
                f"{' (' + ', '.join(f'{sum(v == q for v in self.formats.values())} {q}' for q in mix) + ')' if len(mix) > 1 else ''}, "
                f"{len(self.kept_float)} tensors kept F32 ({', '.join(self.kept_float[:3])}"
                f"{' ...' if len(self.kept_float) > 3 else ''}); tokenizer: {self.tokenizer}; "
                f"{self.bytes_in / 1e6:.1f} MB -> {self.bytes_out / 1e6:.1f} MB in {self.seconds:.1f} s")


def check_qtype(qtype: str) -> str:
    q = str(qtype).lower()
    if q in _WRITE_QTYPES:
        return q
    why = f" ({_NOT_OFFERED[q]})" if q in _NOT_OFFERED else ""
    raise ConvertError(f"cannot quantise to {qtype!r}{why}; supported: {', '.join(_WRITE_QTYPES)}")


def tokenizer_metadata(path: Path) -> tuple[dict | None, str]:
    """tokenizer.ggml.* metadata from a tokenizer.json (byte-level BPE), and a word on what was done."""
    f = path / "tokenizer.json"
    if not f.is_file():
        return None, "none in the source directory"
    try:
        tj = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise ConvertError(f"{f}: cannot read the tokenizer: {e}") from None
    model = tj.get("model") or {}
    spm = model.get("type") == "BPE" and model.get("byte_fallback") and "\u2581" in json.dumps(
        [tj.get("pre_tokenizer"), tj.get("normalizer")], ensure_ascii=False)
    if model.get("type") != "BPE" or not (spm or "ByteLevel" in json.dumps(tj.get("pre_tokenizer"))):
        return None, f"left out ({f.name} is {model.get('type')!r}, neither byte-level BPE nor SentencePiece BPE)"
    vocab = dict(model["vocab"])
    added = {t["content"]: t for t in tj.get("added_tokens", [])}
    for t in added.values():
        vocab.setdefault(t["content"], t["id"])
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    for t, i in vocab.items():
        tokens[i] = t
    types = [(_CONTROL if added[t]["special"] else _USER_DEFINED) if t in added else _NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if spm:
        return _spm_metadata(tj, tokens, types, merges), f"SentencePiece BPE, {n} tokens"
    meta = {"model": "gpt2", "tokens": tokens, "merges": merges, "token_type": types}
    pre = pre_name(_split_regex(tj.get("pre_tokenizer")))
    if pre is not None:  # the split regex its merges were learned with (llama3's, qwen2's), by llama.cpp's name
        meta["pre"] = pre
    return meta, f"byte-level BPE, {n} tokens" + (f", pre-tokenizer {pre}" if pre else "")


def _spm_metadata(tj: dict, tokens: list, types: list, merges: list) -> dict:
    """A SentencePiece BPE tokenizer.json (byte fallback, '\u2581' word boundaries: LLaMA-2's, Mistral's) as
    llama.cpp's converter writes it: model 'llama', <0xXX> tokens typed BYTE and the unknown token UNKNOWN, the
    merges listed, each token scored by the merge that makes it (earlier higher; 0 for the unmerged), and
    add_bos_token as the post-processor does."""
    unk = (tj.get("model") or {}).get("unk_token")
    types = [_BYTE if re.fullmatch(r"<0x[0-9A-F]{2}>", t) else _UNKNOWN if t == unk else k
             for t, k in zip(tokens, types)]
    rank = {m.replace(" ", "", 1): -float(i + 1) for i, m in reversed(list(enumerate(merges)))}
    post = tj.get("post_processor") or {}
    template = next((p for p in [post, *post.get("processors", [])] if p.get("type") == "TemplateProcessing"), {})
    single = template.get("single") or [{}]
    return {"model": "llama", "tokens": tokens, "scores": [rank.get(t, 0.0) for t in tokens], "token_type": types,
            "merges": merges, "add_bos_token": "SpecialToken" in single[0]}


def _split_regex(pre) -> str | None:
    """The Regex of a tokenizer.json pre_tokenizer's Split step (in a Sequence or alone), or None."""
    steps = (pre or {}).get("pretokenizers", [pre]) if isinstance(pre, dict) else []
    for step in steps:
        if isinstance(step, dict) and step.get("type") == "Split" and isinstance(step.get("pattern"), dict):
            return step["pattern"].get("Regex")
    return None


def quantize_to_gguf(src, dst, qtype: str, *, overwrite: bool = False) -> QuantizeReport:
    """Quantise the safetensors LLaMA, Mixtral, Qwen2, Phi-3 or Gemma model directory `src` (config.json + weights)
    to the GGUF file `dst`.
    Raises ConvertError for another model type, an unsupported type or an existing output without overwrite."""
    from engine.io.safetensors import SafetensorsError, open_checkpoint
    start = time.perf_counter()
    q = check_qtype(qtype)
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".gguf":
        raise ConvertError(f"{dst}: with --quantize the destination is a .gguf file")
    if dst.exists() and not overwrite:
        raise ConvertError(f"{dst}: already exists; pass --overwrite (overwrite=True) to replace it")
    if dst.is_dir():
        raise ConvertError(f"{dst}: is a directory; give a .gguf file name")
    if not (src / "config.json").is_file():
        raise ConvertError(f"{src}: not a model directory with config.json (--quantize reads a safetensors "
                           "model directory, e.g. one `taper convert` wrote)")
    try:
        config = json.loads((src / "config.json").read_text())
    except ValueError as e:
        raise ConvertError(f"{src / 'config.json'}: not valid JSON: {e}") from None
    if config.get("model_type") not in ARCHS:
        raise ConvertError(f"{src}: model_type {config.get('model_type')!r}; --quantize writes GGUF for "
                           f"{', '.join(ARCHS)} models only (llama.cpp's architectures of those names; a mixtral as "
                           "llama.cpp writes it, a llama with experts)")
    try:
        ck = open_checkpoint(src, mmap=False)  # copy-on-load: one tensor read at a time, when written
    except SafetensorsError as e:
        raise ConvertError(f"{src}: {e}") from None
    tok, tok_note = tokenizer_metadata(src)
    report = QuantizeReport(str(src), str(dst), q, tokenizer=tok_note)
    with ck:
        names = [k for k in ck.keys() if not k.endswith("rotary_emb.inv_freq")]
        shapes = {k: tuple(ck.info(k)[1]) for k in names}
        report.bytes_in = sum(ck.info(k)[2][1] - ck.info(k)[2][0] for k in names)
        tied = config.get("tie_word_embeddings", False)
        n_layers = int(config.get("num_hidden_layers", 0))
        for k in sorted(names):
            if tied and k == "lm_head.weight":
                continue
            fmt = mix_qtype(k, shapes[k], q, n_layers)
            if fmt is None:
                report.kept_float.append(k)
            else:
                report.quantized.append(k)
                report.formats[k] = fmt
        tensors = {k: (lambda k=k: ck.get_numpy(k)) for k in names}
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            save_gguf(dst, config, tensors, q, tok, shapes=shapes)
        except KeyError as e:
            raise ConvertError(f"{src}: {e.args[0]}") from None
    report.bytes_out = dst.stat().st_size
    report.seconds = time.perf_counter() - start
    return report
