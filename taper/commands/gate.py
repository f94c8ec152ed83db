"""`taper gate BASE HEAD`: fail on a significant performance regression or numerical drift.

BASE and HEAD are asv results directories, or git refs: a ref is checked out into a temporary git
worktree and benchmarked there with `asv run -E existing:<python>` (this interpreter, with the
ref's own suites and engine on ASV_PYTHONPATH). Suspect regressions are re-measured before failing,
BASE and HEAD interleaved (A/B/A/B) by the same harness: by --rerun-cmd when given, else by asv in
a temporary worktree of each side's commit (the commit its results were recorded under), which
--repo must hold. Thresholds come from gate.toml (see reports/gate.py).
Exit code 0: pass; 1: regression, broken or missing benchmark, nothing compared, or drift; 2: usage
error.
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
                        help="shell command measuring one side of the confirming re-run; it runs "
                             "once per side and round (BASE, HEAD, BASE, HEAD, ...) with {side} "
                             "(base or head), {commit} (that side's commit), {bench} (a "
                             "shell-quoted asv --bench regex of the suspects) and {results} (an "
                             "absolute, fresh, empty directory it must write asv results into; "
                             "the gate checks that it did)")
    parser.add_argument("--no-rerun", action="store_true",
                        help="fail on suspects without re-measuring them")
    parser.add_argument("--markdown", metavar="FILE", help="also write the summary here")
    parser.add_argument("--verify", nargs=2, metavar=("BASE_JSON", "HEAD_JSON"),
                        help="`taper verify` parity JSON files (or directories of them) to check "
                             "for numerical drift")
    parser.add_argument("--bench", metavar="REGEX", help="asv --bench filter for git-ref runs")
    parser.add_argument("--machine", help="asv machine name for runs here (default: asv's)")
    parser.add_argument("--asv-config", default="asv.conf.json",
                        help="asv config, relative to the checkout (default: asv.conf.json)")
    parser.add_argument("--repo", default=".", help="git repository of the refs (default: .)")


def _config_path(arg) -> Path:
    if arg:
        return Path(arg)
    import reports

    local = Path("gate.toml")
    return local if local.exists() else Path(reports.__file__).parent / "gate.toml"


def _checkout_root(repo) -> str | None:
    proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=repo, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _need_checkout(repo, what: str) -> None:
    from reports.gate import GateUsageError

    if not Path(repo).is_dir() or _checkout_root(repo) is None:
        raise GateUsageError(f"{what}, and {Path(repo).resolve()} is not inside a git checkout: "
                             "run taper gate from your repository's checkout or pass --repo "
                             "PATH, or give two asv results directories (and --no-rerun outside "
                             "a checkout)")


class _Side:
    """One side of the gate: its results, and the code (commit, checkout) they measured."""

    def __init__(self, name, spec, args, stack):
        from bench.asv import AsvRunner, resolve_ref, worktree
        from reports.gate import GateUsageError
        from reports.results import load_results

        self.name, self.spec, self.root, self.commit = name, spec, None, None
        if Path(spec).is_dir():
            self.results = Path(spec)
            self.label = f"`{spec}`"
        else:
            _need_checkout(args.repo, f"{name} {spec!r} is not a results directory")
            if resolve_ref(args.repo, spec) is None:
                raise GateUsageError(f"{name} {spec!r} is neither a results directory nor a git "
                                     f"ref of {Path(args.repo).resolve()}")
            self.root, self.commit = stack.enter_context(worktree(args.repo, spec))
            self.results = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "results"
            runner = AsvRunner(self.root, self.results, machine=args.machine,
                               asv_config=args.asv_config)
            runner.ensure_machine()
            print(f"taper gate: benchmarking {spec} ({self.commit[:10]})", file=sys.stderr)
            runner.run(self.commit, args.bench)
            self.label = f"`{spec}` ({self.commit[:10]})"
        self.frame = load_results(self.results)
        if self.commit is None:
            commits = sorted({c[:10] for c in self.frame["commit"]})
            self.label += f" ({', '.join(commits[:3])}{', ...' if len(commits) > 3 else ''})"

    def commit_of(self, keys) -> str:
        """The commit the suspects were measured at on this side."""
        from reports.gate import RerunError
        from reports.results import latest

        if self.commit:
            return self.commit
        rows = latest(self.frame)
        wanted = {(b, p) for _, b, p in keys}
        hit = rows[[(b, p) in wanted for b, p in zip(rows["benchmark"], rows["params_repr"])]]
        commits = sorted(set(hit["commit"]))
        if len(commits) != 1:
            raise RerunError(f"{self.name} results hold the suspects under commits {commits}: "
                             "re-measure them one machine at a time, or pass --no-rerun")
        return commits[0]


class _Remeasure:
    """The confirming re-run's `measure(side, keys, results_dir)`: the same harness for both."""

    def __init__(self, sides, args, stack):
        self.sides, self.args, self.stack, self.checkouts = sides, args, stack, {}

    def checkout(self, side, commit) -> Path:
        from bench.asv import resolve_ref, worktree
        from reports.gate import RerunError

        if side.root is not None:
            return side.root
        if commit not in self.checkouts:
            repo = self.args.repo
            if not Path(repo).is_dir() or _checkout_root(repo) is None \
                    or resolve_ref(repo, commit) is None:
                raise RerunError(f"{side.name} results were measured at commit {commit[:10]}, "
                                 f"which {Path(repo).resolve()} does not hold: re-measuring "
                                 "needs that code; pass --repo CHECKOUT, --rerun-cmd, or "
                                 "--no-rerun")
            self.checkouts[commit] = self.stack.enter_context(worktree(repo, commit))[0]
        return self.checkouts[commit]

    def __call__(self, side_name, keys, results_dir) -> None:
        from bench.asv import AsvRunner, bench_regex
        from reports.gate import RerunError

        side = self.sides[side_name]
        regex = bench_regex([(b, p) for _, b, p in keys])
        commit = side.commit_of(keys)
        print(f"taper gate: re-measuring {len(keys)} suspects on {side.name} ({commit[:10]})",
              file=sys.stderr)
        if self.args.rerun_cmd:
            fields = {"{bench}": shlex.quote(regex), "{results}": shlex.quote(str(results_dir)),
                      "{side}": side_name, "{commit}": commit}
            cmd = self.args.rerun_cmd
            for k, v in fields.items():
                cmd = cmd.replace(k, v)
            proc = subprocess.run(cmd, shell=True, stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise RerunError(f"--rerun-cmd exited {proc.returncode}: {cmd}")
            return
        runner = AsvRunner(self.checkout(side, commit), results_dir, machine=self.args.machine,
                           asv_config=self.args.asv_config)
        runner.ensure_machine()
        runner.run(commit, regex)


def run(args) -> int:
    from bench.asv import AsvRunError
    from reports.drift import VerifyFileError, compare_verify
    from reports.gate import GateUsageError, RerunError, load_config, run_gate
    from reports.results import ResultsError

    try:
        config = load_config(_config_path(args.config))
        drift = compare_verify(*args.verify, config["drift"]) if args.verify else []
        with contextlib.ExitStack() as stack:
            base = _Side("BASE", args.base, args, stack)
            head = _Side("HEAD", args.head, args, stack)
            measure = None if args.no_rerun else _Remeasure({"base": base, "head": head}, args,
                                                            stack)
            result = run_gate(base.frame, head.frame, config, measure=measure, drift=drift,
                              labels=(f"BASE {base.label}", f"HEAD {head.label}"))
    except (GateUsageError, ResultsError, VerifyFileError, AsvRunError, RerunError) as e:
        print(f"taper gate: {e}", file=sys.stderr)
        return 2
    text = result.markdown()
    print(text)
    if args.markdown:
        from engine.io.atomic import atomic_write_text

        atomic_write_text(args.markdown, text + "\n")
    return result.exit_code
