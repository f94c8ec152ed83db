"""Benchmarks run in a child process that the runner can kill.

The runner (parent) talks to one worker at a time over two pipes: a JSON request per line on the
worker's stdin, a JSON reply per line on a descriptor of its own (the benchmark's own stdout and
stderr go to a log file, so nothing a benchmark prints can break the protocol). The worker imports
only the suites module of the benchmark it is asked to run and keeps it for the next request.

The parent waits for each reply with a deadline. A benchmark that hangs (even inside one C call,
where a SIGALRM handler never runs) is killed with its whole process group when the deadline
passes; a worker that dies (SIGKILL from the OOM killer, a segfault, os._exit) is noticed at once.
Either way that one parameter set is recorded as failed with the reason, and the next request
starts a fresh worker. peakmem_ benchmarks get a fresh worker each, so that the peak RSS is theirs.

Requests: {"op": "run", "module", "bench", "index", "attrs", "cache_dir"} -> run_combo()'s dict;
{"op": "setup_cache", "module", "bench", "dir"} -> {"ok": true} or {"error": text}.
"""
from __future__ import annotations

import importlib
import json
import os
import pickle
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.discovery import ROOT

CACHE_FILE = "taper-setup-cache.pickle"


class WorkerError(RuntimeError):
    """The worker did not answer: it timed out (and was killed) or died; the message says which."""


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


class Worker:
    """Parent side: a lazily started worker process; `call(request, timeout)` -> reply dict."""

    def __init__(self, root: Path = ROOT, env: dict | None = None):
        self.env = dict(os.environ if env is None else env)
        paths = dict.fromkeys([str(ROOT), str(root), self.env.get("PYTHONPATH")])  # bench, then the suites
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        self.proc = None
        self.calls = 0

    def _start(self):
        self._log = tempfile.TemporaryFile()
        rfd, wfd = os.pipe()
        code = f"import sys; from bench.worker import serve; serve({wfd})"
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=self.env, pass_fds=(wfd,),
                                     start_new_session=True)
        os.close(wfd)
        self._replies = os.fdopen(rfd, "rb", buffering=0)
        self._buf = b""
        self.calls = 0

    def call(self, request: dict, timeout: float, start_timeout: float = 600.0) -> dict:
        """Send `request`; the reply. The worker first says it has started (its imports done, within
        `start_timeout`), then has `timeout` seconds to reply; WorkerError when it does not."""
        if self.proc is None:
            self._start()
        self.calls += 1
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            pass  # it died; the read below says how
        started = self._read(start_timeout, "importing the benchmark")
        assert started == {"started": True}, started
        return self._read(timeout, "running the benchmark")

    def _read(self, timeout: float, doing: str) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise WorkerError(f"timed out after {timeout:g} s {doing} (the process was killed)")
            ready, _, _ = select.select([self._replies], [], [], min(left, 1.0))
            if ready:
                chunk = self._replies.read(1 << 16)
                if not chunk:
                    rc = self.proc.wait()
                    tail = self.output_tail()
                    self.close()
                    how = f"was killed by {_signal_name(rc)}" if rc < 0 else f"ended with exit code {rc}"
                    hint = " (out of memory?)" if rc == -signal.SIGKILL else ""
                    raise WorkerError(f"the benchmark process {how}{hint} while {doing}"
                                      + (f"; its last output: {tail}" if tail else ""))
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def output_tail(self, n: int = 600) -> str:
        try:
            self._log.seek(0, os.SEEK_END)
            size = self._log.tell()
            self._log.seek(max(0, size - n))
            return self._log.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError, AttributeError):
            return ""

    def kill(self):
        """SIGKILL the worker and everything it started (its own process group)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        self.close()

    def close(self):
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._replies.close()
        self._log.close()
        self.proc = None


# ---- the worker process ----------------------------------------------------------------------------------
def _find(module: str, name: str, cache: dict):
    from bench.discovery import load_module
    if module not in cache:
        cache[module] = {b.name: b for b in load_module(module)}
    return cache[module][name]


def _setup_cache(bench, directory: str) -> dict:
    """asv's setup_cache: run once in its own directory, the value pickled there for every run."""
    cwd = os.getcwd()
    os.chdir(directory)
    try:
        obj = bench.klass() if bench.klass else None
        value = bench.setup_cache(obj) if obj is not None else bench.setup_cache()
        with open(Path(directory) / CACHE_FILE, "wb") as f:
            pickle.dump(value, f)
    finally:
        os.chdir(cwd)
    return {"ok": True}


def _reset(module: str) -> None:
    """The suite package's own reset between parameter sets (suites.common.reset), when it has one."""
    try:
        reset = importlib.import_module(module.split(".")[0] + ".common").reset
    except (ImportError, AttributeError):
        return
    reset()


def _run(bench, req: dict, caches: dict) -> dict:
    from bench.measure import run_combo

    args = tuple(bench.combos()[req["index"]])
    cwd = os.getcwd()
    if req.get("cache_dir"):
        d = req["cache_dir"]
        if d not in caches:
            with open(Path(d) / CACHE_FILE, "rb") as f:
                caches[d] = pickle.load(f)
        os.chdir(d)
        args = (caches[d],) + args
    try:
        out = run_combo(bench, args, req["attrs"])
    finally:
        os.chdir(cwd)
    if out["skip"] is None:
        _reset(req["module"])  # what a fresh process would start from, as asv gives each parameter set
    return out


def serve(reply_fd: int) -> None:
    """The worker's loop: read a request per line on stdin, write a reply per line on reply_fd."""
    replies = os.fdopen(reply_fd, "w", buffering=1)
    modules, caches = {}, {}
    for line in sys.stdin:
        req = json.loads(line)
        try:
            try:
                bench = _find(req["module"], req["bench"], modules)
            finally:
                replies.write(json.dumps({"started": True}) + "\n")
            out = _setup_cache(bench, req["dir"]) if req["op"] == "setup_cache" else _run(bench, req, caches)
        except Exception as e:  # noqa: BLE001 - reported to the parent, which records it
            out = {"error": "".join(traceback.format_exception(type(e), e, e.__traceback__))[-2000:],
                   "result": None, "skip": None}
        replies.write(json.dumps(out, default=float) + "\n")
