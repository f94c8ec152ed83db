"""Generation in every rank (what `python -m engine.distributed` and `taper generate --tp N` run).

spec (a dict, so it crosses to the ranks): "path" (a model directory) or "model_type" + "preset" (+
"overrides"); "ids" (the prompt); "tokenizer" (a directory with tokenizer.json, for streamed text);
"dtype" (a name); sampling settings as engine.generation.generate takes them; "stream": rank 0 prints
each token as it comes. Every rank returns the same tokens (the launcher's caller checks that).
"""
from __future__ import annotations

import sys


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
    show = None
    if spec.get("stream") and comm.rank == 0:
        tok = load_tokenizer(spec["tokenizer"]) if spec.get("tokenizer") else None
        streamer = TextStreamer(tok, spec["ids"]) if tok is not None else None
        if streamer is not None:
            print(streamer.prompt_text, end="", flush=True)

        def show(tokens):
            t = tokens[0]
            print(streamer.put(t) if streamer is not None else f"{t} ", end="", flush=True)
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
