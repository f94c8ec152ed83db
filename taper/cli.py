"""Thin command line over engine, migration, suites and reports.

Each command lives in taper/commands/<name>.py with `add_arguments(parser)` and `run(args) -> int`.
Commands import lazily so that `taper --help` stays fast and a missing optional dependency (torch,
asv, pandas) only affects the commands that need it.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "demo": "build tensors on every available device and print a parity table against torch",
    "convert": "convert a PyTorch checkpoint (.pt/.pth/.bin/.ckpt, sharded) to safetensors, safely",
    "port": "port a torch model: an engine program through torch.export, or the hand-written mapping table",
    "verify": "run a reference and a candidate implementation side by side; per-layer errors, first divergence",
    "generate": "generate text with an engine language model",
    "bench": "run asv benchmarks in the current environment and print engine vs torch",
    "report": "build Markdown and an HTML dashboard from benchmark results",
    "claims": "re-measure the published performance claims on this machine",
    "gate": "fail on a significant performance regression or numerical drift between two runs",
}


def _load(name):
    return importlib.import_module(f"taper.commands.{name}")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="taper", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv and not argv[0].startswith("-") else None
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
    return int(_load(args.command).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
