"""`taper bench`: run a chosen part of the asv suites here and print engine vs torch side by side.

With asv importable (and a git checkout), the run is asv's own, in the current interpreter::

    asv machine --yes --machine NAME          # only when ~/.asv-machine.json lacks NAME
    asv run -E existing --python=same --set-commit-hash $(git rev-parse HEAD) --record-samples \
        --bench REGEX [--quick]

through a temporary copy of asv.conf.json whose results_dir is --results. Without asv (the GPU box),
the fallback runner below discovers the same suite classes and times them itself with asv's rules
(params, setup_cache, setup/teardown re-run around every timed call, NotImplementedError in setup
is a skip, warm-up, number/repeat/rounds/sample_time/timeout, --quick = one call), and writes
asv-format benchmarks.json, machine.json and result files that reports.results loads.

Either way the card, driver and clocks are written beside machine.json (reports/envinfo.py), and
the table printed at the end comes from reports.compare: engine, torch and their ratio, in units
(above 1: the engine is better).
"""
from __future__ import annotations

import gc
import hashlib
import importlib
import inspect
import itertools
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUITES = {"ops": "bench_ops", "pool": "bench_pool", "load": "bench_load", "llm": "bench_llm",
          "models": "bench_models"}
RESULT_COLUMNS = ["result", "params", "version", "started_at", "duration", "stats_ci_99_a", "stats_ci_99_b",
                  "stats_q_25", "stats_q_75", "stats_number", "stats_repeat", "samples", "profile"]


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


# ---- selection -------------------------------------------------------------------------------------------
def selection_regex(args) -> str | None:
    """One regex for asv's --bench (matched with re.search against 'name(param reprs)')."""
    parts = []
    if not args.bench and not args.suite:
        parts.append(r"(?=bench_)")  # suites/bench_<area>.py only: other files in suites/ are scripts
    if args.suite:
        unknown = [s for s in args.suite if s not in SUITES]
        if unknown:
            raise ValueError(f"unknown suite(s) {unknown}; known: {', '.join(SUITES)}")
        parts.append(r"(?=(?:%s)\.)" % "|".join(SUITES[s] for s in args.suite))
    if args.bench:
        for r in args.bench:
            re.compile(r)
        parts.append(r"(?=.*?(?:%s))" % "|".join(f"(?:{r})" for r in args.bench))
    for values in (args.impl, args.device, args.dtype, args.model):
        if values:
            alts = "|".join(re.escape(repr(v)) for v in values)
            parts.append(r"(?=.*[( ](?:%s)[,)])" % alts)
    return "^" + "".join(parts)


def machine_name(args) -> str:
    return args.machine or platform.node() or "localhost"


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def tree_hash(root: Path) -> str:
    """A 40-hex stand-in for a commit where there is no git: sha1 over the sources that run."""
    h = hashlib.sha1()
    for top in ("engine", "suites"):
        for p in sorted((root / top).rglob("*.py")):
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def dirty(root: Path) -> bool:
    out = subprocess.run(["git", "status", "--porcelain", "--", "engine", "suites"], cwd=root,
                         capture_output=True, text=True)
    return out.returncode == 0 and bool(out.stdout.strip())


def asv_available() -> bool:
    try:
        import asv  # noqa: F401
        import asv_runner  # noqa: F401
        return True
    except ImportError:
        return False


