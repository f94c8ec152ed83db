"""Run asv in this interpreter (`-E existing:<python>`) for one checkout and commit, safely.

One asv invocation serves `taper bench` and `taper gate`:

- the interpreter is `sys.executable` as it is (not its realpath): a virtual environment's python is
  a symlink to the base interpreter, which lacks the venv's packages (asv_runner among them);
- one environment only: `-E existing:<python>` (adding `--python=same` gives asv 0.6 a second
  environment of the same name and runs every benchmark twice);
- asv writes its JSON files in place, so it writes into a staging copy of the results directory;
  only when asv finishes are the changed files moved into the real directory, each one atomically
  (temp + rename). A killed, crashed or failed run leaves the earlier results as they were; a
  staging copy left by a killed run is removed by the next run. A results file that is not valid
  JSON is reported and left alone (asv would silently replace it);
- asv's thousands of table rows are condensed to one progress line per benchmark; the full output
  goes to <results>/taper-asv.log. asv exits 2 when benchmarks failed: the run's results are kept
  and the failed benchmarks are returned, for the caller to report (`taper bench` then exits 1).

A git ref is measured in a temporary `git worktree` of that ref, with ASV_PYTHONPATH pointing there
(asv drops PYTHONPATH) so that the benchmarks import that ref's engine rather than the installed one.
The asv.conf.json and suites are the ref's own.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from engine.io.atomic import atomic_write_bytes, pid_alive, remove_stale_temps
from reports.results import ResultsError

LOG_NAME = "taper-asv.log"
STAGING = ".taper-staging-"
_STATUS = re.compile(r"^\[\s*[\d.]+%\] ··· (?!Running |=)(\S+)\s{2,}(\S.*?)\s*$")
_TOTAL = re.compile(r"^· Running (\d+) total benchmarks")


class AsvRunError(RuntimeError):
    """asv or git failed, or a results file is damaged; the message carries the command, the file
    and asv's output."""


def _run(cmd, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)


def git(repo, *args) -> str:
    proc = _run(["git", *args], cwd=repo)
    if proc.returncode != 0:
        raise AsvRunError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def resolve_ref(repo, ref) -> str | None:
    """The commit hash a git ref names in `repo`, or None when it names none."""
    proc = _run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=repo)
    return proc.stdout.strip() if proc.returncode == 0 else None


def bench_regex(findings) -> str:
    """An asv --bench regex selecting exactly these (benchmark, params_repr) pairs."""
    parts = []
    for benchmark, params in findings:
        parts.append(re.escape(f"{benchmark}({params})" if params else benchmark))
    return "^(" + "|".join(parts) + ")$"


def known_machines() -> dict:
    path = Path.home() / ".asv-machine.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def python() -> str:
    """The interpreter asv runs the benchmarks in: this one, symlinks kept (a venv's python)."""
    return os.path.abspath(sys.executable)


def env_name() -> str:
    """asv's name for the environment of `-E existing:<python()>` (the results file suffix)."""
    return "existing-py" + python().replace(os.path.sep, "_")


def check_results_dir(results_dir) -> None:
    """Raise ResultsError naming every JSON file under `results_dir` that does not parse."""
    bad = []
    for path in sorted(Path(results_dir).rglob("*.json")):
        if any(part.startswith(STAGING) for part in path.parts):
            continue
        try:
            json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError) as e:
            bad.append(f"{path} ({e})")
    if bad:
        raise ResultsError("damaged results file(s), left as they are: " + "; ".join(bad) +
                          ". Move them aside (they may hold earlier results) and run again.")


def clean_stale(results_dir) -> list[Path]:
    """Remove what killed runs left: staging copies beside `results_dir` and temp files inside it
    (and its machine directories) whose process is gone. Returns what was removed."""
    results_dir = Path(results_dir)
    removed = []
    for p in results_dir.parent.glob(f".{results_dir.name}{STAGING}*"):
        pid = p.name.rsplit("-", 2)[-2]
        if pid.isdigit() and pid_alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    if results_dir.is_dir():
        for d in [results_dir, *(p for p in results_dir.iterdir() if p.is_dir())]:
            removed += remove_stale_temps(d)
    return removed


def publish(staging: Path, results_dir: Path) -> list[Path]:
    """Move every file of `staging` that differs from `results_dir`'s into place, one atomic rename
    each; benchmarks.json last. Returns the files written."""
    files = sorted((p for p in staging.rglob("*") if p.is_file()), key=lambda p: p.name == "benchmarks.json")
    written = []
    for src in files:
        dst = results_dir / src.relative_to(staging)
        data = src.read_bytes()
        if dst.exists() and dst.read_bytes() == data:
            continue
        atomic_write_bytes(dst, data)
        written.append(dst)
    return written


@dataclass
class AsvRun:
    """What one asv run did: its exit code, the benchmarks asv reported failed, the files written."""

    returncode: int
    failed: list = field(default_factory=list)
    written: list = field(default_factory=list)
    log: Path | None = None


