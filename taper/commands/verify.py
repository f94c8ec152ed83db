"""`taper verify MODEL`: run the PyTorch reference and the engine port on identical seeded inputs and
report per-layer numerical errors, the first divergence and (for language models) logit agreement.

MODEL is a Hugging Face model directory (config.json + model.safetensors) or `module:factory` (also
`file.py:factory`) returning a torch.nn.Module, or (module, inputs). Factories without inputs take
`--input SHAPE[:DTYPE[:HIGH]]`, e.g. `--input 2,3,32,32` or `--input 2,16:int64:100`.

    taper verify models/tiny-llama --dtype bfloat16 --json parity.json --html parity.html
    taper verify models/tiny-llama --save-golden golden/            # keep the reference
    taper verify models/tiny-llama --golden golden/                 # later, without torch

Exit codes: 0 every layer within tolerance, 1 a numerical failure, 2 bad usage or a model or golden
directory that cannot be loaded (or a model that raises on the inputs).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DTYPES = ("float32", "float64", "float16", "bfloat16")


def _tol(text: str):
    try:
        pat, _, nums = text.rpartition("=")
        rtol, atol = (float(x) for x in nums.split(","))
        if not pat:
            raise ValueError
        return pat, rtol, atol
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GLOB=RTOL,ATOL (e.g. 'model.layers.*.mlp=1e-4,1e-5'), "
                                         f"got {text!r}") from None


def _input(text: str):
    shape, _, rest = text.partition(":")
    dtype, _, high = rest.partition(":")
    try:
        dims = tuple(int(d) for d in shape.replace("x", ",").split(",") if d)
        high = int(high) if high else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SHAPE[:DTYPE[:HIGH]] like 2,3,32,32 or 2,16:int64:100, "
                                         f"got {text!r}") from None
    if dtype and dtype not in ("float32", "float64", "float16", "bfloat16", "int64", "int32"):
        raise argparse.ArgumentTypeError(f"unsupported input dtype {dtype!r}")
    return dims, dtype or "float32", high


def add_arguments(parser) -> None:
    parser.add_argument("model", help="a HF model directory, or module:factory returning a torch.nn.Module")
    parser.add_argument("--dtype", choices=DTYPES, help="dtype under test (default: the torch model's)")
    parser.add_argument("--device", help="engine device (default: ENGINE_DEVICE or cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    parser.add_argument("--batch", type=int, default=2, help="LLM inputs: batch size (default 2)")
    parser.add_argument("--seq-len", type=int, default=16, help="LLM inputs: sequence length (default 16)")
    parser.add_argument("--input", type=_input, action="append", default=[], metavar="SHAPE[:DTYPE[:HIGH]]",
                        help="an input for a module:factory model (repeat for several positional inputs)")
    parser.add_argument("--tol", type=_tol, action="append", default=[], metavar="GLOB=RTOL,ATOL",
                        help="tolerance override for outputs or modules matching GLOB (repeatable; last wins)")
    parser.add_argument("--tol-scale", type=float, default=1.0, help="scale the per-dtype default tolerances")
    parser.add_argument("--skip", action="append", default=[], metavar="GLOB", help="modules not to compare")
    parser.add_argument("--no-confirm", action="store_true", help="do not re-run the first divergence on the "
                                                                  "reference inputs")
    parser.add_argument("--no-noise-floor", action="store_true",
                        help="float32: judge by the tolerance table only (no torch float64 run)")
    parser.add_argument("--json", metavar="FILE", help="write the JSON report")
    parser.add_argument("--markdown", metavar="FILE", help="write a Markdown report")
    parser.add_argument("--html", metavar="FILE", help="write an HTML report with the per-layer error plot")
    parser.add_argument("--plot-beside", action="store_true",
                        help="write the plot as a PNG beside the HTML file instead of embedding it")
    parser.add_argument("--save-golden", metavar="DIR", help="also save the reference outputs and inputs to DIR")
    parser.add_argument("--golden", metavar="DIR", help="compare with saved reference outputs (no torch run)")
    parser.add_argument("--only-failed", action="store_true", help="terminal table: failing outputs only")
    parser.add_argument("--max-rows", type=int, help="terminal table: at most this many rows")
    parser.add_argument("--workdir", metavar="DIR", help="keep the capture files (safetensors) here")
    parser.add_argument("--quiet", action="store_true", help="print the verdict lines only")


def _make_inputs(specs, seed: int):
    import numpy as np
    rng = np.random.default_rng(seed)
    out = []
    for dims, dtype, high in specs:
        if dtype.startswith("int"):
            out.append(rng.integers(0, high or 100, size=dims).astype(dtype))
        else:
            out.append(rng.standard_normal(dims).astype(np.float32))  # rounded to --dtype by verify
    return out


def _to_numpy(inputs):
    out = []
    for x in inputs:
        if hasattr(x, "detach"):
            from migration.port import to_numpy
            x = to_numpy(x)
        out.append(x)
    return out


def _verify(args):
    from migration.port import load_factory
    from migration.verify import verify_golden, verify_hf, verify_module
    common = dict(tol=args.tol, tol_scale=args.tol_scale, confirm=not args.no_confirm, workdir=args.workdir)
    target = args.model
    is_dir = Path(target).is_dir()
    if not is_dir and ":" not in target:
        raise _Usage(f"{target!r} is neither a model directory nor module:factory")
    if args.golden:
        if args.save_golden:
            raise _Usage("--golden and --save-golden exclude each other")
        if is_dir:  # the engine model straight from config.json + safetensors: no torch anywhere
            from migration.port import port_hf
            em = port_hf(target).model
        else:
            from migration.port import port
            tm, _ = load_factory(target)
            em = port(tm)
        try:
            return verify_golden(em, args.golden, device=args.device, **common)
        except (ValueError, IndexError, KeyError) as e:  # shapes that do not fit: another model's golden
            raise _Usage(_golden_misfit(args.golden, target, e)) from e
    common.update(skip=tuple(args.skip), noise_floor=not args.no_noise_floor, save_golden=args.save_golden)
    if is_dir:
        _check_shapes(target)
        return verify_hf(target, dtype=args.dtype, batch=args.batch, seq_len=args.seq_len, seed=args.seed,
                         device=args.device, **common)
    tm, inputs = load_factory(target)
    from migration.port import UnmappedError, plan
    p = plan(tm, root=target)
    if not p.ok:  # say what blocks the port before asking for inputs
        raise UnmappedError(p.unmapped, target)
    if args.input:
        inputs = _make_inputs(args.input, args.seed)
    if not inputs:
        raise _Usage(f"{target} gives no inputs: pass --input SHAPE[:DTYPE[:HIGH]] (or return (module, inputs), "
                     "or give the module an example_inputs attribute)")
    return verify_module(tm, _to_numpy(inputs), dtype=args.dtype, device=args.device, name=target, **common)


class _Usage(Exception):
    pass


def _golden_misfit(golden, target, error) -> str:
    """Say that a golden directory belongs to another model, when its outputs do not fit this one."""
    import json
    try:
        meta = json.loads((Path(golden) / "meta.json").read_text())
    except (OSError, ValueError):
        meta = {}
    return (f"the golden directory {golden} does not fit {target}: it was saved from model "
            f"{meta.get('model', '?')!r} ({len(meta.get('names', []))} modules), and its outputs do not have this "
            f"model's shapes ({type(error).__name__}: {error}); a golden directory only fits the model it was "
            "saved from")


def _check_shapes(target) -> None:
    """config.json against the checkpoint's shapes, before transformers loads it (it would re-initialise
    the mismatched weights, print a table and suggest `ignore_mismatched_sizes`, a from_pretrained flag)."""
    from migration.port import port_hf
    keys = port_hf(target, build=False).keys
    bad = getattr(keys, "shape_mismatch", None)
    if bad:
        key, have, want = bad[0]
        raise _Usage(f"{target}: config.json does not match the checkpoint: {len(bad)} weight shape(s) differ, e.g. "
                     f"{key}: checkpoint {tuple(have)} vs config {tuple(want)}; was the checkpoint saved with another "
                     f"config? (`taper port {target}` lists them all)")


def run(args) -> int:
    from migration.port import PortError
    from migration.verify import VerifyError
    try:
        rep = _verify(args)
    except _Usage as e:
        print(f"taper verify: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        print(f"taper verify: needs the missing package {e.name!r}", file=sys.stderr)
        return 2
    except (PortError, VerifyError, OSError, ValueError, KeyError) as e:
        if getattr(args, "debug", False):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"taper verify: {msg}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001  (e.g. a StateDictError while loading: a load error)
        if getattr(args, "debug", False):
            raise
        print(f"taper verify: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if args.quiet:
        from migration.report import summary_lines
        print("\n".join(summary_lines(rep)))
    else:
        print(rep.table(only_failed=args.only_failed, max_rows=args.max_rows))
    try:
        if args.json:
            rep.write_json(args.json)
        if args.markdown:
            Path(args.markdown).write_text(rep.markdown())
        if args.html:
            plot = Path(args.html).with_suffix(".png") if args.plot_beside else None
            Path(args.html).write_text(rep.html(plot))
    except OSError as e:
        print(f"taper verify: cannot write a report: {e}", file=sys.stderr)
        return 2
    return 0 if rep.passed else 1
