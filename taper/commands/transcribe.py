"""`taper transcribe --model DIR audio.wav`: speech to text with the engine's Whisper.

    taper transcribe --model ./whisper-tiny speech.wav                  # text (the directory has tokenizer.json)
    taper transcribe --model ./whisper-tiny speech.wav --language de --task translate
    taper transcribe --model whisper:whisper-tiny speech.wav           # a preset, random weights: token ids

The WAV (PCM, any rate: resampled to 16 kHz; channels averaged) becomes log-mel features
(engine.audio), 30 s per window; each window is decoded greedily with the model's special-token
prompt (generation_config.json: language, task, <|notimestamps|>, suppressed tokens; without a language
a multilingual model detects it). Prints the text when the directory has tokenizer.json, else the new
token ids of each window, then one line of timings on stderr. --timestamps decodes timestamp tokens
(a host loop per step) window after window, each window starting at the previous one's last timestamp
pair (transformers' and openai-whisper's long-form seek), and prints "[start -> end] text" per segment.
Exit codes: 0 done, 2 bad usage (missing or unreadable audio, a model directory that is not Whisper).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", help="a PCM WAV file (any sample rate, mono or multi-channel)")
    parser.add_argument("--model", required=True,
                        help="a Whisper HF directory (config.json + safetensors [+ tokenizer.json, "
                             "generation_config.json]) or a preset whisper:NAME with random weights")
    parser.add_argument("--language", default=None, help="language code (e.g. en); default: detected")
    parser.add_argument("--task", default=None, choices=["transcribe", "translate"])
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="per 30 s window (default: as many as the decoder's positions allow, 448 less the "
                             "prompt for released Whisper models)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: ENGINE_DEVICE or cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="cast weights on load (default: as stored)")
    parser.add_argument("--timestamps", action="store_true",
                        help="decode timestamp tokens and print one '[start -> end] text' line per segment")
    parser.add_argument("--no-capture", dest="capture", action="store_const", const=False, default=None,
                        help="launch the decode step's kernels from the host instead of a captured CUDA graph")


def load(model_arg: str, dtype=None, device=None):
    """(model, GenerationSettings, tokenizer or None) for a directory or a whisper preset."""
    from engine import models
    from engine.generation import load_tokenizer
    from engine.models.whisper.generate import GenerationSettings
    from impls import sources
    source = sources.parse_of_type(model_arg, "whisper", "transcribe", "a Whisper model")
    if source.kind == "preset":
        model = models.from_preset("whisper", source.preset, dtype=dtype, device=device)
        return model, GenerationSettings.from_config(model.config), None
    model = models.from_pretrained(source.path, dtype=dtype, device=device)
    return model, GenerationSettings.from_dir(source.path, model.config), load_tokenizer(source.path)


def run(args) -> int:
    import engine
    from engine import audio
    from engine.models.whisper.generate import transcribe
    from engine.models.whisper.longform import transcribe_long

    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if not Path(args.audio).is_file():
        raise FileNotFoundError(f"audio file not found: {args.audio}")
    samples = audio.load_audio(args.audio)  # AudioError (a ValueError) names a file that is not a PCM WAV
    model, gen, tokenizer = load(args.model, getattr(engine, args.dtype) if args.dtype else None, args.device)
    def show(ids):
        if tokenizer is not None:
            return tokenizer.decode(ids, skip_special_tokens=True).strip()
        return " ".join(str(t) for t in ids)
    if args.timestamps:  # sequential windows, each seeking to its last timestamp (transformers' long-form)
        out = transcribe_long(model, samples, gen, args.language, args.task, args.max_new_tokens)
        tb = gen.timestamp_begin
        for s in out.segments:
            print(f"[{s.start:.2f} -> {s.end:.2f}] {show([t for t in s.tokens if t < tb])}")
        windows, enc, dec, steps = out.windows, out.encode_ms, out.decode_ms, len(out.tokens)
    else:
        windows = transcribe(model, samples, gen, args.language, args.task, args.max_new_tokens, args.capture)
        for w in windows:
            print(show(w.new_tokens[0]))
        enc = sum(w.encode_ms for w in windows)
        dec = sum(w.decode_ms for w in windows)
        steps = sum(w.decode_steps for w in windows)
    print(f"{len(samples) / audio.SAMPLE_RATE:.1f} s of audio in {len(windows)} window(s): encoder {enc:.0f} ms, "
          f"decoder {dec:.0f} ms ({steps / (dec / 1e3) if dec > 0 else float('nan'):.1f} steps/s)", file=sys.stderr)
    return 0