class AsvRunner:
    """asv run -E existing:<this python> in checkout `root`, writing into `results_dir`.

    `machine` is the asv machine name (default: asv's, the host name); `extra_env` is added to the
    environment of asv and the benchmarks (on top of ASV_PYTHONPATH=root); `progress` is called with
    one line per finished benchmark (default: none).
    """

    def __init__(self, root, results_dir, *, machine=None, asv_config="asv.conf.json",
                 extra_env=None, quick=False, launch_method=None, progress=None):
        self.root = Path(root).resolve()
        self.results_dir = Path(results_dir).resolve()
        self.machine = machine
        self.conf_path = self.root / asv_config
        self.extra_env = dict(extra_env or {})
        self.quick, self.launch_method = quick, launch_method
        self.progress = progress or (lambda line: None)
        if not self.conf_path.exists():
            raise AsvRunError(f"{self.conf_path}: asv config not found")

    def _config(self, tmp, results_dir) -> Path:
        conf = json.loads(self.conf_path.read_text(encoding="utf-8"))
        base = self.conf_path.parent
        for key in ("repo", "benchmark_dir", "env_dir", "html_dir"):
            if key in conf:
                conf[key] = str((base / conf[key]).resolve())
        conf["results_dir"] = str(results_dir)
        # asv refuses to run when no configured branch exists (a clone on another branch, a CI
        # checkout of a detached commit); the results are recorded under --set-commit-hash anyway
        branches = [b for b in conf.get("branches", []) if resolve_ref(self.root, b)]
        conf["branches"] = branches or ["HEAD"]
        path = Path(tmp) / "asv.conf.json"
        path.write_text(json.dumps(conf), encoding="utf-8")
        return path

    def _env(self) -> dict:
        env = dict(os.environ, **self.extra_env)
        env["ASV_PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.root), env.get("ASV_PYTHONPATH")) if p)
        return env

    def ensure_machine(self) -> None:
        """Register the machine in ~/.asv-machine.json with this box's facts (os, arch, cpu,
        num_cpu, ram, as `asv machine --yes` finds them) when asv does not know it yet."""
        from asv.machine import Machine, MachineCollection

        facts = Machine.get_defaults()
        name = self.machine or facts["machine"]
        if name not in known_machines():
            MachineCollection.save(name, dict(facts, machine=name))

    def command(self, conf: Path, commit: str, bench: str | None) -> list[str]:
        cmd = [python(), "-m", "asv", "--config", str(conf), "run", "-E", f"existing:{python()}",
               "--set-commit-hash", commit, "--record-samples", "--show-stderr"]
        if self.machine:
            cmd += ["--machine", self.machine]
        if self.quick:
            cmd.append("--quick")
        if self.launch_method:
            cmd += ["--launch-method", self.launch_method]
        if bench:
            cmd += ["--bench", bench]
        return cmd

    def run(self, commit: str, bench: str | None = None) -> AsvRun:
        """Benchmark the checkout, recording the results under `commit`."""
        check_results_dir(self.results_dir)
        clean_stale(self.results_dir)
        self.results_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.results_dir.name}{STAGING}{os.getpid()}-",
                                        dir=self.results_dir.parent))
        log = ""
        try:
            if self.results_dir.exists():
                shutil.copytree(self.results_dir, staging, dirs_exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="taper-asv-") as tmp:
                cmd = self.command(self._config(tmp, staging), commit, bench)
                rc, failed, log = self._stream(cmd)
            # asv exits 2 when some benchmark failed; those failures are results too
            if rc not in (0, 2) or not (staging / "benchmarks.json").exists():
                raise AsvRunError(f"asv run failed ({rc}) in {self.root}; earlier results are untouched; "
                              f"full output in {self.results_dir / LOG_NAME}:\n{log[-4000:]}")
            (staging / LOG_NAME).unlink(missing_ok=True)
            self.results_dir.mkdir(parents=True, exist_ok=True)
            written = publish(staging, self.results_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if log:
                self.results_dir.mkdir(parents=True, exist_ok=True)
                (self.results_dir / LOG_NAME).write_text(log, encoding="utf-8")
        return AsvRun(rc, failed, written, self.results_dir / LOG_NAME)

    def _stream(self, cmd) -> tuple[int, list, str]:
        """Run asv, passing one line per finished benchmark to `progress`; (rc, failed, output)."""
        lines, failed, total, done = [], [], "?", 0
        proc = subprocess.Popen(cmd, cwd=self.root, env=self._env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1)
        try:
            for line in proc.stdout:
                lines.append(line)
                m = _STATUS.match(line.rstrip("\n"))
                t = _TOTAL.match(line)
                if t:
                    total = t.group(1)
                elif m:
                    name, status = m.groups()
                    if "failed" in status:  # "failed", or "3/5 failed" for some parameter sets
                        failed.append(name)
                    done += 1
                    self.progress(f"[{done:4d}/{total}] {name}  {status}")
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return rc, failed, "".join(lines)


@contextlib.contextmanager
def worktree(repo, ref):
    """Check out `ref` of `repo` into a temporary git worktree; yields (path, commit hash)."""
    commit = resolve_ref(repo, ref)
    if commit is None:
        raise AsvRunError(f"{ref!r} is neither a results directory nor a git ref of {repo}")
    tmp = Path(tempfile.mkdtemp(prefix="taper-gate-"))
    path = tmp / "src"
    git(repo, "worktree", "add", "--detach", str(path), commit)
    try:
        yield path, commit
    finally:
        _run(["git", "worktree", "remove", "--force", str(path)], cwd=repo)
        shutil.rmtree(tmp, ignore_errors=True)
        _run(["git", "worktree", "prune"], cwd=repo)