# ---- the asv path ---------------------------------------------------------------------------------------
def run_asv(root: Path, results: Path, machine: str, commit: str, regex, quick: bool, env: dict,
            launch_method: str = "spawn") -> int:
    from reports.asvrun import known_machines

    env = dict(os.environ, **env)
    env["ASV_PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("ASV_PYTHONPATH")) if p)
    if machine not in known_machines():
        cmd = [sys.executable, "-m", "asv", "machine", "--yes", "--machine", machine]
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    conf = json.loads((root / "asv.conf.json").read_text(encoding="utf-8"))
    for key in ("repo", "benchmark_dir", "env_dir", "html_dir"):
        if key in conf:
            conf[key] = str((root / conf[key]).resolve())
    conf["results_dir"] = str(results.resolve())
    with tempfile.TemporaryDirectory(prefix="taper-bench-") as tmp:
        conf_path = Path(tmp) / "asv.conf.json"
        conf_path.write_text(json.dumps(conf), encoding="utf-8")
        cmd = [sys.executable, "-m", "asv", "--config", str(conf_path), "run", "-E", "existing", "--python=same",
               "--set-commit-hash", commit, "--machine", machine, "--record-samples", "--show-stderr",
               "--launch-method", launch_method]
        if quick:
            cmd.append("--quick")
        if regex:
            cmd += ["--bench", regex]
        print("taper bench: " + " ".join(cmd[2:]), file=sys.stderr, flush=True)
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, bufsize=1)
        for line in proc.stdout:  # asv's own progress ("[ 12.50%] ··· bench_ops...")
            sys.stderr.write(line)
            sys.stderr.flush()
        rc = proc.wait()
    # asv exits 2 when some benchmark failed; those are results too
    if rc not in (0, 2) or not (results / "benchmarks.json").exists():
        raise RuntimeError(f"asv run failed with exit code {rc}")
    return rc


# ---- the fallback runner ------------------------------------------------------------------------------------
_KINDS = [("time", re.compile(r"^(Time[A-Z_].+)|(time_.+)$")), ("track", re.compile(r"^(Track[A-Z_].+)|(track_.+)$")),
          ("peakmem", re.compile(r"^(Peakmem[A-Z_].+)|(peakmem_.+)$")), ("mem", re.compile(r"^(Mem[A-Z_].+)|(mem_.+)$")),
          ("timeraw", re.compile(r"^(Timeraw[A-Z_].+)|(timeraw_.+)$"))]
_UNITS = {"time": "seconds", "timeraw": "seconds", "peakmem": "bytes", "mem": "bytes"}


def _kind(name):
    for kind, rx in _KINDS:
        if rx.match(name):
            return kind
    return None


@dataclass
class Bench:
    """One discovered benchmark, as asv_runner would see it."""

    name: str
    kind: str
    module: object
    klass: type | None
    attr: str
    params: list = field(default_factory=list)
    param_names: list = field(default_factory=list)

    def sources(self, instance=None):
        func = getattr(instance, self.attr) if instance is not None else (
            getattr(self.klass, self.attr) if self.klass else getattr(self.module, self.attr))
        return [func] + ([instance] if instance is not None else [self.klass] if self.klass else []) + [self.module]

    def get(self, key, default=None):
        for src in self.sources():
            if hasattr(src, key):
                return getattr(src, key)
        return default

    def all_attrs(self, instance, key):
        """setup/teardown hooks from the function, instance and module (asv's _get_all_attrs)."""
        out = []
        for src in self.sources(instance):
            if hasattr(src, key):
                hook = getattr(src, key)
                if callable(hook) and hook not in out:
                    out.append(hook)
        return out

    def combos(self):
        return list(itertools.product(*self.params)) if self.params else [()]

    def param_reprs(self):
        return [[repr(v) for v in p] for p in self.params]

    def labels(self):
        if not self.params:
            return [self.name]
        return [f"{self.name}({', '.join(c)})" for c in itertools.product(*self.param_reprs())]

    @property
    def setup_cache(self):
        return getattr(self.klass, "setup_cache", None) if self.klass else getattr(self.module, "setup_cache", None)

    def code(self) -> str:
        parts = []
        for fn in [self.get_func(), getattr(self.klass, "setup", None) if self.klass else None, self.setup_cache]:
            if fn is None:
                continue
            try:
                src = textwrap.dedent(inspect.getsource(fn))
            except (OSError, TypeError):
                continue
            parts.append(src if self.klass is None else f"class {self.klass.__name__}:\n" + textwrap.indent(src, "    "))
        return "\n\n".join(parts)

    def get_func(self):
        return getattr(self.klass, self.attr) if self.klass else getattr(self.module, self.attr)

    def meta(self) -> dict:
        """The benchmarks.json entry asv would write."""
        code = self.code()
        version = self.get("version", None)
        m = {"code": code, "name": self.name, "param_names": self.param_names, "params": self.param_reprs(),
             "type": self.kind, "unit": self.get("unit", _UNITS.get(self.kind, "unit")),
             "version": str(version) if version is not None else hashlib.sha256(code.encode()).hexdigest(),
             "timeout": float(self.get("timeout", 60.0))}
        if self.kind == "time":
            m.update({"number": int(self.get("number", 0)), "repeat": self.get("repeat", 0),
                      "rounds": int(self.get("rounds", self.get("processes", 2))),
                      "min_run_count": int(self.get("min_run_count", 2)),
                      "sample_time": float(self.get("sample_time", 0.01)),
                      "warmup_time": float(self.get("warmup_time", -1))})
        if self.setup_cache is not None:
            m["setup_cache_key"] = f"{self.module.__name__.split('.', 1)[-1]}:{self.klass.__name__ if self.klass else ''}"
        return m


