"""Generation in every rank (what `python -m engine.distributed` and `taper generate --tp N` run).

spec (a dict, so it crosses to the ranks): "path" (a model directory) or "model_type" + "preset" (+
"overrides"); "ids" (the prompt); "tokenizer" (a directory with tokenizer.json, for streamed text);
"dtype" (a name); sampling settings as engine.generation.generate takes them; "stream": rank 0 prints
each token as it comes. Every rank returns the same tokens (the launcher's caller checks that).
"""
from __future__ import annotations

import sys
from pathlib import Path


def load(spec: dict, comm):
    """This rank's model for spec."""
    import engine
    from engine.distributed.shard import from_pretrained, from_preset
    dtype = getattr(engine, spec["dtype"]) if spec.get("dtype") else None
    if spec.get("path"):
        return from_pretrained(spec["path"], comm, dtype=dtype)
    return from_preset(spec["model_type"], spec["preset"], comm, dtype=dtype, seed=spec.get("weights_seed", 0),
                       **spec.get("overrides", {}))


def generate_rank(comm, spec: dict) -> dict:
    from engine.generation import TextStreamer, generate, load_tokenizer
    model = load(spec, comm)
    show = _printer(spec, load_tokenizer, TextStreamer) if spec.get("stream") and comm.rank == 0 else None
    comm.barrier()  # every rank loaded: the prefill's collectives start together
    res = generate(model, spec["ids"], max_new_tokens=spec.get("max_new_tokens", 32),
                   temperature=spec.get("temperature", 0.0), top_k=spec.get("top_k"), top_p=spec.get("top_p"),
                   repetition_penalty=spec.get("repetition_penalty", 1.0), seed=spec.get("seed"),
                   stop_token_ids=spec.get("stop_token_ids"), callback=show, capture=spec.get("capture"),
                   read_every=spec.get("read_every"))
    if show is not None:
        print(flush=True)
        sys.stdout.flush()
    weights = sum(p.nbytes for p in {id(p): p for p in model.parameters()}.values())
    return {"rank": comm.rank, "world_size": comm.world_size, "device": comm.device, "tokens": res.tokens[0],
            "stop_reason": res.stop_reasons[0], "prefill_ms": res.prefill_ms,
            "decode_tokens_per_s": res.decode_tokens_per_s, "decode_steps": res.decode_steps,
            "capture_ms": res.capture_ms, "peak_bytes": res.peak_bytes, "weight_bytes": weights}


def _printer(spec: dict, load_tokenizer, TextStreamer):
    """Rank 0's token callback: text through the tokenizer when there is one (the prompt echoed first), else ids."""
    tok = load_tokenizer(spec["tokenizer"]) if spec.get("tokenizer") else None
    streamer = TextStreamer(tok, spec["ids"]) if tok is not None else None
    if streamer is not None:
        print(streamer.prompt_text, end="", flush=True)

    def show(tokens):
        t = tokens[0]
        print(streamer.put(t) if streamer is not None else f"{t} ", end="", flush=True)
    return show


def check_agree(results: list) -> list:
    """The tokens all ranks generated (one list); RuntimeError when two ranks disagree."""
    first = results[0]["tokens"]
    for r in results[1:]:
        if r["tokens"] != first:
            i = next((i for i, (a, b) in enumerate(zip(first, r["tokens"])) if a != b), min(len(first), len(r["tokens"])))
            raise RuntimeError(f"tensor parallel ranks disagree: rank 0 and rank {r['rank']} differ at new token {i}")
    return first


def summary(results: list, prompt_len: int) -> str:
    r0 = results[0]
    return (f"tp {r0['world_size']} on {r0['device'].split(':')[0]}: prefill {r0['prefill_ms']:.1f} ms ({prompt_len} tokens), "
            f"decode {r0['decode_tokens_per_s']:.2f} tokens/s ({r0['decode_steps']} steps), peak memory per rank "
            f"{max(r['peak_bytes'] for r in results):,} bytes (weights {r0['weight_bytes']:,} bytes on rank 0), "
            f"stop: {r0['stop_reason']}")


def fixed_seed(seed):
    """One seed for every rank (sampling must draw the same token everywhere)."""
    import numpy as np
    return int(seed if seed is not None else np.random.SeedSequence().entropy % (1 << 63))


def make_spec(model: str, ids: str | None, prompt: str | None, dtype: str | None) -> dict:
    """The ranks' spec for a model directory or MODEL_TYPE:PRESET; checks the plan here, before any
    process starts (so a bad size is one clear line)."""
    from engine.generation import load_tokenizer
    spec: dict = {"dtype": dtype}
    if Path(model).exists():
        spec["path"] = str(model)
        tok = load_tokenizer(model)
        spec["tokenizer"] = str(model) if tok is not None else None
    elif ":" in model:
        mt, _, preset = model.partition(":")
        spec.update(model_type=mt, preset=preset)
        tok = None
    else:
        raise ValueError(f"{model}: not a model directory, nor MODEL_TYPE:PRESET (e.g. llama:tiny)")
    if prompt is not None:
        if tok is None:
            raise ValueError(f"{model} has no tokenizer.json; pass --ids instead of --prompt")
        enc = tok.encode(prompt)
        spec["ids"] = [i for i, m in zip(enc.ids, enc.attention_mask) if m]
    else:
        try:
            spec["ids"] = [int(t) for t in ids.replace(" ", "").split(",") if t]
        except ValueError:
            raise ValueError(f"--ids must be comma-separated integers, got {ids!r}") from None
    if not spec["ids"]:
        raise ValueError("the prompt has no tokens")
    return spec


def generate_tp(spec: dict, tp: int, device: str, isolate: bool = False) -> list:
    """Check the plan and the prompt against the config here, then generate in tp ranks; every rank's
    result (they agree on the tokens, or RuntimeError)."""
    from engine.distributed.launch import check_world, launch
    from engine.distributed.shard import RankPlan, preset_config
    check_world(tp, device)
    if spec.get("path"):
        from engine.models import model_class, read_config
        raw = read_config(spec["path"])
        config = model_class(raw.get("model_type") or "").Config.from_dict(raw)
    else:
        config = preset_config(spec["model_type"], spec["preset"], **spec.get("overrides", {}))
    RankPlan(config, tp)
    bad = [i for i in spec["ids"] if not 0 <= i < config.vocab_size]
    if bad:
        raise ValueError(f"token id(s) {bad[:5]} outside the model's vocabulary (0 to {config.vocab_size - 1})")
    results = launch(generate_rank, tp, device, args=(spec,), isolate=isolate)
    check_agree(results)
    return results
