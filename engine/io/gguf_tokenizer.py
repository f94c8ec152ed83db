"""The tokenizer of a GGUF file, rebuilt with `tokenizers` from its tokenizer.ggml.* metadata as transformers'
GGUF converter builds it: byte-level BPE ('gpt2': SmolLM2, Qwen2, Llama-3 files; the split regex by
tokenizer.ggml.pre) or SentencePiece BPE ('llama': LLaMA-2, Mistral, TinyLlama, Phi-3 files). engine.io.gguf's
GGUFFile.tokenizer() calls build_tokenizer; migration/quantize.py names a tokenizer.json's split by pre_name.
"""
from __future__ import annotations

import functools

from engine.io.gguf import GGUFError

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> the split regex its merges were learned with (transformers'
# GGUF_PRE_TOKENIZER_SPLITS, the llama3 family); any other keeps GPT-2's ByteLevel regex, as there
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_SPLITS = {**{name: _LLAMA3_SPLIT for name in ("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx")},
               **{name: _QWEN2_SPLIT for name in ("qwen2", "deepseek-r1-qwen")}}
_PRE_NAMES = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}  # what a converter writes for a split regex


def pre_name(split_regex: str | None) -> str | None:
    """The tokenizer.ggml.pre name of a tokenizer whose pre-tokenizer splits by split_regex (None: GPT-2's
    ByteLevel regex, or one no name here covers)."""
    return _PRE_NAMES.get(split_regex)


_CONTROL, _USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values


@functools.lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict:
    """GPT-2's reversible byte -> printable character table."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def spm_merges(tokens: list, scores: list) -> list:
    """BPE merges a SentencePiece vocabulary implies (a 'llama' GGUF lists none): every split of a token into
    two tokens of the vocabulary, best first by the merged token's score, then the longer left piece, then the
    longer right one; ties in the order of the tokens and of their pieces' ids."""
    ids = {t: i for i, t in enumerate(tokens)}
    best = dict(zip(tokens, scores))
    merges = []
    for t, score in best.items():
        pairs = [(t[:i], t[i:]) for i in range(1, len(t)) if t[:i] in ids and t[i:] in ids]
        merges += [(a, b, score) for a, b in sorted(pairs, key=lambda p: (ids[p[0]], ids[p[1]]))]
    merges.sort(key=lambda m: (-m[2], -len(m[0]), -len(m[1])))  # stable: ties keep the order above
    return [(a, b) for a, b, _ in merges]


def _spm_tokenizer(md: dict, where: str):
    """A SentencePiece BPE vocabulary ('llama': LLaMA-2, Mistral, TinyLlama files) as transformers' GGUF
    loader builds it: merges from the file or else from the scores (spm_merges), byte fallback (<0x..> tokens),
    the word boundary spelled '\u2581' with one prepended to the text, a BOS first unless
    tokenizer.ggml.add_bos_token is false."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    tokens, scores = md["tokenizer.ggml.tokens"], md.get("tokenizer.ggml.scores")
    if scores is None or len(scores) != len(tokens):
        raise GGUFError(f"{where}: a 'llama' (SentencePiece) tokenizer needs tokenizer.ggml.scores, one a token "
                        f"({len(tokens)} tokens, {'no' if scores is None else len(scores)} scores)")
    listed = md.get("tokenizer.ggml.merges")  # llama.cpp's converter writes them for a HF tokenizer.json
    merges = [tuple(m.split(" ")) for m in listed] if listed is not None else spm_merges(tokens, scores)
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges, fuse_unk=True, byte_fallback=True))
    if md.get("general.architecture") == "phi3":  # the boundary from a normalizer (transformers' phi3_tokenizer)
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return tok, md.get("tokenizer.ggml.add_bos_token", True)


def build_tokenizer(md: dict, where="GGUF metadata"):
    try:
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    except ImportError:
        raise ImportError(f"{where}: its tokenizer is built with the tokenizers package: pip install tokenizers "
                          "(or pip install 'taper[gguf]')") from None
    kind = md.get("tokenizer.ggml.model")
    if kind not in ("gpt2", "llama"):
        raise NotImplementedError(f"{where}: tokenizer.ggml.model {kind!r}; the engine builds byte-level BPE "
                                  "('gpt2') and SentencePiece BPE ('llama') tokenizers from GGUF")
    if "tokenizer.ggml.tokens" not in md:
        raise GGUFError(f"{where}: no tokenizer.ggml.tokens")
    if kind == "llama":
        tok, add_bos = _spm_tokenizer(md, where)
        return _finish(tok, md, add_bos, lambda t: True)
    tokens, merges = md["tokenizer.ggml.tokens"], md.get("tokenizer.ggml.merges")
    if merges is None:
        raise GGUFError(f"{where}: a 'gpt2' tokenizer without tokenizer.ggml.merges")
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {(t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8"))): i
             for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab, [tuple(m.split(" ")) for m in merges], continuing_subword_prefix="",
                               end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    split = _PRE_SPLITS.get(md.get("tokenizer.ggml.pre"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True) if split is None else \
        pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    # control tokens spelled outside the byte alphabet are a llama.cpp mislabel, left out (as transformers does)
    return _finish(tok, md, md.get("tokenizer.ggml.add_bos_token", False), lambda t: set(t) <= alphabet)


def _finish(tok, md: dict, add_bos: bool, spelled):
    """The special tokens and the post-processor both kinds share: control tokens (<|im_start|>, <s>) stay whole
    and are special, user-defined ones stay whole; the BOS token first where add_bos (transformers' rule)."""
    from tokenizers import AddedToken, processors
    tokens, types = md["tokenizer.ggml.tokens"], md.get("tokenizer.ggml.token_type") or ()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t, k in zip(tokens, types)
                            if k == _CONTROL and spelled(t)])
    user = [AddedToken(t, normalized=False, special=False) for t, k in zip(tokens, types) if k == _USER_DEFINED]
    if user:
        tok.add_tokens(user)
    bos = md.get("tokenizer.ggml.bos_token_id")
    if add_bos and isinstance(bos, int) and 0 <= bos < len(tokens):
        b = tokens[bos]
        tok.post_processor = processors.TemplateProcessing(single=f"{b}:0 $A:0", pair=f"{b}:0 $A:0 {b}:1 $B:1",
                                                           special_tokens=[(b, bos)])
    else:
        tok.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1")
    return tok