def _ensure_suites(tiny: bool):
    """Import (or re-import) the suites package with TAPER_BENCH_QUICK set as asked."""
    want = "1" if tiny else ""
    changed = os.environ.get("TAPER_BENCH_QUICK", "") != want
    os.environ["TAPER_BENCH_QUICK"] = want
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if changed or "suites.common" in sys.modules and sys.modules["suites.common"].QUICK != tiny:
        for name in [m for m in sys.modules if m == "suites" or m.startswith("suites.")]:
            del sys.modules[name]


def discover(tiny: bool = False):
    """All benchmarks under suites/ (as asv_runner discovers them), and per-module import errors."""
    import pkgutil

    _ensure_suites(tiny)
    pkg = importlib.import_module("suites")
    benches, errors = [], {}
    for info in pkgutil.iter_modules(pkg.__path__, "suites."):
        try:
            mod = importlib.import_module(info.name)
        except BaseException as e:  # noqa: BLE001 - a broken suite must not hide the others
            errors[info.name] = "".join(traceback.format_exception_only(type(e), e)).strip()
            continue
        short = info.name.split(".", 1)[1]
        for attr_name, obj in list(mod.__dict__.items()):
            if attr_name.startswith("_"):
                continue
            if inspect.isclass(obj) and not inspect.isabstract(obj):
                for name, member in inspect.getmembers(obj):
                    kind = _kind(name)
                    if kind and (inspect.isfunction(member) or inspect.ismethod(member)):
                        benches.append(_make(f"{short}.{obj.__name__}.{name}", kind, mod, obj, name))
            elif inspect.isfunction(obj) and _kind(attr_name):
                benches.append(_make(f"{short}.{attr_name}", _kind(attr_name), mod, None, attr_name))
    return benches, errors


def _make(name, kind, mod, klass, attr):
    b = Bench(name, kind, mod, klass, attr)
    params = b.get("params", [])
    if params and not isinstance(params[0], (list, tuple)):
        params = [params]
    b.params = [list(p) for p in params]
    names = b.get("param_names", None) or [f"param{i + 1}" for i in range(len(b.params))]
    b.param_names = list(names)
    return b


class _Timeout(Exception):
    pass


