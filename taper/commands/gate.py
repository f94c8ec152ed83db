"""`taper gate BASE HEAD`: fail on a significant performance regression or numerical drift.

BASE and HEAD are asv results directories, or git refs: a ref is checked out into a temporary git
worktree and benchmarked there with `asv run -E existing:<python>` (this interpreter, with the
ref's own suites and engine on ASV_PYTHONPATH). Suspect regressions are re-measured once before
failing: by --rerun-cmd when given, else by asv in HEAD's worktree (ref) or in this checkout, which
must then be at HEAD's commit (directory). Thresholds come from gate.toml (see reports/gate.py).
Exit code 0: pass; 1: regression, broken benchmark or drift; 2: usage error.
"""
from __future__ import annotations

import contextlib
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("base", metavar="BASE", help="results directory or git ref")
    parser.add_argument("head", metavar="HEAD", help="results directory or git ref")
    parser.add_argument("--config", default=None,
                        help="gate thresholds (default: ./gate.toml, else reports/gate.toml)")
    parser.add_argument("--rerun-cmd", metavar="CMD",
                        help="shell command re-measuring the suspects into HEAD's results; "
                             "{bench} becomes a shell-quoted asv --bench regex and {results} "
                             "HEAD's results directory")
    parser.add_argument("--no-rerun", action="store_true",
                        help="fail on suspects without re-measuring them")
    parser.add_argument("--markdown", metavar="FILE", help="also write the summary here")
    parser.add_argument("--verify", nargs=2, metavar=("BASE_JSON", "HEAD_JSON"),
                        help="`taper verify` parity JSON files (or directories of them) to check "
                             "for numerical drift")
    parser.add_argument("--bench", metavar="REGEX", help="asv --bench filter for git-ref runs")
    parser.add_argument("--machine", help="asv machine name for git-ref runs (default: asv's)")
    parser.add_argument("--asv-config", default="asv.conf.json",
                        help="asv config, relative to the checkout (default: asv.conf.json)")
    parser.add_argument("--repo", default=".", help="git repository of the refs (default: .)")


def _config_path(arg) -> Path:
    if arg:
        return Path(arg)
    import reports

    local = Path("gate.toml")
    return local if local.exists() else Path(reports.__file__).parent / "gate.toml"


class _Side:
    """One side of the gate: its results directory, and how to re-measure it."""

    def __init__(self, spec, args, stack):
        from bench.asv import AsvRunner, worktree
        from reports.results import load_results

        self.spec, self.runner, self.commit = spec, None, None
        if Path(spec).is_dir():
            self.results = Path(spec)
            self.label = f"`{spec}`"
        else:
            root, self.commit = stack.enter_context(worktree(args.repo, spec))
            self.results = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "results"
            self.runner = AsvRunner(root, self.results, machine=args.machine,
                                    asv_config=args.asv_config)
            self.runner.ensure_machine()
            print(f"taper gate: benchmarking {spec} ({self.commit[:10]})", file=sys.stderr)
            self.runner.run(self.commit, args.bench)
            self.label = f"`{spec}` ({self.commit[:10]})"
        self.frame = load_results(self.results)
        if self.commit is None:
            commits = sorted({c[:10] for c in self.frame["commit"]})
            self.label += f" ({', '.join(commits[:3])}{', ...' if len(commits) > 3 else ''})"


def _rerun_hook(head: _Side, args):
    from bench.asv import AsvRunError, AsvRunner, bench_regex, git, known_machines
    from reports.results import latest, load_results

    def rerun(suspects):
        regex = bench_regex([(b, p) for _, b, p in suspects])
        if args.rerun_cmd:
            cmd = args.rerun_cmd.replace("{bench}", shlex.quote(regex)).replace(
                "{results}", shlex.quote(str(head.results)))
            proc = subprocess.run(cmd, shell=True, stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise AsvRunError(f"--rerun-cmd exited {proc.returncode}: {cmd}")
        elif head.runner is not None:
            head.runner.run(head.commit, regex)
        else:
            newest = latest(head.frame)
            here = git(args.repo, "rev-parse", "HEAD")
            for machine in sorted({m for m, _, _ in suspects}):
                rows = newest[newest["machine"] == machine]
                commit = rows["commit"].iloc[0] if len(rows) else newest["commit"].iloc[0]
                machine = machine if len(rows) else newest["machine"].iloc[0]
                if commit != here:
                    raise AsvRunError(f"HEAD results are for commit {commit[:10]} but this "
                                      f"checkout is at {here[:10]}: a re-run would measure other "
                                      "code; check that commit out, or pass --rerun-cmd or "
                                      "--no-rerun")
                if machine not in known_machines():
                    raise AsvRunError(f"asv on this box does not know machine {machine!r} of the "
                                      "HEAD results; re-run there, or pass --rerun-cmd or "
                                      "--no-rerun")
                root = git(args.repo, "rev-parse", "--show-toplevel")
                AsvRunner(root, head.results, machine=machine,
                          asv_config=args.asv_config).run(commit, regex)
        print(f"taper gate: re-ran {len(suspects)} suspects", file=sys.stderr)
        return load_results(head.results)

    return rerun


def run(args) -> int:
    from bench.asv import AsvRunError
    from reports.drift import VerifyFileError, compare_verify
    from reports.gate import GateUsageError, load_config, run_gate
    from reports.results import ResultsError

    try:
        config = load_config(_config_path(args.config))
        drift = compare_verify(*args.verify, config["drift"]) if args.verify else []
        with contextlib.ExitStack() as stack:
            base = _Side(args.base, args, stack)
            head = _Side(args.head, args, stack)
            rerun = None if args.no_rerun else _rerun_hook(head, args)
            result = run_gate(base.frame, head.frame, config, rerun=rerun, drift=drift,
                              labels=(f"BASE {base.label}", f"HEAD {head.label}"))
    except (GateUsageError, ResultsError, VerifyFileError, AsvRunError) as e:
        print(f"taper gate: {e}", file=sys.stderr)
        return 2
    text = result.markdown()
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n", encoding="utf-8")
    return result.exit_code
