"""`taper verify MODEL`: run a reference implementation and a candidate on identical seeded inputs and
report per-layer numerical errors, the first divergence and (for language models) logit agreement.

MODEL is a Hugging Face model directory (config.json + model.safetensors), an engine preset
(`llama:tiny`) or `module:factory` (also `file.py:factory`) returning a torch.nn.Module, or (module,
inputs). Factories without inputs take `--input SHAPE[:DTYPE[:HIGH]]`, e.g. `--input 2,3,32,32` or
`--input 2,16:int64:100`.

The default, `--reference torch --candidate engine`, uses the engine's hand-written model where one
exists (HF model types in engine/models, module trees that map class by class) and compares module
by module; otherwise it ports the model through torch.export and compares every graph node (or those
`--nodes GLOB` picks), naming the ATen op, the nn.Module path and the source line of the first
divergence. `--route hand|export` forces one. Any other pair (`--candidate torch-compile`,
`--candidate onnxruntime`, `--reference onnxruntime --candidate engine`) goes through impls: outputs,
plus every shared module's output where both implementations can tap (the report says when not).

    taper verify models/tiny-llama --dtype bfloat16 --json parity.json --html parity.html
    taper verify nets.py:make_cnn --input 2,3,32,32                 # any exportable model, no engine code
    taper verify llama:tiny --candidate onnxruntime                 # validate an ONNX export the same way
    taper verify models/tiny-llama --save-golden golden/            # keep the reference
    taper verify models/tiny-llama --golden golden/                 # later, without torch
    taper verify models/tiny-llama --candidate-gguf tiny.q4_0.gguf  # the cost of quantising (--max-kl)
    taper verify whisper-tiny/ --audio speech.wav                   # Whisper: log-mel of the audio + decoder ids
    taper verify encodec:encodec_48khz --markdown enc.md            # EnCodec: codes and every conv/LSTM layer

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


def add_arguments(parser) -> None:
    from taper.commands.port import input_arg
    parser.add_argument("model", help="a HF model directory, a preset (llama:tiny), or module:factory")
    parser.add_argument("--reference", default="torch", help="the reference implementation (default torch)")
    parser.add_argument("--candidate", default="engine", help="the implementation under test (default engine; "
                                                               "torch-compile, onnxruntime, ... see `taper impls`)")
    parser.add_argument("--route", choices=("auto", "hand", "export"), default="auto",
                        help="engine candidate: hand-written model, torch.export program, or auto (default)")
    parser.add_argument("--nodes", action="append", default=[], metavar="GLOB",
                        help="exported route: compare only nodes whose name, ATen op or module path matches")
    parser.add_argument("--dtype", choices=DTYPES, help="dtype under test (default: the torch model's)")
    parser.add_argument("--device", help="engine device (default: ENGINE_DEVICE or cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    parser.add_argument("--batch", type=int, default=2, help="LLM inputs: batch size (default 2)")
    parser.add_argument("--seq-len", type=int, default=16, help="LLM inputs: sequence length (default 16)")
    parser.add_argument("--audio", metavar="WAV", help="Whisper and EnCodec: inputs from this audio (resampled to the "
                                                        "model's rate) instead of a seeded signal")
    parser.add_argument("--input", type=input_arg, action="append", default=[], metavar="SHAPE[:DTYPE[:HIGH]]",
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
    parser.add_argument("--candidate-gguf", metavar="FILE", help="a quantised GGUF of MODEL (a model directory): "
                        "per-layer errors, logit top-1/KL and perplexity on a fixed text against MODEL")
    parser.add_argument("--max-kl", type=float, metavar="KL", help="with --candidate-gguf: fail above this KL")


def _to_numpy(inputs):
    from migration.port import to_numpy
    return [to_numpy(x) if hasattr(x, "detach") else x for x in inputs]


def _verify_reference(src, given, args, common, hand):
    """A model type whose torch reference is not transformers (sources.TORCH_REFERENCES: ultralytics'
    YOLOv8): the reference built from the config, the engine model over the same weights (a
    directory's own, else the reference's random init), compared layer by layer on a seeded input
    (--input, default (batch, 3, 64, 64) in [0, 1))."""
    import numpy as np
    import torch

    from engine import models
    from engine.nn.varbuilder import VarBuilder
    from impls import sources
    from migration.verify import verify
    torch.manual_seed(args.seed)
    tm = sources.torch_reference(src)
    cls = models.model_class(src.model_type)
    if src.kind == "dir":
        em = cls.from_pretrained(src.path)
        tm.load_state_dict({k: torch.from_numpy(v.float().numpy()) for k, v in em.state_dict().items()}, strict=False)
    else:
        vb = VarBuilder.from_tensors({k: v.detach().float().numpy() for k, v in tm.state_dict().items()})
        vb.ignore(*getattr(cls, "IGNORED_KEYS", ()))
        with vb.collect():
            em = cls(cls.Config.from_dict(src.config), vb)
    inputs = given or [np.random.default_rng(args.seed).random((args.batch, 3, 64, 64), dtype=np.float32)]
    return verify(tm, em, inputs, name=str(src), dtype=args.dtype, device=args.device, **common, **hand)


def _verify(args):
    from impls import sources
    from migration.export import example_inputs
    from migration.port import load_factory, plan
    from migration.verify import verify_golden, verify_hf, verify_module
    from migration.verify_impls import build_reference, verify_impls
    common = dict(tol=args.tol, tol_scale=args.tol_scale, workdir=args.workdir)
    target = args.model
    try:
        src = sources.parse(target)
    except sources.SourceError as e:
        raise _Usage(str(e)) from None
    if args.candidate_gguf:
        if src.kind != "dir":
            raise _Usage("--candidate-gguf compares a GGUF with the model directory it was quantised from")
        from migration.verify_quant import verify_quantized
        return verify_quantized(target, args.candidate_gguf, tol=args.tol, max_kl=args.max_kl, seed=args.seed,
                                device=args.device, workdir=args.workdir)
    if args.max_kl is not None:
        raise _Usage("--max-kl applies to --candidate-gguf")
    given = example_inputs(args.input, args.seed) if args.input else None
    if args.audio is not None:
        from migration.module_map import HF_MODELS
        spec = HF_MODELS.get(src.model_type)
        if spec is None or spec.inputs == "ids" or src.kind not in ("dir", "preset"):
            raise _Usage(f"--audio applies to Whisper and EnCodec models (a directory or preset), not {target}")
        if not Path(args.audio).is_file():
            raise _Usage(f"--audio {args.audio}: no such file")
    if args.golden:
        if args.save_golden:
            raise _Usage("--golden and --save-golden exclude each other")
        try:
            return verify_golden(_hand_engine_model(src), args.golden, device=args.device,
                                 confirm=not args.no_confirm, **common)
        except (ValueError, IndexError, KeyError) as e:  # shapes that do not fit: another model's golden
            raise _Usage(_golden_misfit(args.golden, target, e)) from e
    if (args.reference, args.candidate) != ("torch", "engine") or src.model_type in sources.DIFFUSERS:
        # diffusers components (no LM logits, no HF port rules) go through impls: forward outputs + taps
        if args.save_golden or args.nodes:
            raise _Usage("--save-golden and --nodes apply to --reference torch --candidate engine only")
        return verify_impls(src, reference=args.reference, candidate=args.candidate, inputs=given,
                            dtype=args.dtype or "float32", device=args.device or "cpu", seed=args.seed,
                            batch=args.batch, seq_len=args.seq_len, route=args.route, **common)
    common.update(confirm=not args.no_confirm, noise_floor=not args.no_noise_floor)
    hand = dict(skip=tuple(args.skip), save_golden=args.save_golden)
    if src.kind in ("preset", "dir") and src.model_type in sources.TORCH_REFERENCES and not args.nodes:
        return _verify_reference(src, given, args, common, hand)
    if src.kind == "dir":
        from migration.module_map import HF_MODELS
        if src.model_type in HF_MODELS and args.route != "export" and not args.nodes:
            _check_shapes(target)
            return verify_hf(target, dtype=args.dtype, batch=args.batch, seq_len=args.seq_len, seed=args.seed,
                             device=args.device, audio=args.audio, **common, **hand)
        if args.route == "hand":
            raise _Usage(f"model_type {src.model_type!r} has no hand-written engine model (use --route export)")
        from migration.verify import load_hf_torch
        return _exported(args, load_hf_torch(target), None, Path(target).resolve().name, common)
    if src.kind == "preset":
        tm = build_reference(src, args.seed)[0]
        if args.route == "export" or args.nodes:
            return _exported(args, tm, None, target, common)
        return verify_hf(tm, dtype=args.dtype, batch=args.batch, seq_len=args.seq_len, seed=args.seed,
                         device=args.device, name=target, audio=args.audio, **common, **hand)
    tm, inputs = load_factory(target)
    inputs = given or inputs
    p = plan(tm, root=target)
    if args.route == "hand" or (args.route == "auto" and p.hand_ok and not args.nodes):
        if not p.hand_ok:
            from migration.port import UnmappedError, port
            raise UnmappedError(p.unmapped, target) if p.unmapped else _Usage(f"{target}: {_no_twin(port, tm)}")
        if not inputs:
            raise _Usage(_no_inputs(target))
        return verify_module(tm, _to_numpy(inputs), dtype=args.dtype, device=args.device, name=target, **common,
                             **hand)
    return _exported(args, tm, inputs, target, common)


def _exported(args, tm, inputs, name, common):
    import numpy as np
    from migration.verify_impls import _is_lm
    from migration.verify_program import verify_exported
    if args.skip or args.save_golden:
        raise _Usage("--skip and --save-golden apply to the hand-written route (use --nodes to pick graph nodes)")
    lm = _is_lm(tm) or hasattr(getattr(tm, "config", None), "vocab_size")
    if inputs is None and lm:
        from migration.verify import lm_inputs
        inputs = lm_inputs(tm.config.vocab_size, args.batch, args.seq_len, args.seed)
    if not inputs:
        raise _Usage(_no_inputs(name))
    return verify_exported(tm, [np.asarray(x) for x in _to_numpy(inputs)], name=name, dtype=args.dtype,
                           device=args.device, nodes=args.nodes, lm=_is_lm(tm), **common)


def _no_inputs(target) -> str:
    return (f"{target} gives no inputs: pass --input SHAPE[:DTYPE[:HIGH]] (or return (module, inputs), or give the "
            "module an example_inputs attribute)")


def _no_twin(port, tm) -> str:
    try:
        port(tm)
    except Exception as e:  # noqa: BLE001  (the PortError that explains the missing twin)
        return str(e)
    return "no hand-written engine twin"


def _hand_engine_model(src):
    """The hand-written engine model, built without torch where possible (a HF dir)."""
    if src.kind == "dir":
        from migration.port import port_hf
        return port_hf(src.path).model
    if src.kind == "preset":
        raise _Usage("--golden needs the model directory or module:factory the golden was saved from")
    from migration.port import load_factory, port
    return port(load_factory(src.text)[0])


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
