"""`taper bench`: run a chosen part of the asv suites here and print every implementation side by side.

The runner (asv invocation, the fallback runner's killable workers, results files, tables) is the
`bench` package; see bench/run.py.
"""
from __future__ import annotations

import os

from bench.run import SUITES


def add_arguments(parser) -> None:
    parser.add_argument("--bench", "-b", action="append", metavar="REGEX",
                        help="asv-style regex over 'bench_ops.Matmul.time_matmul(<param reprs>)'; repeat to OR")
    parser.add_argument("--suite", action="append", metavar="NAME",
                        help=f"suite(s) to run: {', '.join(SUITES)} (default: all)")
    parser.add_argument("--impl", action="append", metavar="NAME", help="engine, torch, numpy, cupy (default: all)")
    parser.add_argument("--device", action="append", metavar="DEV", help="cpu, cuda (default: both; missing ones skip)")
    parser.add_argument("--dtype", action="append", metavar="DTYPE", help="float32, float16, bfloat16 (default: all)")
    parser.add_argument("--model", action="append", metavar="NAME", help="model parameter value(s), e.g. small")
    parser.add_argument("--quick", action="store_true", help="one timed call per benchmark (asv --quick)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes (TAPER_BENCH_QUICK=1): a smoke run, not a measurement")
    parser.add_argument("--results", default="results", metavar="DIR", help="asv results directory (default: results)")
    parser.add_argument("--machine", default=None, help="asv machine name (default: this host's name)")
    parser.add_argument("--runner", choices=["auto", "asv", "fallback"], default="auto",
                        help="auto: asv when importable in a git checkout, else the fallback runner")
    parser.add_argument("--launch-method", choices=["forkserver", "spawn"],
                        default="forkserver" if hasattr(os, "fork") else "spawn",
                        help="asv's: forkserver forks every benchmark from one process that imported the "
                             "suites once (nothing there touches a GPU); spawn starts a fresh interpreter "
                             "(and imports torch) for every parameter set, about 2 s each here")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table(s) here as Markdown")
    parser.add_argument("--no-table", action="store_true", help="run and record only")


def run(args) -> int:
    from bench.run import main
    return main(args)
