"""`taper generate --model DIR --prompt TEXT`: generate with an engine language model, streaming.

    taper generate --model ./TinyLlama-1.1B --prompt "The capital of France is" --max-new-tokens 32
    taper generate --model ./tiny-random --ids 1,2,3 --temperature 0.8 --top-p 0.9 --seed 0
    taper generate --model llama:tinyllama-1.1b --ids 1,2,3        # random weights, for timing
    taper generate --model SmolLM2-135M-Instruct.Q4_1.gguf --prompt "The capital of France is"
    taper generate --model SmolLM2-135M-Instruct.Q4_1.gguf --chat --prompt "What is the capital of France?"
    taper generate --model SmolLM2-135M-Instruct.Q4_1.gguf --chat --interactive     # a conversation on stdin

Tokens are printed as they come (text when the directory has tokenizer.json, else ids), then one
line with prefill ms, decode tokens/s and peak memory (engine.memory_stats()). On CUDA each decode
step replays a captured CUDA graph (--no-capture launches the same kernels from the host). Sampling settings are
checked as transformers checks them (engine.generation.validate_sampling); prompt ids must lie in the
model's vocabulary; a tokenizer's padding is never fed to the model. --chat wraps the prompt as a user message (and
--system's text as a system message) in the model's own chat template (engine.chat: a GGUF's
tokenizer.chat_template, a directory's chat_template.jinja or tokenizer_config.json), as transformers'
apply_chat_template does, and prints only the answer; --interactive then reads further user messages from standard
input, a line each, and answers each with the whole conversation (the stats line then goes to standard error).
Exit codes: 0 done, 2 bad usage, an unreadable model or an unusable device.
"""
from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="a HF model directory (config.json + safetensors), a .gguf file, or a preset MODEL_TYPE:NAME "
                             "with random weights (e.g. llama:tiny), as every taper command spells it")
    src = parser.add_mutually_exclusive_group()  # one of them, except with --chat --interactive
    src.add_argument("--prompt", help="prompt text (needs tokenizer.json in the model directory, or a .gguf file)")
    src.add_argument("--ids", help="prompt token ids, comma-separated (for tokenizer-less directories)")
    parser.add_argument("--chat", action="store_true",
                        help="wrap --prompt as a user message in the model's chat template (instruct models)")
    parser.add_argument("--system", default=None, help="with --chat: a system message before the prompt")
    parser.add_argument("--interactive", action="store_true",
                        help="with --chat: then read further user messages from standard input, a line each (an "
                             "empty line or end of input ends it), each answered with the whole conversation")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop-ids", default=None,
                        help="comma-separated stop token ids (default: the config's eos_token_id; '' for none)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: ENGINE_DEVICE or cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="cast weights on load (default: as stored)")
    parser.add_argument("--no-capture", dest="capture", action="store_const", const=False, default=None,
                        help="launch the decode step's kernels from the host instead of replaying a captured "
                             "CUDA graph (for debugging; the tokens are the same)")
    parser.add_argument("--read-every", type=int, default=None, metavar="N",
                        help="read tokens from the device every N steps (default 1: stream each one)")
    parser.add_argument("--quant-layout", choices=["kept", "per-tile"], default=None,
                        help="quantized weights on the CPU: keep each block array's decode layout (float32 block "
                             "scales, block-major quants) beside the file's bytes, made once (kept: the faster; "
                             "about 1.2-1.5x the file's bytes more), or make it per tile at every product "
                             "(per-tile: no memory beyond the file, the same numbers). Default: kept, or "
                             "TAPER_QSCALES=0's per-tile")
    parser.add_argument("--quant-dot", choices=["int8", "float"], default=None,
                        help="quantized weights on CUDA: x quantised to int8 per 32 for integer dot products (int8, "
                             "as llama.cpp's mmvq: the faster; logits move by x's quantisation, ~1%% of their range), "
                             "or the dequantise-then-multiply sums within fp32 rounding (float). Default: int8, or "
                             "TAPER_QUANT_DOT")
    parser.add_argument("--tp", type=int, default=1, metavar="N",
                        help="tensor parallel over N processes (one GPU each with --device cuda; rank 0 prints); "
                             "engine.distributed")


def _ints(text: str, what: str) -> list:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from None


def _prompt_ids(tokenizer, text: str, add_special_tokens: bool = True) -> list:
    """The prompt's token ids without padding: a tokenizer.json may pad every encoding to a fixed
    length (its "padding" section); those positions have attention_mask 0 and are not fed. A chat
    template's text carries its special tokens itself (add_special_tokens False)."""
    enc = tokenizer.encode(text, add_special_tokens=add_special_tokens)
    return [i for i, m in zip(enc.ids, enc.attention_mask) if m]


