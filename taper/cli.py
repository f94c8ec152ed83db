"""Thin command line over engine, migration, suites and reports.

Each command lives in taper/commands/<name>.py with `add_arguments(parser)` and `run(args) -> int`.
Commands import lazily so that `taper --help` stays fast and a missing optional dependency (torch,
asv, pandas) only affects the commands that need it.

An error a command does not handle itself is printed as one line, `taper COMMAND: message`, with exit
code 2; `taper --debug COMMAND ...` shows the traceback instead (and commands that report their own
errors re-raise them under --debug).
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "demo": "build tensors on every available device and print a parity table against torch",
    "impls": "list the implementations (engine, torch, torch-compile, onnxruntime, ...) and which run here",
    "convert": "convert a PyTorch checkpoint (.pt/.pth/.bin/.ckpt, sharded) to safetensors, safely",
    "port": "port a torch model: an engine program through torch.export, or the hand-written mapping table",
    "verify": "run a reference and a candidate implementation side by side; per-layer errors, first divergence",
    "generate": "generate text with an engine language model",
    "embed": "sentence embeddings and their cosine similarities with an engine BERT (e.g. all-MiniLM-L6-v2)",
    "detect": "detect objects in an image with an engine YOLOv8 model; print them and draw the boxes",
    "txt2img": "Stable Diffusion on the engine: text embeddings to a PNG (progress bar on the denoising loop)",
    "transcribe": "speech to text (a WAV file) with the engine's Whisper",
    "codec": "EnCodec on the engine: a WAV to codes at a bandwidth and back to a WAV, with the bitrate",
    "bench": "run asv benchmarks in the current environment and print every implementation side by side",
    "report": "build Markdown and an HTML dashboard from benchmark results",
    "claims": "re-measure the published performance claims on this machine",
    "gate": "fail on a significant performance regression or numerical drift between two runs",
}


def _load(name):
    return importlib.import_module(f"taper.commands.{name}")


# an error of one of these types is the user's to fix: its message is enough
USER_ERRORS = (ValueError, LookupError, OSError, NotImplementedError, RuntimeError)


def describe(e: BaseException) -> str:
    """One line for an error: the message of a user error, the type too for anything else."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    return str(msg) if isinstance(e, USER_ERRORS) else f"{type(e).__name__}: {msg}"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="taper", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            try:
                _load(name).add_arguments(p)
            except ModuleNotFoundError as e:
                print(f"taper {name}: needs the missing package {e.name!r}", file=sys.stderr)
                return 2
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(_load(args.command).run(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"taper {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line instead of a traceback; --debug shows it
        if args.debug:
            raise
        print(f"taper {args.command}: {describe(e)}", file=sys.stderr)
        print(f"taper {args.command}: (run `taper --debug {args.command} ...` for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
