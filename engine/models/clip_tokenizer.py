"""CLIP's byte-level BPE tokenizer from vocab.json + merges.txt (the files of Stable Diffusion's tokenizer/),
built with the `tokenizers` package as transformers' CLIPTokenizer builds it:

    NFC, runs of whitespace -> one space, lower case;
    split on <|startoftext|> | <|endoftext|> | 's 't 're 've 'm 'll 'd | letters+ | one digit | other non-space+;
    byte-level alphabet (GPT-2's bytes -> unicode map), BPE with "</w>" closing every word, no prefix;
    <|startoftext|> ids <|endoftext|> around each text.

    tok = clip_tokenizer("sd-1.5/tokenizer")          # a tokenizers.Tokenizer
    tok.encode("a photo of a cat").ids                 # [49406, 320, 1125, 539, 320, 2368, 49407]

merges.txt: an optional "#version: ..." first line, then one merge "left right" per line (as the
openai/clip and SD checkpoints ship it). Special tokens come from tokenizer_config.json /
special_tokens_map.json when present, CLIP's defaults otherwise.
"""
from __future__ import annotations

import json
from pathlib import Path

DEFAULTS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>"}
SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def special_tokens(path) -> dict:
    """bos/eos/unk/pad token strings of a tokenizer directory (tokenizer_config.json over
    special_tokens_map.json over CLIP's defaults); a token given as {"content": ...} is unwrapped."""
    path, out = Path(path), dict(DEFAULTS)
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = path / name
        if not f.is_file():
            continue
        try:
            cfg = json.loads(f.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{f}: not valid JSON ({e})") from None
        for key in DEFAULTS:
            v = cfg.get(key)
            v = v.get("content") if isinstance(v, dict) else v
            if isinstance(v, str):
                out[key] = v
    return out


def read_merges(path) -> list:
    """merges.txt -> [(left, right), ...] in rank order."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    first = 1 if lines and lines[0].startswith("#version") else 0
    merges = []
    for i, line in enumerate(lines[first:], start=first + 1):
        if not line.strip():
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{path} line {i}: a merge is two tokens separated by one space, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def clip_tokenizer(path, vocab: str = "vocab.json", merges: str = "merges.txt"):
    """A tokenizers.Tokenizer for a CLIP tokenizer directory (vocab.json + merges.txt)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    path = Path(path)
    missing = [n for n in (vocab, merges) if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} has no {' or '.join(missing)} (CLIP's BPE tokenizer files)")
    try:
        table = json.loads((path / vocab).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path / vocab}: not valid JSON ({e})") from None
    if not isinstance(table, dict) or not all(isinstance(v, int) for v in table.values()):
        raise ValueError(f"{path / vocab}: expected a JSON object of token -> integer id")
    sp = special_tokens(path)
    for key in ("bos_token", "eos_token", "unk_token"):
        if sp[key] not in table:
            raise ValueError(f"{path / vocab} has no {key} {sp[key]!r}")
    tok = Tokenizer(models.BPE(vocab=table, merges=read_merges(path / merges), dropout=None,
                               continuing_subword_prefix="", end_of_word_suffix="</w>", fuse_unk=False,
                               unk_token=sp["unk_token"]))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([t for t in dict.fromkeys(sp[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token"))
                            if t in table])
    tok.post_processor = processors.RobertaProcessing((sp["eos_token"], table[sp["eos_token"]]),
                                                      (sp["bos_token"], table[sp["bos_token"]]),
                                                      trim_offsets=False, add_prefix_space=False)
    return tok
