"""`taper convert SRC DST`: a PyTorch checkpoint to safetensors, safe by default, verified bitwise.

DST is a .safetensors file, or a model directory (created when missing) that gets model.safetensors
or shards + index and the source directory's config and tokenizer files. An existing output is only
replaced with --overwrite, and then as a whole.

With --quantize q8_0|q4_0|q4_1|q4_k|q6_k|q4_k_m, SRC is a safetensors llama, qwen2, phi3 or gemma model directory
and DST a .gguf file (migration/quantize.py: norms stay F32, every matrix is quantised; q4_k_m is llama.cpp's mix).

Exit codes: 0 converted and verified, 1 the output failed verification (it is not put in place),
2 bad usage, an unreadable or refused (unsafe) source, an existing output, or a write that failed
(a full disk). Errors go to stderr; the summary goes to stdout unless --quiet.
"""
from __future__ import annotations

import argparse
import sys
import warnings


def _size(text: str) -> int:
    from migration.convert import parse_size
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from migration.convert import CASTS, UNSAFE_TIMEOUT_S

    parser.add_argument("src", help="a .pt/.pth/.bin/.ckpt file, a directory, or a pytorch_model.bin.index.json")
    parser.add_argument("dst", help="a .safetensors file, or a model directory (model.safetensors, or shards with "
                                    "--shard-size, plus the source's config and tokenizer files)")
    parser.add_argument("--dtype", choices=list(CASTS), help="cast floating tensors (fp8 kept as is)")
    parser.add_argument("--shard-size", type=_size, metavar="SIZE",
                        help="write shards of at most SIZE (e.g. 2GB, 500MB, 1GiB) plus model.safetensors.index.json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output (as a whole)")
    parser.add_argument("--unsafe-pickle", action="store_true",
                        help="unpickle a source that weights_only loading refuses, in a separate process; "
                             "only for sources you trust")
    parser.add_argument("--unsafe-timeout", type=float, default=UNSAFE_TIMEOUT_S, metavar="SECONDS",
                        help=f"kill the --unsafe-pickle process after this long (default {UNSAFE_TIMEOUT_S:g})")
    parser.add_argument("--no-verify", action="store_true", help="skip the bitwise comparison with the source")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    parser.add_argument("--quantize", metavar="TYPE",
                        help="write a GGUF file (DST.gguf) from a safetensors llama, qwen2, phi3 or gemma model "
                             "directory, matrices quantised to q8_0, q4_0, q4_1, q4_k, q6_k or q4_k_m (llama.cpp's "
                             "Q4_K/Q6_K mix)")


def run(args) -> int:
    from engine.io.safetensors import SafetensorsError
    from migration.convert import ConvertError, UnsafePickleWarning, VerificationError, convert

    if args.quantize:
        from migration.quantize import quantize_to_gguf
        try:
            report = quantize_to_gguf(args.src, args.dst, args.quantize, overwrite=args.overwrite)
        except (ConvertError, OSError) as e:
            print(f"taper convert: {e}", file=sys.stderr)
            return 2
        if not args.quiet:
            print(report)
        return 0

    def show(message, category, *rest, **kw):
        print(f"taper convert: WARNING: {message}", file=sys.stderr, flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("always", UnsafePickleWarning)
        warnings.showwarning = show
        try:
            report = convert(args.src, args.dst, dtype=args.dtype, shard_size=args.shard_size,
                             unsafe_pickle=args.unsafe_pickle, progress=not args.quiet, verify=not args.no_verify,
                             overwrite=args.overwrite, unsafe_timeout=args.unsafe_timeout)
        except VerificationError as e:
            print(f"taper convert: {e}", file=sys.stderr)
            return 1
        except (ConvertError, SafetensorsError, OSError) as e:
            print(f"taper convert: {e}", file=sys.stderr)
            return 2
    if not args.quiet:
        print(report)
    return 0
