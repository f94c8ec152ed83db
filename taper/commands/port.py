"""`taper port MODEL`: port a PyTorch model to the engine.

MODEL is a Hugging Face model directory (config.json + model.safetensors) or `module:factory` (also
`file.py:factory`) returning a torch.nn.Module, or (module, example inputs).

    taper port nets.py:make_cnn --example-input 2,3,32,32 -o cnn.program   # export an engine program
    taper port models/bert-tiny -o bert.program                             # HF dir: token ids (2, 8)
    taper port models/tiny-llama                                            # the hand-written mapping

With example inputs (`--example-input`, or a factory that returns some), `-o` or `--export` the model
goes through torch.export and is written as an engine program (program.json + weights.safetensors;
README: "Engine programs"). Without them, the hand-written route's mapping table is printed: for a
HF model type the engine implements, its state-dict rules key by key; for a module tree, each
module's engine twin and what is unmapped (`--plan` asks for the table explicitly).

Exit codes: 0 written (or everything maps), 1 unsupported ATen ops or unmapped modules (all listed),
2 bad usage, a model that cannot be loaded, or one torch.export cannot capture.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def input_arg(text: str):
    from migration.export import input_spec
    try:
        return input_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(parser) -> None:
    parser.add_argument("model", help="a HF model directory, or module:factory returning a torch.nn.Module")
    parser.add_argument("--example-input", type=input_arg, action="append", default=[],
                        metavar="SHAPE[:DTYPE[:HIGH]]", help="an example input for torch.export (repeat for several)")
    parser.add_argument("-o", "--output", metavar="DIR", help="where to write the program (default: NAME.program)")
    parser.add_argument("--export", action="store_true", help="export even when a hand-written mapping exists")
    parser.add_argument("--plan", action="store_true", help="print the hand-written route's mapping table only")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16", "float64"),
                        help="export the model in this dtype (default: its own)")
    parser.add_argument("--static", action="store_true", help="export at the example's shapes (no dynamic batch)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the example inputs (default 0)")


def _export(args, tm, inputs, name: str) -> int:
    from migration.export import example_inputs, port_program
    if args.example_input:
        inputs = example_inputs(args.example_input, args.seed)
    if not inputs:
        print(f"taper port: {args.model} gives no example inputs: pass --example-input SHAPE[:DTYPE[:HIGH]] "
              "(or return (module, inputs) from the factory)", file=sys.stderr)
        return 2
    ported = port_program(tm, inputs, name=args.model, dtype=args.dtype, dynamic=not args.static)
    out = Path(args.output or f"{name}.program")
    ported.program.save(out)
    print(ported.summary())
    print(f"wrote {out}/program.json and {out}/weights.safetensors")
    return 0


def _port(args) -> int:
    from migration.module_map import HF_MODELS
    from migration.port import format_hf, load_factory, plan, port_hf, read_config
    target = args.model
    wants_export = bool(args.example_input or args.output or args.export)
    if Path(target).is_dir():
        if args.plan or (read_config(target).get("model_type") in HF_MODELS and not wants_export):
            p = port_hf(target, build=False)
            print(format_hf(p))
            return 0 if p.keys is not None and p.keys.ok and p.error is None else 1
        import numpy as np
        from migration.verify import load_hf_torch
        ids = np.random.default_rng(args.seed).integers(0, read_config(target).get("vocab_size", 100), (2, 8))
        return _export(args, load_hf_torch(target), [ids], Path(target).resolve().name)
    if ":" not in target:
        print(f"taper port: {target!r} is neither a model directory nor module:factory", file=sys.stderr)
        return 2
    tm, inputs = load_factory(target)
    if args.plan or (inputs is None and not wants_export):
        p = plan(tm, root=target)
        print(p.format())
        return 0 if p.ok else 1
    return _export(args, tm, inputs, target.rpartition(":")[2])


def run(args) -> int:
    from migration.export import UnsupportedOpsError
    from migration.port import PortError
    try:
        return _port(args)
    except UnsupportedOpsError as e:
        print(e)
        return 1
    except (PortError, OSError, ValueError) as e:
        print(f"taper port: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        print(f"taper port: needs the missing package {e.name!r}", file=sys.stderr)
        return 2
