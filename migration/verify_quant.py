"""The accuracy cost of quantisation: a GGUF file against the unquantised model it came from.

    rep = verify_quantized("models/tiny-llama", "tiny.q4_0.gguf")      # `taper verify DIR --candidate-gguf F`

Both are engine models of the same class (the reference from the model directory in float32, the
candidate from the GGUF with its matrices kept in blocks), so every module has the same name on both
sides: each one's output is captured (migration.capture) on the same tokens and compared (max abs,
cosine, ...). The tokens are a fixed English paragraph (FIXED_TEXT) through the model's tokenizer
(tokenizer.json in the directory, else the GGUF's own), or seeded token ids when there is none.
On the logits: teacher-forced top-1 agreement, top-5 overlap, KL(reference || quantised), and the
perplexity of each model on the text (next-token cross-entropy, exponentiated).

Layer errors are reported, not judged against a float tolerance (quantisation error is expected);
a layer fails only when its output is not finite or exceeds a --tol given for it. max_kl: the
report fails when KL exceeds it.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from migration.capture import VerifyError, capture_engine, scratch
from migration.verify import ROOT, Tolerance, compare_captures, lm_inputs, lm_metrics

FIXED_TEXT = ("The old lighthouse stood at the edge of the cliff, its white paint peeling in the salt wind. "
              "Every evening the keeper climbed the narrow stairs, lit the lamp, and watched the ships pass "
              "safely through the dark water. Nobody in the village remembered a night when the light had "
              "failed, and the children believed that it would shine forever.")
MAX_TOKENS = 128


def perplexity(logits, ids) -> float:
    """exp(mean next-token cross-entropy) of (batch, seq, vocab) logits on (batch, seq) ids."""
    x = np.asarray(logits, dtype=np.float64)[:, :-1]
    x = x - x.max(-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, np.asarray(ids)[:, 1:, None], -1)
    return float(np.exp(nll.mean()))


def fixed_tokens(model_dir, gguf_path, vocab_size: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """(1, n) token ids of FIXED_TEXT and where they came from."""
    from engine.generation import load_tokenizer
    for where in (model_dir, gguf_path):
        try:
            tok = load_tokenizer(where)
        except (NotImplementedError, KeyError, ValueError):
            tok = None
        if tok is not None:
            ids = tok.encode(FIXED_TEXT).ids[:MAX_TOKENS]
            if len(ids) >= 2 and max(ids) < vocab_size:
                return np.asarray([ids], dtype=np.int64), f"the fixed text through {Path(where).name}'s tokenizer"
    return lm_inputs(vocab_size, 1, 64, seed)[0], f"64 seeded token ids (seed {seed}; no tokenizer)"


def verify_quantized(model_dir, gguf_path, *, tol=None, max_kl: float | None = None, seed: int = 0,
                     device=None, workdir=None):
    """A VerifyReport of the GGUF model `gguf_path` (candidate) against the float model in `model_dir`."""
    import engine
    from engine import models
    from migration.report import VerifyReport
    model_dir, gguf_path = Path(model_dir), Path(gguf_path)
    if gguf_path.suffix != ".gguf" or not gguf_path.is_file():
        raise VerifyError(f"{gguf_path}: not a .gguf file")
    ref = models.from_pretrained(model_dir, device=device)
    cand = models.from_pretrained(gguf_path, device=device)
    if type(ref) is not type(cand):
        raise VerifyError(f"{gguf_path} holds a {type(cand).__name__}, {model_dir} a {type(ref).__name__}")
    ids, source = fixed_tokens(model_dir, gguf_path, ref.config.vocab_size, seed)
    names = {qn: (qn or ROOT) for qn, _ in ref.named_modules()}
    cand_names = {qn for qn, _ in cand.named_modules()}
    common = {qn: b for qn, b in names.items() if qn in cand_names}
    dev = str(engine.device.parse(device)) if device is not None else str(engine.default_device())
    with scratch(workdir) as wd:
        r = capture_engine(ref, [engine.tensor(ids, device=dev)], {}, common, wd / "reference.safetensors")
        c = capture_engine(cand, [engine.tensor(ids, device=dev)], {}, common, wd / "candidate.safetensors")
        inf = [("*", 0.0, math.inf)]  # reported, not judged (atol only: rtol * |ref| would give inf * 0)
        results = compare_captures(c.path, r.path, r.order, Tolerance("float32", inf + list(tol or [])))
        from engine.io.safetensors import safe_open
        with safe_open(r.path) as fr, safe_open(c.path) as fc:
            ref_logits, cand_logits = fr.get_numpy(ROOT), fc.get_numpy(ROOT)
    for x in results:
        x.passed = x.passed and math.isfinite(x.max_abs)
    rep = VerifyReport(f"{gguf_path.name} vs {model_dir.name}", "float32", dev, results,
                       reference=f"unquantised {model_dir.name} (engine, float32)", route="hand",
                       candidate=f"quantised {gguf_path.name}")
    m = lm_metrics(cand_logits, ref_logits)
    rep.top1_agreement, rep.top5_overlap, rep.kl = m["top1_agreement"], m["top5_overlap"], m["kl"]
    rep.perplexity = {"reference": perplexity(ref_logits, ids), "candidate": perplexity(cand_logits, ids),
                      "tokens": int(ids.shape[1]), "text": source}
    bad = [x.name for x in results if not x.passed]
    rep.first_divergence = bad[0] if bad else None
    rep.max_kl = max_kl
    if max_kl is not None and not rep.kl <= max_kl:
        rep.note = f"KL(reference || quantised) {rep.kl:.4g} exceeds --max-kl {max_kl:g}"
    return rep
