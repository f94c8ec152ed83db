"""Sentence embeddings as sentence-transformers computes them, on an engine encoder.

A sentence-transformers directory lists its pipeline in modules.json: Transformer (the HF model in
the directory itself), Pooling (1_Pooling/config.json: mean, cls, max, mean_sqrt_len_tokens) and
optionally Normalize (L2, no files). all-MiniLM-L6-v2 ships all three. A plain HF directory (no
modules.json) gets what sentence-transformers gives it: mean pooling, no normalisation.

    emb = SentenceEmbedder.from_dir("all-MiniLM-L6-v2")
    vectors = emb.encode(["a sentence", "another one"])   # Tensor (2, 384), unit rows
    emb.describe()                                         # "mean pooling, L2-normalised, ..."

Tokenising uses the directory's tokenizer.json through `tokenizers`, truncated to max_seq_length
(sentence_bert_config.json) and padded to the longest sentence, as sentence-transformers calls its
tokenizer (tokenizer.json's own fixed padding and truncation are replaced).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine import dtype as D
from engine import functional as F
from engine import ops

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens")
_OLD_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                     "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                     "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


def pool(token_embeddings, attention_mask, modes=("mean",)):
    """sentence-transformers' Pooling: (B, L, H) and a (B, L) mask (1 real, 0 padding) -> (B, H x modes).
    mean: sum(h * mask) / clamp(sum(mask), 1e-9); 16-bit inputs accumulate in float32 and round once."""
    h = token_embeddings
    acc = D.float32 if h.dtype.is_reduced else h.dtype
    m = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, L, 1)
    out = []
    for mode in modes:
        if mode == "cls":  # the first unmasked token (left padding aware)
            first = attention_mask.int().argmax(1)  # (B,)
            b, L, H = h.shape
            rows = ops.arange(b, dtype=D.int64, device=h.device) * L + first
            out.append(h.reshape(b * L, H).index_select(0, rows))
        elif mode == "max":
            out.append(h.masked_fill(m.expand(h.shape) == 0, float("-inf")).max(1).values)
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            total = (h * m).to(acc).sum(1)  # (B, H)
            count = m.to(acc).sum(1).clamp(min=1e-9)  # (B, 1)
            out.append((total / (count if mode == "mean" else count.sqrt())).to(h.dtype))
        else:
            raise NotImplementedError(f"pooling mode {mode!r} (known: {', '.join(POOLING_MODES)})")
    return out[0] if len(out) == 1 else ops.cat(out, -1)


def mean_pool(token_embeddings, attention_mask):
    """Mean over the real tokens (mask 1) of each row: (B, L, H), (B, L) -> (B, H)."""
    return pool(token_embeddings, attention_mask, ("mean",))


def _read_json(path: Path, what: str) -> dict:
    try:
        out = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({getattr(e, 'msg', e)})") from None
    return out


def pooling_modes(config: dict) -> tuple:
    """The modes of a 1_Pooling/config.json (the 2.x boolean keys, or 3.x+ "pooling_mode")."""
    if "pooling_mode" in config:
        pm = config["pooling_mode"]
        modes = (pm,) if isinstance(pm, str) else tuple(pm)
    else:
        modes = tuple(mode for key, mode in _OLD_POOLING_KEYS.items() if config.get(key))
    for mode in modes:
        if mode not in POOLING_MODES:
            raise NotImplementedError(f"pooling mode {mode!r} (known: {', '.join(POOLING_MODES)})")
    if not modes:
        raise ValueError(f"pooling config selects no mode: {config}")
    return modes


class SentenceEmbedder:
    """tokenizer + engine encoder + pooling (+ L2 normalisation): sentences -> (N, dim) embeddings."""

    def __init__(self, model, tokenizer=None, modes=("mean",), normalize: bool = False, max_seq_length=None,
                 source: str = "?", capture=None):
        self.model, self.tokenizer, self.modes, self.normalize = model, tokenizer, tuple(modes), normalize
        # encode(): on CUDA one CUDA graph per (batch, length), captured when that shape comes back
        # (engine.capture.CapturedForward; capture False / "plain" as Decoder's); results are copies
        from engine.capture import CapturedForward
        self.forward = CapturedForward(self, capture, copy=True, fallback=True)
        self.max_seq_length = max_seq_length or model.config.max_position_embeddings
        self.source = source
        if tokenizer is not None:
            pad = tokenizer.padding or {}
            tokenizer.enable_truncation(self.max_seq_length)
            tokenizer.enable_padding(pad_id=pad.get("pad_id", 0), pad_type_id=pad.get("pad_type_id", 0),
                                     pad_token=pad.get("pad_token", "[PAD]"))  # to the longest, no fixed length

    @classmethod
    def from_dir(cls, path, dtype=None, device=None, capture=None) -> "SentenceEmbedder":
        """A sentence-transformers or plain HF directory with tokenizer.json (see the module docstring)."""
        from engine import models
        from engine.generation import load_tokenizer
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"model directory not found: {path}")
        root, modes, normalize, max_len = path, ("mean",), False, None
        if (path / "modules.json").is_file():
            mods = _read_json(path / "modules.json", "modules.json")
            kinds = [(str(m.get("type", "")).rsplit(".", 1)[-1], m.get("path", "")) for m in mods]
            unknown = [k for k, _ in kinds if k not in ("Transformer", "Pooling", "Normalize")]
            if unknown or not kinds or kinds[0][0] != "Transformer":
                raise NotImplementedError(f"{path / 'modules.json'}: modules {[k for k, _ in kinds]}; the engine runs "
                                          "Transformer, Pooling, Normalize (in that order)")
            root = path / kinds[0][1] if kinds[0][1] else path
            pooling = [p for k, p in kinds if k == "Pooling"]
            if pooling:
                modes = pooling_modes(_read_json(path / pooling[0] / "config.json", "pooling config"))
            normalize = any(k == "Normalize" for k, _ in kinds)
            sbc = root / "sentence_bert_config.json"
            if sbc.is_file():
                max_len = _read_json(sbc, "sentence_bert_config.json").get("max_seq_length")
        tokenizer = load_tokenizer(root)
        if tokenizer is None:
            raise FileNotFoundError(f"{root} has no tokenizer.json: sentences cannot be tokenised (pass token ids "
                                    "to the model instead)")
        model = models.from_pretrained(root, dtype=dtype, device=device)
        return cls(model, tokenizer, modes, normalize, max_len, str(path), capture)

    def describe(self) -> str:
        return (f"{'+'.join(self.modes)} pooling{', L2-normalised' if self.normalize else ''}, "
                f"max {self.max_seq_length} tokens")

    def tokenize(self, sentences) -> dict:
        """{"input_ids", "attention_mask", "token_type_ids"}: (N, L) int64 numpy, padded to the longest."""
        if isinstance(sentences, str):
            sentences = [sentences]
        if not sentences:
            raise ValueError("no sentences to embed")
        enc = self.tokenizer.encode_batch(list(sentences))
        return {"input_ids": np.array([e.ids for e in enc], np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
                "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}

    def __call__(self, input_ids, attention_mask, token_type_ids=None):
        """Token ids (N, L) and mask -> embeddings (N, dim) on the model's device."""
        kw = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        h = self.model(input_ids, attention_mask, **kw).last_hidden_state  # (N, L, hidden)
        out = pool(h, attention_mask, self.modes)
        return F.normalize(out, p=2, dim=1) if self.normalize else out

    def encode(self, sentences):
        enc = self.tokenize(sentences)
        dev = self.model.device
        t = {k: ops.tensor(v, device=dev) for k, v in enc.items()}
        return self.forward(t["input_ids"], t["attention_mask"], t["token_type_ids"])
