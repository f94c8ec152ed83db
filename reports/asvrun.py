"""Run asv in the current interpreter (`-E existing:<python>`) for one checkout and commit.

asv can only measure the code that is on disk in an existing environment, so a git ref is measured
in a temporary `git worktree` of that ref, with ASV_PYTHONPATH pointing there (asv drops
PYTHONPATH) so that the benchmarks import that ref's engine rather than the installed one. The
asv.conf.json and suites are the ref's own. Results go to a directory of our choosing through a
temporary copy of the config with absolute paths.
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
from pathlib import Path


class AsvRunError(RuntimeError):
    """asv or git failed; the message carries the command and its output."""


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


class AsvRunner:
    """asv run -E existing:<this python> in checkout `root`, writing into `results_dir`.

    `machine` is the asv machine name (default: asv's, the host name); `extra_env` is added to the
    environment of asv and the benchmarks (on top of ASV_PYTHONPATH=root).
    """

    def __init__(self, root, results_dir, *, machine=None, asv_config="asv.conf.json",
                 extra_env=None):
        self.root = Path(root).resolve()
        self.results_dir = Path(results_dir).resolve()
        self.machine = machine
        self.conf_path = self.root / asv_config
        self.extra_env = dict(extra_env or {})
        if not self.conf_path.exists():
            raise AsvRunError(f"{self.conf_path}: asv config not found")

    def _config(self, tmp) -> Path:
        conf = json.loads(self.conf_path.read_text(encoding="utf-8"))
        base = self.conf_path.parent
        for key in ("repo", "benchmark_dir", "env_dir", "html_dir"):
            if key in conf:
                conf[key] = str((base / conf[key]).resolve())
        conf["results_dir"] = str(self.results_dir)
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

    def run(self, commit: str, bench: str | None = None) -> Path:
        """Benchmark the checkout, recording the results under `commit`; returns results_dir."""
        with tempfile.TemporaryDirectory(prefix="taper-asv-") as tmp:
            cmd = [sys.executable, "-m", "asv", "--config", str(self._config(tmp)), "run",
                   "-E", f"existing:{os.path.realpath(sys.executable)}",
                   "--set-commit-hash", commit, "--record-samples", "--show-stderr"]
            if self.machine:
                cmd += ["--machine", self.machine]
            if bench:
                cmd += ["--bench", bench]
            proc = _run(cmd, cwd=self.root, env=self._env())
        # asv exits 2 when some benchmark failed; those failures are results the gate reports.
        if proc.returncode not in (0, 2) or not (self.results_dir / "benchmarks.json").exists():
            raise AsvRunError(f"asv run failed ({proc.returncode}) in {self.root}:\n"
                              f"{proc.stdout[-4000:]}{proc.stderr[-4000:]}")
        return self.results_dir


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