class _alarm:
    """SIGALRM-based timeout for one benchmark call (main thread on Unix only)."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.active = (hasattr(signal, "SIGALRM") and seconds and seconds > 0
                       and threading_is_main())

    def __enter__(self):
        if self.active:
            def handler(signum, frame):
                raise _Timeout(f"timed out after {self.seconds:g} s")
            self._old = signal.signal(signal.SIGALRM, handler)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old)
        return False


def threading_is_main():
    import threading
    return threading.current_thread() is threading.main_thread()


class _Skip(Exception):
    pass


class _Instance:
    """One benchmark object with its setup/teardown, as one asv benchmark process holds it."""

    def __init__(self, bench: Bench, args: tuple):
        self.bench = bench
        self.obj = bench.klass() if bench.klass else None
        self.func = getattr(self.obj, bench.attr) if self.obj is not None else bench.get_func()
        self.setups = bench.all_attrs(self.obj, "setup")[::-1]
        self.teardowns = bench.all_attrs(self.obj, "teardown")
        self.args = args

    def setup(self):
        try:
            for hook in self.setups:
                hook(*self.args)
        except NotImplementedError as e:
            raise _Skip(str(e) or "NotImplementedError") from None

    def teardown(self):
        for hook in self.teardowns:
            hook(*self.args)


def _time_samples(inst: _Instance, attrs: dict):
    """asv_runner's TimeBenchmark.run, in process: returns (samples per call, number)."""
    timer = inst.bench.get("timer", time.perf_counter)
    warmup_time = attrs["warmup_time"]
    if warmup_time < 0:
        warmup_time = 0.1
    repeat, rounds = attrs["repeat"], attrs["rounds"]
    try:
        min_repeat, max_repeat, max_time = repeat
    except (ValueError, TypeError):
        if repeat == 0:
            min_repeat, max_repeat, max_time = 1, 10, 20.0
            if rounds > 1:
                max_repeat //= 2
                max_time /= 2.0
        else:
            min_repeat = max_repeat = repeat
            max_time = attrs["timeout"] or 60.0
    min_repeat, max_repeat, max_time = int(min_repeat), int(max_repeat), float(max_time)
    number = attrs["number"]
    has_setup = bool(inst.setups)
    if has_setup and number == 0:
        number = 1
    fresh = [True]  # the setup done before the first call counts for it

    def one_batch(n):
        """n calls; with setup hooks each call gets its own teardown + setup, and only calls are timed."""
        total = 0.0
        gcold = gc.isenabled()
        gc.disable()
        try:
            for _ in range(n if has_setup else 1):
                if has_setup:
                    if not fresh[0]:
                        inst.teardown()
                        inst.setup()
                    fresh[0] = False
                t0 = timer()
                if has_setup:
                    inst.func(*inst.args)
                else:
                    for _ in range(n):
                        inst.func(*inst.args)
                total += timer() - t0
        finally:
            if gcold:
                gc.enable()
        return total

    start = time.perf_counter()
    run_count = 0
    samples = []

    def too_slow(k):
        if run_count < attrs["min_run_count"] or k < min_repeat:
            return False
        return time.perf_counter() > start + warmup_time + max_time

    if number == 0:
        number = 1
        while True:
            t0 = time.perf_counter()
            timing = one_batch(number)
            actual = max(time.perf_counter() - t0, timing)
            run_count += number
            if actual >= attrs["sample_time"]:
                if time.perf_counter() > start + warmup_time:
                    break
            else:
                p = min(10.0, max(1.1, attrs["sample_time"] / actual)) if actual > 0 else 10.0
                number = max(number + 1, int(p * number))
        if too_slow(1):
            return [timing / number], number
    elif warmup_time > 0:
        while True:
            timing = one_batch(number)
            run_count += number
            if time.perf_counter() >= start + warmup_time:
                break
        if too_slow(1):
            return [timing / number], number
    while len(samples) < max_repeat:
        samples.append(one_batch(number))
        run_count += number
        if too_slow(len(samples)):
            break
    return [s / number for s in samples], number


