"""`taper port MODEL`: the torch -> engine mapping table for a model, and what is unmapped.

MODEL is a Hugging Face model directory (config.json + model.safetensors; torch not needed) or
`module:factory` (also `file.py:factory`) returning a torch.nn.Module.

Exit codes: 0 everything maps, 1 something is unmapped (listed), 2 bad usage or a model that cannot
be loaded.
"""
from __future__ import annotations

import sys
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("model", help="a HF model directory, or module:factory returning a torch.nn.Module")


def run(args) -> int:
    from migration.port import PortError, format_hf, load_factory, plan, port_hf
    target = args.model
    try:
        if Path(target).is_dir():
            p = port_hf(target, build=False)
            print(format_hf(p))
            return 0 if p.keys is not None and p.keys.ok and p.error is None else 1
        if ":" not in target:
            print(f"taper port: {target!r} is neither a model directory nor module:factory", file=sys.stderr)
            return 2
        tm, _ = load_factory(target)
        p = plan(tm, root=target)
        print(p.format())
        return 0 if p.ok else 1
    except (PortError, OSError, ValueError) as e:
        print(f"taper port: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        print(f"taper port: needs the missing package {e.name!r}", file=sys.stderr)
        return 2
