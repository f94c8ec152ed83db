"""`taper claims`: re-measure the published performance claims on this machine, engine against PyTorch.

The measurements (one child process per implementation and claim) are in bench/claims.py; the
verdict rule and the claims themselves in reports/claims.py.
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny models and few repeats (a smoke run)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="device for the load, memory and alloc claims (auto: cuda when available)")
    parser.add_argument("--workload", choices=["auto", "models", "functional"], default="auto",
                        help="decode workload: engine.models vs transformers, or the functional decoder")
    parser.add_argument("--only", action="append", metavar="CLAIM",
                        help="measure only these claims (load, memory, cpu_inference, llama7b, gpu_util, alloc)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-': stdout only)")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    parser.add_argument("--workdir", default=None, help="where the temporary checkpoints go (default: TMPDIR)")


def run(args) -> int:
    from bench.claims import main
    return main(args)
