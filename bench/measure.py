"""One benchmark parameter set measured in this process, with asv_runner's rules: setup/teardown
around every timed call, NotImplementedError in setup is a skip, warm-up, number/repeat/rounds/
sample_time, statistics. bench.worker runs this in a child process that the runner can kill.
"""
from __future__ import annotations

import gc
import math
import time
import traceback

from bench.discovery import Bench


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


def peak_rss() -> int:
    """VmHWM: this process's own peak RSS. (ru_maxrss is not: Linux carries it over fork and exec,
    so a child started by a 250 MB parent reports at least 250 MB.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_combo(bench: Bench, args: tuple, attrs: dict) -> dict:
    """One parameter combination: {'result', 'samples', 'number', 'stats', 'error', 'skip'}.

    peakmem_ benchmarks report this process's peak RSS: run them in a fresh process (the runner
    gives each one a worker of its own)."""
    out = {"result": None, "samples": None, "number": None, "stats": None, "error": None, "skip": None}
    rounds = attrs["rounds"]
    all_samples, number = [], None
    for _ in range(rounds if bench.kind == "time" else 1):
        inst = _Instance(bench, args)
        try:
            inst.setup()
            try:
                if bench.kind == "time":
                    s, number = _time_samples(inst, attrs)
                    all_samples += s
                elif bench.kind == "track":
                    out["result"] = float(inst.func(*args))
                elif bench.kind == "peakmem":
                    inst.func(*args)
                    out["result"] = float(peak_rss())
                else:
                    raise NotImplementedError(f"the fallback runner does not run {bench.kind}_ benchmarks")
            finally:
                inst.teardown()
        except _Skip as e:
            out.update(result=math.nan, skip=str(e))
            return out
        except Exception as e:  # noqa: BLE001 - recorded as a failure, like asv
            out.update(result=None, error="".join(traceback.format_exception(type(e), e, e.__traceback__))[-2000:])
            return out
    if bench.kind == "time":
        value, stats = compute_stats(all_samples, number)
        out.update(result=value, samples=all_samples, number=number, stats=stats)
    return out


def run_attrs(bench, quick: bool) -> dict:
    """number, repeat, rounds, min_run_count, sample_time, warmup_time, timeout (asv --quick: one call)."""
    a = bench.attrs()  # the benchmark's own, else asv's defaults (bench.discovery.DEFAULTS)
    if quick:
        a.update(number=1, repeat=1, warmup_time=0.0, rounds=1)
    return a