def compute_stats(samples, number):
    """asv's statistics when importable; else median, quartiles and an order-statistic 99% interval."""
    try:
        from asv_runner.statistics import compute_stats as asv_stats
        return asv_stats(samples, number)
    except ImportError:
        pass
    if not samples:
        return None, None
    y = sorted(samples)
    n = len(y)

    def q(p):
        x = p * (n - 1)
        lo = int(math.floor(x))
        hi = min(lo + 1, n - 1)
        return y[lo] + (y[hi] - y[lo]) * (x - lo)
    # the widest pair of order statistics around the median with binomial coverage >= 99%
    a, b = -math.inf, math.inf
    for k in range(n // 2):
        cover = 1.0 - 2.0 * sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
        if cover >= 0.99:
            a, b = y[k], y[n - 1 - k]
        else:
            break
    return q(0.5), {"ci_99_a": a, "ci_99_b": b, "q_25": q(0.25), "q_75": q(0.75), "number": number, "repeat": n}


def _peakmem_child(module, klass, attr, args):  # pragma: no cover - runs in a spawned process
    import resource
    mod = importlib.import_module(module)
    obj = getattr(mod, klass)() if klass else None
    func = getattr(obj, attr) if obj is not None else getattr(mod, attr)
    if obj is not None and hasattr(obj, "setup"):
        obj.setup(*args)
    func(*args)
    try:  # this process's own peak (ru_maxrss carries the parent's over fork and exec)
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _run_combo(bench: Bench, args: tuple, attrs: dict) -> dict:
    """One parameter combination: {'result', 'samples', 'number', 'stats', 'error', 'skip'}."""
    out = {"result": None, "samples": None, "number": None, "stats": None, "error": None, "skip": None}
    rounds = attrs["rounds"]
    all_samples, number = [], None
    for _ in range(rounds if bench.kind == "time" else 1):
        inst = _Instance(bench, args)
        try:
            with _alarm(attrs["timeout"]):
                inst.setup()
                try:
                    if bench.kind == "time":
                        s, number = _time_samples(inst, attrs)
                        all_samples += s
                    elif bench.kind == "track":
                        out["result"] = float(inst.func(*args))
                    elif bench.kind == "peakmem":
                        import multiprocessing
                        ctx = multiprocessing.get_context("spawn")
                        with ctx.Pool(1) as pool:
                            out["result"] = float(pool.apply(_peakmem_child, (
                                bench.module.__name__, bench.klass.__name__ if bench.klass else None, bench.attr, args)))
                    else:
                        raise NotImplementedError(f"the fallback runner does not run {bench.kind}_ benchmarks")
                finally:
                    inst.teardown()
        except _Skip as e:
            out.update(result=math.nan, skip=str(e))
            return out
        except BaseException as e:  # noqa: BLE001 - recorded as a failure, like asv
            if isinstance(e, KeyboardInterrupt):
                raise
            out.update(result=None, error="".join(traceback.format_exception(type(e), e, e.__traceback__))[-2000:])
            return out
    if bench.kind == "time":
        value, stats = compute_stats(all_samples, number)
        out.update(result=value, samples=all_samples, number=number, stats=stats)
    return out


def _attrs(bench: Bench, quick: bool) -> dict:
    a = {"number": int(bench.get("number", 0)), "repeat": bench.get("repeat", 0),
         "rounds": int(bench.get("rounds", bench.get("processes", 2))),
         "min_run_count": int(bench.get("min_run_count", 2)), "sample_time": float(bench.get("sample_time", 0.01)),
         "warmup_time": float(bench.get("warmup_time", -1)), "timeout": float(bench.get("timeout", 60.0))}
    if quick:
        a.update(number=1, repeat=1, warmup_time=0.0, rounds=1)
    return a


def env_name() -> str:
    exe = os.path.realpath(sys.executable)
    return "existing-py_" + exe.lstrip("/").replace("/", "_").replace("\\", "_")


def machine_info(name: str) -> dict:
    from reports.envinfo import cpu_name, ram_bytes
    ram = ram_bytes()
    return {"arch": platform.machine(), "cpu": cpu_name() or "", "machine": name,
            "num_cpu": str(os.cpu_count() or ""), "os": f"{platform.system()} {platform.release()}",
            "ram": str(ram // 1024) if ram else "", "version": 1}


def _json_num(x):
    if x is None:
        return None
    return float(x)


def run_fallback(results: Path, machine: str, commit: str, regex, quick: bool, tiny: bool,
                 log=sys.stderr) -> dict:
    """Discover, select, time and write asv-format results; returns a summary dict."""
    benches, errors = discover(tiny)
    for mod, err in errors.items():
        print(f"taper bench: cannot import {mod}: {err}", file=log)
    rx = re.compile(regex) if regex else None
    selected = {}
    for b in benches:
        idx = [i for i, label in enumerate(b.labels()) if rx is None or rx.search(label)]
        if idx:
            selected[b.name] = idx
    total = sum(len(v) for v in selected.values())
    results.mkdir(parents=True, exist_ok=True)
    mdir = results / machine
    mdir.mkdir(parents=True, exist_ok=True)
    (mdir / "machine.json").write_text(json.dumps(machine_info(machine), indent=4) + "\n", encoding="utf-8")

    bench_file = results / "benchmarks.json"
    meta_all = {}
    if bench_file.exists():
        try:
            meta_all = {k: v for k, v in json.loads(bench_file.read_text(encoding="utf-8")).items() if isinstance(v, dict)}
        except ValueError:
            meta_all = {}
    metas = {b.name: b.meta() for b in benches}
    meta_all.update(metas)
    bench_file.write_text(json.dumps({**dict(sorted(meta_all.items())), "version": 2}, indent=4) + "\n",
                          encoding="utf-8")

    result_path = mdir / f"{commit[:8]}-{env_name()}.json"
    data = None
    if result_path.exists():
        try:
            data = json.loads(result_path.read_text(encoding="utf-8"))
        except ValueError:
            data = None
    if not data or data.get("result_columns") != RESULT_COLUMNS:
        data = {"commit_hash": commit, "env_name": env_name(), "date": None,
                "params": {"machine": machine, "python": os.path.realpath(sys.executable)},
                "python": os.path.realpath(sys.executable), "requirements": {}, "env_vars": {},
                "result_columns": RESULT_COLUMNS, "results": {}, "durations": {}, "version": 2}
    data["date"] = _commit_date_ms(commit)

    import suites.common as common
    caches, tmpdirs = {}, []
    done = 0
    summary = {"ok": 0, "skipped": 0, "failed": 0, "failures": {}, "skips": {}, "results": str(result_path)}
    cwd = os.getcwd()
    try:
        for b in benches:
            if b.name not in selected:
                continue
            attrs = _attrs(b, quick)
            combos = b.combos()
            n = len(combos)
            res = {"result": [math.nan] * n, "samples": [None] * n, "number": [None] * n, "stats": [None] * n}
            old = data["results"].get(b.name)
            if old is not None and old[1] == b.param_reprs() and old[2] == metas[b.name]["version"]:
                row = dict(zip(RESULT_COLUMNS, old))
                for i in range(n):  # keep earlier values of combinations not selected now
                    if i not in selected[b.name]:
                        res["result"][i] = row["result"][i] if row.get("result") else math.nan
                        res["samples"][i] = (row.get("samples") or [None] * n)[i]
                        if row.get("stats_q_25"):
                            res["stats"][i] = {k: (row.get(f"stats_{k}") or [None] * n)[i]
                                               for k in ("ci_99_a", "ci_99_b", "q_25", "q_75", "number", "repeat")}
            started = time.time()
            cache = None
            if b.setup_cache is not None:
                key = metas[b.name].get("setup_cache_key")
                if key not in caches:
                    tmp = tempfile.mkdtemp(prefix="taper-setup-cache-")
                    tmpdirs.append(tmp)
                    os.chdir(tmp)
                    print(f"taper bench: setting up {key}", file=log, flush=True)
                    try:
                        obj = b.klass() if b.klass else None
                        caches[key] = ("ok", b.setup_cache(obj) if obj is not None else b.setup_cache(), tmp)
                    except BaseException as e:  # noqa: BLE001
                        if isinstance(e, KeyboardInterrupt):
                            raise
                        caches[key] = ("failed", "".join(traceback.format_exception_only(type(e), e)).strip(), tmp)
                status, cache, tmp = caches[key]
                os.chdir(tmp)
                if status == "failed":
                    for i in selected[b.name]:
                        res["result"][i] = None
                        done += 1
                    summary["failed"] += len(selected[b.name])
                    summary["failures"][b.name] = f"setup_cache failed: {cache}"
                    print(f"[{done:4d}/{total}] {b.name}: setup_cache failed: {cache}", file=log, flush=True)
                    data["results"][b.name] = _row(res, b, metas, started)
                    continue
            labels = b.labels()
            for i in selected[b.name]:
                args = ((cache,) if b.setup_cache is not None else ()) + tuple(combos[i])
                r = _run_combo(b, args, attrs)
                if r["skip"] is None:
                    common.reset()
                done += 1
                res["result"][i], res["samples"][i], res["number"][i], res["stats"][i] = (
                    r["result"], r["samples"], r["number"], r["stats"])
                if r["skip"] is not None:
                    summary["skipped"] += 1
                    summary["skips"][labels[i]] = r["skip"]
                    shown = "skipped"
                elif r["error"] is not None:
                    summary["failed"] += 1
                    summary["failures"][labels[i]] = r["error"]
                    shown = "failed: " + r["error"].strip().splitlines()[-1]
                else:
                    summary["ok"] += 1
                    from reports.units import human
                    shown = human(r["result"], metas[b.name]["unit"])
                print(f"[{done:4d}/{total}] {labels[i]}  {shown}", file=log, flush=True)
            os.chdir(cwd)
            data["results"][b.name] = _row(res, b, metas, started)
            data["durations"][f"<{b.name}>"] = round(time.time() - started, 3)
            result_path.write_text(json.dumps(data, indent=None) + "\n", encoding="utf-8")  # after each benchmark
    finally:
        os.chdir(cwd)
        import shutil
        for tmp in tmpdirs:
            shutil.rmtree(tmp, ignore_errors=True)
    result_path.write_text(json.dumps(data, indent=None) + "\n", encoding="utf-8")
    summary["import_errors"] = errors
    summary["selected"] = total
    return summary


def _row(res, b, metas, started):
    n = len(res["result"])
    stats = [s or {} for s in res["stats"]]

    def col(k):
        return [_json_num(s.get(k)) if s else None for s in stats]
    row = [[_json_num(x) if x is not None else None for x in res["result"]], b.param_reprs(),
           metas[b.name]["version"], int(started * 1000), round(time.time() - started, 4)]
    if b.kind == "time":
        row += [col("ci_99_a"), col("ci_99_b"), col("q_25"), col("q_75"),
                [s.get("number") if s else None for s in stats], [s.get("repeat") if s else None for s in stats],
                [list(x) if x else None for x in res["samples"]]]
    assert len(row) <= len(RESULT_COLUMNS) and n == len(row[0])
    return row


def _commit_date_ms(commit: str) -> int:
    try:
        out = subprocess.run(["git", "show", "-s", "--format=%ct", commit], cwd=ROOT, capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return int(out.stdout.strip()) * 1000
    except OSError:
        pass
    return int(time.time() * 1000)


# ---- table -------------------------------------------------------------------------------------------------
def tables(results: Path, machine: str, commit: str, regex) -> list[tuple[str, object]]:
    """(title, display frame) pairs for this run: engine vs torch, then engine vs the raw arrays."""
    from reports.compare import KEY, compare, display_table
    from reports.results import load_results

    df = load_results(results)
    df = df[(df["machine"] == machine) & (df["commit"] == commit)]
    if regex:
        rx = re.compile(regex)
        labels = df["benchmark"] + "(" + df["params_repr"] + ")"
        df = df[[bool(rx.search(lab)) for lab in labels]]
    df = df[df["status"] == "ok"]
    out = []
    if df.empty or "impl" not in df.columns:
        return out
    for base in ("torch", "numpy", "cupy"):
        if not ((df["impl"] == "engine").any() and (df["impl"] == base).any()):
            continue
        t = compare(df, "engine", base)
        if base != "torch":  # the raw arrays: only where they ran
            t = t[t[base].notna()]
        groups = t["suite"].str.removeprefix("bench_") + "." + t["name"].str.split(".").str[0]
        for group, part in t.groupby(groups, sort=True):
            keep = [c for c in part.columns if c in KEY or c in ("engine", base, "ratio") or (part[c] != "").any()]
            out.append((f"{group}: engine vs {base}", display_table(part[keep].reset_index(drop=True), "engine", base)))
    return out


def run(args) -> int:
    from reports.compare import LEGEND, to_markdown
    from reports.envinfo import write_sidecar
    from reports.results import ResultsError

    try:
        regex = selection_regex(args)
    except (ValueError, re.error) as e:
        print(f"taper bench: {e}", file=sys.stderr)
        return 2
    results = Path(args.results).resolve()
    machine = machine_name(args)
    commit = git_commit(ROOT)
    runner = args.runner
    if runner == "auto":
        runner = "asv" if (asv_available() and commit) else "fallback"
    if runner == "asv" and not asv_available():
        print("taper bench: asv is not importable here; use --runner fallback", file=sys.stderr)
        return 2
    if runner == "asv" and commit is None:
        print("taper bench: asv needs a git checkout; use --runner fallback", file=sys.stderr)
        return 2
    if commit is None:
        commit = os.environ.get("TAPER_COMMIT") or tree_hash(ROOT)
        print(f"taper bench: no git here; results recorded under the source-tree hash {commit[:10]}", file=sys.stderr)
    elif dirty(ROOT):
        print(f"taper bench: note: engine/ or suites/ have uncommitted changes; results are recorded under "
              f"HEAD {commit[:10]} but measure the working tree", file=sys.stderr)
    env = {"TAPER_BENCH_QUICK": "1" if args.tiny else ""}
    if runner == "fallback" and "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules:
        # one process runs every implementation: torch's OpenMP workers would otherwise busy-wait after
        # each parallel region and take the cores from numpy's BLAS threads (seen by bench_llm)
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        print("taper bench: fallback runner: OMP_WAIT_POLICY=PASSIVE (set it yourself to override)", file=sys.stderr)
    t0 = time.time()
    try:
        if runner == "asv":
            run_asv(ROOT, results, machine, commit, regex, args.quick, env, args.launch_method)
        else:
            summary = run_fallback(results, machine, commit, regex, args.quick, args.tiny)
            print(f"taper bench: fallback runner: {summary['ok']} ok, {summary['skipped']} skipped, "
                  f"{summary['failed']} failed of {summary['selected']} selected", file=sys.stderr)
            for label, err in list(summary["failures"].items())[:10]:
                print(f"  FAILED {label}: {err.strip().splitlines()[-1] if err.strip() else err}", file=sys.stderr)
            if summary["selected"] == 0:
                print("taper bench: nothing matched the selection", file=sys.stderr)
                return 2
    except RuntimeError as e:
        print(f"taper bench: {e}", file=sys.stderr)
        return 1
    path, warning = write_sidecar(results, machine)
    if warning:
        print(f"taper bench: warning: {warning}", file=sys.stderr)
    print(f"taper bench: {runner} run took {time.time() - t0:.0f} s; results in {results} (machine {machine}, "
          f"commit {commit[:10]}); environment in {path}", file=sys.stderr)
    if args.no_table:
        return 0
    try:
        shown = tables(results, machine, commit, regex)
    except ResultsError as e:
        print(f"taper bench: {e}", file=sys.stderr)
        return 1
    if not shown:
        print("no engine/torch pair in the results of this selection and commit (all skipped or failed, or only one implementation selected)")
        return 0
    md = []
    for title, table in shown:
        print(f"\n{title} ({machine})")
        print(table.to_string(index=False))
        md += [f"### {title} ({machine})", "", to_markdown(table), ""]
    print("\n" + LEGEND)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(md + [LEGEND, ""]), encoding="utf-8")
    return 0
