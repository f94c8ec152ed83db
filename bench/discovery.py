"""Benchmark discovery as asv_runner does it: the suite classes and functions under suites/, their
parameters, attributes (number, repeat, timeout...) and the benchmarks.json entry asv would write.

`discover()` imports every suites module (in the process that plans the run); `load_module()`
imports one (in a worker, which needs only the module of the benchmark it runs).
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import itertools
import json
import os
import re
import sys
import textwrap
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# asv's defaults of the benchmark attributes (rounds falls back to the older name, processes)
DEFAULTS = {"number": 0, "repeat": 0, "processes": 2, "min_run_count": 2, "sample_time": 0.01, "warmup_time": -1,
            "timeout": 60.0}

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

    def attrs(self) -> dict:
        """number, repeat, rounds, min_run_count, sample_time, warmup_time, timeout: the benchmark's
        own, else asv's DEFAULTS."""
        d = DEFAULTS
        return {"number": int(self.get("number", d["number"])), "repeat": self.get("repeat", d["repeat"]),
                "rounds": int(self.get("rounds", self.get("processes", d["processes"]))),
                "min_run_count": int(self.get("min_run_count", d["min_run_count"])),
                "sample_time": float(self.get("sample_time", d["sample_time"])),
                "warmup_time": float(self.get("warmup_time", d["warmup_time"])),
                "timeout": float(self.get("timeout", d["timeout"]))}

    def get_func(self):
        return getattr(self.klass, self.attr) if self.klass else getattr(self.module, self.attr)

    def meta(self) -> dict:
        """The benchmarks.json entry asv would write."""
        code = self.code()
        version = self.get("version", None)
        attrs = self.attrs()
        m = {"code": code, "name": self.name, "param_names": self.param_names, "params": self.param_reprs(),
             "type": self.kind, "unit": self.get("unit", _UNITS.get(self.kind, "unit")),
             "version": str(version) if version is not None else hashlib.sha256(code.encode()).hexdigest(),
             "timeout": attrs.pop("timeout")}
        if self.kind == "time":
            m.update(attrs)
        if self.setup_cache is not None:
            m["setup_cache_key"] = f"{self.module.__name__.split('.', 1)[-1]}:{self.klass.__name__ if self.klass else ''}"
        return m


def benchmark_package(root: Path = ROOT) -> str:
    """The benchmark package of a checkout: asv.conf.json's benchmark_dir (suites/ here)."""
    try:
        conf = json.loads((Path(root) / "asv.conf.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        conf = {}
    return Path(conf.get("benchmark_dir", "suites")).name


def _ensure_package(tiny: bool, package: str, root: Path):
    """Import (or re-import) the benchmark package with TAPER_BENCH_QUICK set as asked."""
    want = "1" if tiny else ""
    changed = os.environ.get("TAPER_BENCH_QUICK", "") != want
    os.environ["TAPER_BENCH_QUICK"] = want
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    common = sys.modules.get(f"{package}.common")
    if changed or (common is not None and getattr(common, "QUICK", tiny) != tiny):
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[name]


def discover(tiny: bool = False, root: Path = ROOT):
    """All benchmarks of the checkout at `root` (as asv_runner discovers them), and per-module import
    errors."""
    import pkgutil

    package = benchmark_package(root)
    _ensure_package(tiny, package, Path(root))
    pkg = importlib.import_module(package)
    benches, errors = [], {}
    for info in pkgutil.iter_modules(pkg.__path__, f"{package}."):
        try:
            benches += load_module(info.name)
        except BaseException as e:  # noqa: BLE001 - a broken suite must not hide the others
            if isinstance(e, KeyboardInterrupt):
                raise
            errors[info.name] = "".join(traceback.format_exception_only(type(e), e)).strip()
    return benches, errors


def load_module(name: str) -> list:
    """The benchmarks of one suites module ('suites.bench_ops'), importing it."""
    mod = importlib.import_module(name)
    short = name.split(".", 1)[1]
    benches = []
    for attr_name, obj in list(mod.__dict__.items()):
        if attr_name.startswith("_"):
            continue
        if inspect.isclass(obj) and not inspect.isabstract(obj):
            for member_name, member in inspect.getmembers(obj):
                kind = _kind(member_name)
                if kind and (inspect.isfunction(member) or inspect.ismethod(member)):
                    benches.append(_make(f"{short}.{obj.__name__}.{member_name}", kind, mod, obj, member_name))
        elif inspect.isfunction(obj) and _kind(attr_name):
            benches.append(_make(f"{short}.{attr_name}", _kind(attr_name), mod, None, attr_name))
    return benches


def _make(name, kind, mod, klass, attr):
    b = Bench(name, kind, mod, klass, attr)
    params = b.get("params", [])
    if params and not isinstance(params[0], (list, tuple)):
        params = [params]
    b.params = [list(p) for p in params]
    names = b.get("param_names", None) or [f"param{i + 1}" for i in range(len(b.params))]
    b.param_names = list(names)
    return b