def _check_ids(ids: list, model, what: str) -> None:
    vocab = getattr(model.config, "vocab_size", None)
    bad = [i for i in ids if i < 0 or (vocab is not None and i >= vocab)]
    if bad:
        raise ValueError(f"{what}: token id(s) {bad[:5]} outside the model's vocabulary (0 to {vocab - 1})"
                         if vocab is not None else f"{what}: negative token id(s) {bad[:5]}")
    if not ids:
        raise ValueError(f"{what}: the prompt has no tokens")


def run_tp(args) -> int:
    """--tp N: the model split over N ranks (engine.distributed); rank 0 streams, then one stats line."""
    import engine
    from engine.distributed import run as dist
    from engine.generation import validate_sampling
    try:
        validate_sampling(args.temperature, args.top_k, args.top_p, args.repetition_penalty)
        if args.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
        if args.chat or args.system is not None or args.interactive:
            raise ValueError("--chat, --system and --interactive run on one process; leave out --tp")
        if args.prompt is None and args.ids is None:
            raise ValueError("one of --prompt or --ids is required")
        spec = dist.make_spec(args.model.removeprefix("preset:"), args.ids, args.prompt, args.dtype)
        spec.update(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=dist.fixed_seed(args.seed),
                    stop_token_ids=_ints(args.stop_ids, "--stop-ids") if args.stop_ids is not None else None,
                    capture=args.capture, read_every=args.read_every, stream=True)
        results = dist.generate_tp(spec, args.tp, args.device or engine.default_device().type)
    except (OSError, ValueError, KeyError, NotImplementedError, RuntimeError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"taper generate: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    print(dist.summary(results, len(spec["ids"])))
    return 0


def run(args) -> int:
    if getattr(args, "tp", 1) != 1:
        return run_tp(args)
    import engine
    from engine import models
    from engine.generation import load_tokenizer, validate_sampling
    from impls import sources

    try:
        validate_sampling(args.temperature, args.top_k, args.top_p, args.repetition_penalty)
        if args.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
        if (args.system is not None or args.interactive) and not args.chat:
            raise ValueError("--system and --interactive need --chat")
        if args.chat and args.ids is not None:
            raise ValueError("--chat takes text (--prompt), not --ids")
        if args.chat and args.prompt is None and not args.interactive:
            raise ValueError("--chat needs --prompt (the text of the user's message), or --interactive")
        if args.prompt is None and args.ids is None and not (args.chat and args.interactive):
            raise ValueError("one of --prompt or --ids is required (or --chat --interactive)")
        dtype = getattr(engine, args.dtype) if args.dtype else None
        if getattr(args, "quant_layout", None) is not None:
            from engine.backends import numpy_quant
            numpy_quant.QSCALES["enabled"] = args.quant_layout == "kept"
        if getattr(args, "quant_dot", None) is not None:  # read when cupy_quant is imported (a CUDA device's first use)
            os.environ["TAPER_QUANT_DOT"] = args.quant_dot
            if "engine.backends.cupy_quant" in sys.modules:
                sys.modules["engine.backends.cupy_quant"].QUANT_DOT["route"] = args.quant_dot
        source = sources.parse(args.model.removeprefix("preset:"))  # the older spelling still works
        if source.kind == "factory":
            raise ValueError(f"{args.model}: not a model directory or a preset MODEL_TYPE:NAME (model types: "
                             f"{', '.join(models.REGISTRY)}); a torch module:factory ports first (taper port)")
        if source.model_type == "whisper":
            raise ValueError(f"{args.model} is a Whisper model (speech to text): use `taper transcribe`")
        if source.kind == "preset":
            model = models.from_preset(source.model_type, source.preset, dtype=dtype, device=args.device)
            tokenizer = None
        else:
            model = models.from_pretrained(args.model, dtype=dtype, device=args.device)
            tokenizer = load_tokenizer(args.model)
        from engine.models.base import CausalLM
        if not isinstance(model, CausalLM):  # an encoder (bert: taper embed) has no decode loop
            mt = getattr(model.config, "model_type", None)
            if mt is None:  # a diffusers component (taper txt2img runs those)
                raise ValueError(f"{args.model} is a {type(model).__name__}, not a language model")
            raise ValueError(f"{args.model}: model_type {mt!r} is an encoder, not a language "
                             "model; taper generate needs a causal LM")
        where = "tokenizer.ggml.* metadata" if source.kind == "gguf" else "tokenizer.json"
        no_tok = f"{args.model} has no tokenizer ({where})"
        messages, template = [], None
        if args.chat:
            from engine.chat import chat_template
            if tokenizer is None:
                raise ValueError(f"{no_tok}; --chat needs one")
            template = chat_template(args.model)
            messages = [{"role": "system", "content": args.system}] if args.system is not None else []
        if args.prompt is not None:
            if tokenizer is None:
                raise ValueError(f"{no_tok}; pass --ids instead of --prompt")
            if args.chat:
                messages.append({"role": "user", "content": args.prompt})
                prompt = _prompt_ids(tokenizer, template.render(messages), add_special_tokens=False)
            else:
                prompt = _prompt_ids(tokenizer, args.prompt)
        else:
            prompt = _ints(args.ids, "--ids") if args.ids is not None else None
        if prompt is not None:
            _check_ids(prompt, model, "--ids" if args.prompt is None else "--prompt")
        stop = _ints(args.stop_ids, "--stop-ids") if args.stop_ids is not None else None
    except (OSError, ValueError, KeyError, NotImplementedError, RuntimeError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"taper generate: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2

    from engine.quant import keep_decode_layouts
    keep_decode_layouts(model)  # on the CPU, made now rather than inside the timed prefill or first step
    if prompt is not None:
        res = _turn(model, tokenizer, prompt, stop, args)
    while args.interactive:  # the conversation so far, the answer included, then the next user line
        if prompt is not None:
            messages.append({"role": "assistant", "content": _answer_text(tokenizer, res)})
        print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            break
        messages.append({"role": "user", "content": line.rstrip("\n")})
        try:
            prompt = _prompt_ids(tokenizer, template.render(messages), add_special_tokens=False)
            _check_ids(prompt, model, "the conversation")
        except ValueError as e:
            print(f"taper generate: {e}", file=sys.stderr)
            return 2
        res = _turn(model, tokenizer, prompt, stop, args)
    return 0


def _answer_text(tokenizer, res) -> str:
    """An answer's text for the conversation: its tokens without the stop token that ended it."""
    ids = [int(t) for t in res.tokens[0]]
    if res.stop_reasons[0] == "stop_token" and ids:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=True)


def _turn(model, tokenizer, prompt, stop, args):
    """Generate from prompt ids, streaming (a plain prompt echoed first; a chat answer alone), then the stats
    line; the GenerationResult."""
    import engine
    from engine.backends.numpy_quant import kept_layout_bytes
    from engine.generation import TextStreamer, generate
    streamer = TextStreamer(tokenizer, prompt) if tokenizer is not None else None
    if streamer is not None and not args.chat:  # echo the prompt as text, then stream the continuation
        print(streamer.prompt_text, end="", flush=True)

    def show(tokens):
        t = tokens[0]
        print(streamer.put(t) if streamer is not None else f"{t} ", end="", flush=True)

    res = generate(model, prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                   seed=args.seed, stop_token_ids=stop, callback=show, capture=args.capture,
                   read_every=args.read_every)
    stats = engine.memory_stats(model.device)
    params = list({id(p): p for p in model.parameters()}.values())
    weights = sum(p.nbytes for p in params)
    layout = sum(kept_layout_bytes(p.data.array) for p in params if getattr(p, "is_quantized", False))
    kept = (f" + {layout:,} bytes of decode layout kept: float32 block scales, block-major quants "
            "(--quant-layout per-tile: none)") if layout else ""
    print()
    decode = (f"decode {res.decode_tokens_per_s:.2f} tokens/s ({res.decode_steps} steps" if res.decode_steps
              else "no decode step")
    if res.decode_steps and res.capture_ms > 0 and res.steady_steps:  # the first steps compile, record, capture
        decode += (f"; {res.steady_tokens_per_s:.2f} tokens/s after the first {res.decode_steps - res.steady_steps}, "
                   f"which warm up the step: kernels compiled on first use, recording, capture)")
    elif res.decode_steps:
        decode += ")"
    print(f"prefill {res.prefill_ms:.1f} ms ({len(prompt)} tokens), {decode}, "
          f"peak memory {stats['peak_bytes']:,} bytes "
          f"(engine pool; weights {weights:,} bytes{kept}), stop: {res.stop_reasons[0]}",
          file=sys.stderr if args.interactive else sys.stdout)
    return res
