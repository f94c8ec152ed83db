"""Real asv runs of the tiny suite, made once per test session and shared by the report, gate and
browser tests (they load this file with load_harness() so that all of them share one cache).

Each run happens in a temporary git repository holding a copy of this folder, through the asv
command line (`asv run -E existing --set-commit-hash <commit> --record-samples`), with HOME pointed
at a temporary folder so that ~/.asv-machine.json is the test's own.
"""
from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = ["asv.conf.json", "tinyengine.py", "benchmarks"]
GPU_ENV = {"card": "tiny test card (CPU run under a second machine name)", "driver": "0.0-test",
           "clocks": "sm 1000 MHz", "cpu": "test host cpu"}


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.email=tests@taper", "-c", "user.name=tests", *args],
                   cwd=repo, check=True, capture_output=True)


def make_repo(dst) -> Path:
    """A git repository with the tiny suite committed once; returns its path."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        src = HERE / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst / name)
    _git(dst, "init", "-q", "-b", "main")
    _git(dst, "add", "-A")
    _git(dst, "commit", "-qm", "tiny suite")
    return dst


def commit_slowdown(repo, slowdown: float) -> str:
    """Commit a change of the tiny engine's default slowdown; returns the new commit hash."""
    path = Path(repo) / "tinyengine.py"
    text = path.read_text().replace('"TAPER_TINY_SLOWDOWN", "1"',
                                    f'"TAPER_TINY_SLOWDOWN", "{slowdown}"')
    path.write_text(text)
    _git(repo, "commit", "-qam", f"engine {slowdown}x slower")
    return head(repo)


def head(repo) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def env(home, repo, slowdown=None) -> dict:
    e = dict(os.environ, HOME=str(home), ASV_PYTHONPATH=str(repo))
    e.pop("TAPER_TINY_SLOWDOWN", None)
    if slowdown is not None:
        e["TAPER_TINY_SLOWDOWN"] = str(slowdown)
    return e


def asv(repo, home, *args, slowdown=None, config=None):
    cmd = [sys.executable, "-m", "asv"] + (["--config", str(config)] if config else []) + list(args)
    proc = subprocess.run(cmd, cwd=repo, env=env(home, repo, slowdown), capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def register_machines(home, names):
    """Write ~/.asv-machine.json with this box's facts under the chosen machine names.

    (`asv machine --yes --machine NAME` would store the name alone: asv keeps only the values
    that differ from its defaults.)
    """
    from asv.machine import Machine

    facts = Machine.get_defaults()
    data = {name: dict(facts, machine=name) for name in names}
    (Path(home) / ".asv-machine.json").write_text(json.dumps(dict(data, version=1)))


def run(repo, home, results_dir, machine, *, slowdown=None, bench=None) -> Path:
    """`asv run -E existing` of the tiny suite into results_dir (through a config naming it)."""
    conf = json.loads((Path(repo) / "asv.conf.json").read_text())
    conf["results_dir"] = str(Path(results_dir).resolve())
    conf["repo"] = str(Path(repo).resolve())
    conf["benchmark_dir"] = str(Path(repo).resolve() / conf["benchmark_dir"])
    conf_path = Path(results_dir).resolve().parent / f"{Path(results_dir).name}.asv.conf.json"
    conf_path.write_text(json.dumps(conf))
    # forkserver: one import of the suite, a fork per parameter set (asv's default for an
    # existing environment, spawn, starts a fresh interpreter per parameter set: 5x slower here).
    args = ["run", "-E", "existing", "--machine", machine, "--set-commit-hash", head(repo),
            "--record-samples", "--launch-method", "forkserver"]
    args += ["--bench", bench] if bench else []
    asv(repo, home, *args, slowdown=slowdown, config=conf_path)
    return Path(results_dir)


@functools.lru_cache(maxsize=None)
def runs() -> dict:
    """The shared session data: repo, home and four results directories.

    base and aa: tiny-cpu, no slowdown (an A/A pair); slow: tiny-cpu with the engine 2x slower;
    gpu: a second machine name "tiny-gpu" with a taper-env.json sidecar.
    """
    root = Path(tempfile.mkdtemp(prefix="taper-asv-tiny-"))
    atexit.register(shutil.rmtree, root, True)
    home = root / "home"
    home.mkdir()
    repo = make_repo(root / "repo")
    register_machines(home, ["tiny-cpu", "tiny-gpu"])
    out = {"root": root, "home": home, "repo": repo, "commit": head(repo)}
    for name, machine, slowdown in (("base", "tiny-cpu", 1), ("aa", "tiny-cpu", 1),
                                    ("slow", "tiny-cpu", 2), ("gpu", "tiny-gpu", 1)):
        out[name] = run(repo, home, root / f"results_{name}", machine, slowdown=slowdown)
    from reports.results import write_env_sidecar

    write_env_sidecar(out["gpu"], "tiny-gpu", **GPU_ENV)
    return out
