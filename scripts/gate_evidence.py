"""Evidence that the regression gate works: its false-positive rate on A/A pairs and its detection
rate for planted slowdowns, on real asv results.

Every measurement is a real `asv run -E existing --record-samples` (through the harness of
tests/data/asv_tiny) in a temporary git repository holding the tiny suite plus one extra benchmark
file written here (bench_evidence.py). The repository has one base commit and one commit per planted
slowdown, each checked out in its own git worktree, so that every side of a pair is measured from
the code of its commit:

- A/A pair: the base commit measured twice, in two independent asv runs;
- planted pair: the base commit, and a commit making exactly one benchmark slower by 10% or 25%.
  Two targets, each planted on its own: ``bench_evidence.Planted.time_compute`` (pure-Python CPU
  work, 10% or 25% more iterations: shares the CPU with anything else running on the box) and
  ``bench_evidence.Planted.time_sleep`` (time.sleep of 2 ms x 1.10 or 1.25: scheduler noise only).

Each pair is judged by the real gate, reports.gate.run_gate, with the real config (./gate.toml if
present, else reports/gate.toml, or --config) and a real confirming re-run hook that measures the
suspects again with asv from HEAD's worktree. Pairs of all scenarios are interleaved in a seeded
random order (and so is which side of a pair runs first), so that a change of the box's load over
the run spreads over every scenario.

The plantable benchmarks record 24 samples a side by default (--repeat): with 12, a BASE run with
a few samples slowed by a moment of contention kept a 25% slowdown below the U test's threshold.

Writes <out>/gate_evidence.json (every pair, every judged comparison, the raw samples of the
plantable benchmarks; --name for another file) and <out>/README.md, which summarises every
gate_evidence*.json kept in <out> (--readme-only rebuilds it without measuring).

    python scripts/gate_evidence.py                     # 20 A/A pairs, 10 per target and level
    python scripts/gate_evidence.py --aa-pairs 2 --planted-pairs 1 --levels 1.25 \\
        --targets compute --out /tmp/ev                 # the tiny mode of the test
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reports import stats  # noqa: E402
from bench.asv import bench_regex  # noqa: E402
from reports.gate import load_config, run_gate, settings_for  # noqa: E402
from reports.results import load_results  # noqa: E402

HARNESS = ROOT / "tests" / "data" / "asv_tiny" / "harness.py"
MACHINE = "gate-evidence"
PARAMS = "'engine', 'cpu'"
TARGETS = {
    "compute": "bench_evidence.Planted.time_compute",
    "sleep": "bench_evidence.Planted.time_sleep",
}

# The extra benchmark file of the temporary suite. PLANTED holds one slowdown factor per target;
# a planted commit changes one of them.
PLANTED_PY = """\
COMPUTE = 1.0
SLEEP = 1.0
"""

BENCH_PY = '''\
"""Benchmarks with a plantable slowdown, for scripts/gate_evidence.py (suites/ conventions)."""
import time

import planted

ITERATIONS = {iterations}


class Planted:
    params = (["engine"], ["cpu"])
    param_names = ["impl", "device"]
    number = 1
    repeat = {repeat}
    rounds = {rounds}
    warmup_time = 0.0

    def setup(self, impl, device):
        self.n = int(round(ITERATIONS * planted.COMPUTE))
        self.delay = 0.002 * planted.SLEEP

    def time_compute(self, impl, device):
        acc = 0
        for i in range(self.n):
            acc += i * i
        return acc

    def time_sleep(self, impl, device):
        time.sleep(self.delay)
'''


def harness():
    name = "taper_asv_tiny_harness"  # the name tests/test_gate.py uses: one module, one cache
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HARNESS)
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


def git(repo, *args) -> str:
    return subprocess.run(["git", "-c", "user.email=evidence@taper", "-c", "user.name=evidence",
                           *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()


def machine_facts() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import asv

    return {"host": platform.node(), "cpu": cpu, "num_cpu": os.cpu_count(),
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "asv": asv.__version__, "significance": stats.IMPLEMENTATION}


def loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


class Workspace:
    """The temporary repository, one worktree per code version, and the asv HOME."""

    def __init__(self, root: Path, targets, levels, iterations: int, repeat: int, rounds: int):
        h = harness()
        self.root, self.home = root, root / "home"
        self.home.mkdir()
        repo = h.make_repo(root / "repo")
        (repo / "planted.py").write_text(PLANTED_PY)
        (repo / "benchmarks" / "bench_evidence.py").write_text(
            BENCH_PY.format(iterations=iterations, repeat=repeat, rounds=rounds))
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "plantable benchmarks")
        self.repo, self.base_commit = repo, h.head(repo)
        h.register_machines(self.home, [MACHINE])
        self.trees = {"base": repo}
        self.commits = {"base": self.base_commit}
        for target in targets:
            for level in levels:
                version = f"{target}@{level:.2f}"
                tree = root / f"tree-{target}-{level:.2f}"
                git(repo, "worktree", "add", "-q", "--detach", str(tree), self.base_commit)
                var = {"compute": "COMPUTE", "sleep": "SLEEP"}[target]
                text = (tree / "planted.py").read_text()
                new = text.replace(f"{var} = 1.0", f"{var} = {level!r}")
                assert new != text, f"cannot plant {var} in planted.py"
                (tree / "planted.py").write_text(new)
                git(tree, "commit", "-qam", f"plant: {TARGETS[target]} {level}x slower")
                self.trees[version], self.commits[version] = tree, h.head(tree)
        self.runs = []  # (label, seconds)
        self._n = 0

    def measure(self, version: str, results: Path | None = None, bench: str | None = None,
                label: str = "run") -> Path:
        """One asv run of a code version into `results` (a fresh directory when None)."""
        if results is None:
            self._n += 1
            results = self.root / "results" / f"{self._n:04d}"
            results.parent.mkdir(exist_ok=True)
        t = time.perf_counter()
        harness().run(self.trees[version], self.home, results, MACHINE, bench=bench)
        self.runs.append((label, time.perf_counter() - t))
        return results


def samples_ms(frame, benchmark, params) -> list | None:
    rows = frame[(frame["benchmark"] == benchmark) & (frame["params_repr"] == params)]
    if rows.empty or not isinstance(rows["samples"].iloc[-1], list):
        return None
    return [round(x * 1e3, 4) for x in rows["samples"].iloc[-1]]


def judge_pair(ws: Workspace, config: dict, version: str, rng: random.Random, bench: str | None):
    """Measure one pair (base commit vs `version`) and run the gate on it."""
    order = ["base", "head"]
    rng.shuffle(order)
    load_before = loadavg()
    dirs, secs = {}, {}
    for side in order:
        t = time.perf_counter()
        dirs[side] = ws.measure("base" if side == "base" else version, bench=bench, label=side)
        secs[side] = time.perf_counter() - t
    reruns = []

    def rerun(suspects):  # a real re-measurement of HEAD's code, into HEAD's results
        regex = bench_regex([(b, p) for _, b, p in suspects])
        t = time.perf_counter()
        ws.measure(version, dirs["head"], bench=regex, label="rerun")
        fresh = load_results(dirs["head"])
        reruns.append({"suspects": [[b, p] for _, b, p in suspects],
                       "seconds": round(time.perf_counter() - t, 2),
                       "samples_ms": {f"{b}({p})": samples_ms(fresh, b, p)
                                      for _, b, p in suspects}})
        return fresh

    base_df, head_df = load_results(dirs["base"]), load_results(dirs["head"])
    t = time.perf_counter()
    result = run_gate(base_df, head_df, config, rerun=rerun)
    gate_s = time.perf_counter() - t
    rows = []
    for c in result.comparisons:
        if math.isnan(c.change):
            continue
        row = {"benchmark": c.benchmark, "params": c.params, "unit": c.unit,
               "base": c.base, "head": c.head, "change": round(c.change, 5),
               "verdict": c.verdict, "suspect": c.verdict in ("regression", "unconfirmed"),
               "test": c.test}
        if c.benchmark in TARGETS.values():  # first-run samples of the plantable benchmarks
            row["samples_ms_base"] = samples_ms(base_df, c.benchmark, c.params)
            row["samples_ms_head"] = samples_ms(head_df, c.benchmark, c.params)
        rows.append(row)
    shutil.rmtree(dirs["base"]), shutil.rmtree(dirs["head"])
    return {"version": version, "commit": ws.commits[version][:10], "order": order,
            "loadavg_before": load_before, "base_run_s": round(secs["base"], 2),
            "head_run_s": round(secs["head"], 2), "gate_s": round(gate_s, 2),
            "exit_code": result.exit_code, "reruns": reruns,
            "regressions": [[c.benchmark, c.params] for c in result.by("regression")],
            "comparisons": rows}


def _rate(k, n):
    return round(k / n, 4) if n else None


def _changes(pairs, benchmark):
    return [c["change"] for p in pairs for c in p["comparisons"]
            if c["benchmark"] == benchmark and c["params"] == PARAMS]


def summarise(pairs, targets, levels, factor) -> dict:
    aa = [p for p in pairs if p["scenario"] == "aa"]
    per_bench = {}
    for p in aa:
        for c in p["comparisons"]:
            key = f"{c['benchmark']}({c['params']})"
            b = per_bench.setdefault(key, {"pairs": 0, "regressions": 0, "suspects": 0,
                                           "max_change": 0.0, "changes": []})
            b["pairs"] += 1
            b["regressions"] += c["verdict"] == "regression"
            b["suspects"] += c["suspect"]
            b["changes"].append(c["change"])
    for b in per_bench.values():
        ch = b.pop("changes")
        b["max_change"] = max(ch)
        b["median_change"] = round(statistics.median(ch), 5)
        b["false_positive_rate"] = _rate(b["regressions"], b["pairs"])
    out = {"aa": {
        "pairs": len(aa),
        "failed_pairs": sum(p["exit_code"] != 0 for p in aa),
        "false_positive_rate": _rate(sum(p["exit_code"] != 0 for p in aa), len(aa)),
        "pairs_with_a_suspect": sum(any(c["suspect"] for c in p["comparisons"]) for p in aa),
        "comparisons": sum(len(p["comparisons"]) for p in aa),
        "regressions": sum(len(p["regressions"]) for p in aa),
        "per_benchmark": dict(sorted(per_bench.items())),
    }, "planted": {}}
    for target in targets:
        bench = TARGETS[target]
        for level in levels:
            ps = [p for p in pairs if p["scenario"] == f"{target}@{level:.2f}"]
            if not ps:
                continue
            hits, first, collateral, changes, rerun_changes = 0, 0, 0, [], []
            for p in ps:
                planted = [c for c in p["comparisons"]
                           if c["benchmark"] == bench and c["params"] == PARAMS]
                hits += any(c["verdict"] == "regression" for c in planted)
                first += any(c["suspect"] for c in planted)
                collateral += sum(1 for b, q in p["regressions"] if (b, q) != (bench, PARAMS))
                changes += [c["change"] for c in planted]
                for c in planted:
                    if "; re-run: " in c["test"]:
                        rerun_changes.append(float(c["test"].split("; re-run: ")[1].split("x")[0]))
            below = sum(ch <= factor for ch in changes)
            out["planted"].setdefault(target, {})[f"{level:.2f}"] = {
                "benchmark": f"{bench}({PARAMS})", "planted_slowdown": level, "pairs": len(ps),
                "detected": hits, "detection_rate": _rate(hits, len(ps)),
                "suspect_on_first_run": first,
                "measured_change_median": round(statistics.median(changes), 4),
                "measured_change_min": min(changes), "measured_change_max": max(changes),
                "measured_change_at_or_below_factor": below,
                "rerun_changes": rerun_changes,
                "other_benchmarks_flagged": collateral,
            }
    return out


def _fmt_rate(k, n):
    return f"{k}/{n} ({100 * k / n:.0f}%)" if n else "—"


def _load(data) -> str:
    return f"load {data['load']['median']} (max {data['load']['max']})"


def _collateral(data):
    """Unchanged benchmarks flagged as regressions in planted pairs: (pair, comparison)."""
    out = []
    for p in data["pairs"]:
        if p["scenario"] == "aa":
            continue
        planted = TARGETS[p["scenario"].split("@")[0]]
        for c in p["comparisons"]:
            if c["verdict"] == "regression" and (c["benchmark"], c["params"]) != (planted, PARAMS):
                out.append((p, c))
    return out


def _base_spread(data, benchmark):
    vals = [c["base"] * 1e3 for p in data["pairs"] for c in p["comparisons"]
            if c["benchmark"] == benchmark and c["params"] == PARAMS]
    return (min(vals), max(vals)) if vals else (math.nan, math.nan)


def headline(name, data) -> str:
    s = data["summary"]
    aa = s["aa"]
    parts = [f"A/A false positives {_fmt_rate(aa['failed_pairs'], aa['pairs'])}"]
    for level in sorted({lvl for lv in s["planted"].values() for lvl in lv}):
        parts.append(f"{round((float(level) - 1) * 100)}% slowdown detected " + ", ".join(
            f"{target} {_fmt_rate(lv[level]['detected'], lv[level]['pairs'])}"
            for target, lv in s["planted"].items() if level in lv))
    return f"**`{name}`: " + "; ".join(parts) + ".**"


def readme(runs) -> str:
    """The summary of one or more evidence runs [(file name, data)]; the first is the main one."""
    name, data = runs[0]
    cfg, m, t = data["config"], data["machine"], data["timing"]
    perf = cfg["perf"]
    minutes = max(1, round(t["total_s"] / 60))
    lines = [
        "# Gate evidence: A/A false positives and planted-slowdown detection", "",
        "Real asv runs judged by the real gate (`reports.gate.run_gate`, the config below, a "
        "confirming re-run that measures again). Regenerate with `python "
        f"scripts/gate_evidence.py` (about {minutes} minute{'s' * (minutes != 1)} here); "
        "every pair, every judged comparison "
        "and every re-run is in the JSON files.", "",
        "## Figures", "",
        headline(name, data), "",
        "| run | scenario | pairs | gate failed | rate | suspect before the re-run |",
        "|---|---|---|---|---|---|",
    ]
    for fname, d in runs:
        s = d["summary"]
        aa = s["aa"]
        run = f"`{fname}` ({d['generated'][:16].replace('T', ' ')} UTC, {_load(d)})"
        lines.append(f"| {run} | A/A (same commit, two asv runs) | {aa['pairs']} | "
                     f"{aa['failed_pairs']} | false positives "
                     f"{_fmt_rate(aa['failed_pairs'], aa['pairs'])} | "
                     f"{aa['pairs_with_a_suspect']} |")
        for target, levels in s["planted"].items():
            for level, r in levels.items():
                lines.append(
                    f"| | `{r['benchmark']}` {round((float(level) - 1) * 100)}% slower | "
                    f"{r['pairs']} | {r['detected']} | detected "
                    f"{_fmt_rate(r['detected'], r['pairs'])} | {r['suspect_on_first_run']} |")
        coll = _collateral(d)
        lines.append(f"| | unchanged benchmarks flagged in planted pairs | "
                     f"{sum(p['scenario'] != 'aa' for p in d['pairs'])} | {len(coll)} | "
                     f"{len(coll)} false positives | |")
    lines += [f"\n`{fname}`: {d['note']}" for fname, d in runs if d.get("note")]
    lines += ["", "Measured change (HEAD/BASE) of the planted benchmark on the first run, and "
              "the spread of its BASE median over the pairs (the box's own noise):", "",
              "| run | planted | benchmark | median | min | max | at or below the factor | "
              "BASE median, ms |", "|---|---|---|---|---|---|---|---|"]
    for fname, d in runs:
        for target, levels in d["summary"]["planted"].items():
            lo, hi = _base_spread(d, TARGETS[target])
            for level, r in levels.items():
                lines.append(
                    f"| `{fname}` | {level}x | `{TARGETS[target]}` | "
                    f"{r['measured_change_median']:.3f} | {r['measured_change_min']:.3f} | "
                    f"{r['measured_change_max']:.3f} | "
                    f"{r['measured_change_at_or_below_factor']}/{r['pairs']} | "
                    f"{lo:.2f} to {hi:.2f} |")
    aa = data["summary"]["aa"]
    lines += ["", f"A/A of `{name}` per benchmark ({aa['comparisons']} comparisons judged over "
              f"{aa['pairs']} pairs):", "",
              "| benchmark | pairs | median change | max change | suspects | regressions |",
              "|---|---|---|---|---|---|"]
    for key, b in aa["per_benchmark"].items():
        lines.append(f"| `{key}` | {b['pairs']} | {b['median_change']:.3f} | "
                     f"{b['max_change']:.3f} | {b['suspects']} | {b['regressions']} |")
    suite = data["suite"]
    lines += [
        "", "## How it was measured", "",
        "- Real `asv run -E existing --record-samples --launch-method forkserver` runs "
        f"(asv {m['asv']}, Python {m['python']}) of tests/data/asv_tiny plus one file of two "
        "plantable benchmarks (written by the script), in a temporary git repository: a base "
        "commit and one commit per planted slowdown, each in its own worktree.",
        f"- The plantable benchmarks record {suite['repeat'] * suite.get('rounds', 1)} samples a "
        f"side (repeat {suite['repeat']}, rounds {suite.get('rounds', 1)}, number 1), as does "
        "the tiny suite's time_matmul (repeat 12).",
        f"- `time_compute`: a pure-Python loop of {suite['iterations']:,} iterations (about "
        f"{suite['compute_ms']:.1f} ms at its fastest BASE median); planted = that many more "
        "iterations, so "
        "its cost scales with the planted factor and it shares the CPU with whatever else runs. "
        "`time_sleep`: time.sleep(2 ms x planted); only scheduler noise. The tiny suite's own "
        "benchmarks (time_matmul on sleep, peakmem, track values) and the unplanted target are "
        "unchanged in every pair.",
        "- Each pair: two fresh asv runs (which side runs first is random), then "
        "`reports.gate.run_gate` with a re-run hook that measures the suspects again with asv "
        "from HEAD's worktree into HEAD's results. A pair fails when the gate's exit code is 1; "
        "a planted slowdown is detected when its benchmark's final verdict is `regression`. "
        "Pairs of all scenarios are interleaved in a seeded random order.",
        f"- `{name}`: {t['total_s']:.0f} s in all; {t['asv_runs']} asv runs (median "
        f"{t['median_run_s']:.1f} s each), of which {t['reruns']} confirming re-runs. "
        f"Command: `python {data['command']}`.",
        "", "## Machine", "",
        f"{m['cpu']}, {m['num_cpu']} CPUs, {m['os']}, host `{m['host']}`. The box is shared: "
        "the 1-minute load average before each pair is in the JSON (median and max in the "
        "table above).",
        "", "## Config", "",
        f"`{cfg['path']}` [perf]: factor = {perf['factor']}, alpha = {perf['alpha']}, "
        f"min_samples = {perf['min_samples']}, confirm = {str(perf['confirm']).lower()}, "
        f"fail_on_broken = {str(perf['fail_on_broken']).lower()}. No [[perf.override]] matches "
        f"the benchmarks measured here (effective factor {cfg['effective_factor']}). "
        f"Significance: {m['significance']}.",
        "", "## Reading", "",
    ]
    lines += reading(runs)
    return "\n".join(lines).rstrip() + "\n"


def reading(runs) -> list[str]:
    factor = runs[0][1]["config"]["effective_factor"]
    alpha, min_samples = (runs[0][1]["config"]["perf"][k] for k in ("alpha", "min_samples"))
    out = []
    for fname, d in runs:
        aa = d["summary"]["aa"]
        coll = _collateral(d)
        text = (f"- A/A, `{fname}`: {aa['failed_pairs']} of {aa['pairs']} pairs failed "
                f"(false-positive rate {aa['false_positive_rate']:.0%}; target 0); "
                f"{aa['pairs_with_a_suspect']} had a suspect before the re-run.")
        for p, c in coll:
            text += (f" But in planted pair {p['index']} ({p['scenario']}) the unchanged "
                     f"`{c['benchmark']}` was flagged: {c['test']}. An unchanged benchmark "
                     "failing the gate is a false positive too. The confirming re-run measures "
                     "HEAD only, right after HEAD's first run, so a change of the box's load "
                     "between BASE's run and HEAD's can persist into the re-run and confirm "
                     "it.")
        out.append(text)
    tens = [(fname, t, r) for fname, d in runs for t, lv in d["summary"]["planted"].items()
            for lvl, r in lv.items() if abs(float(lvl) - 1.10) < 1e-9]
    out.append(
        f"- factor = {factor}: the gate flags a change only *above* {factor}x (and significant "
        "at the first run and at the re-run). A planted 10% slowdown is a measured change of "
        f"about 1.10, on the threshold, so by design it is caught only when noise happens to "
        f"push both measurements above {factor}; a benchmark with a fixed overhead that the "
        "slowdown does not touch measures below 1.10 (time_sleep: sleep's constant overshoot) "
        "and is hardly ever caught. "
        + ("Detection at 10%: " + "; ".join(
            f"{t} `{fname}` {r['detected']}/{r['pairs']} (median change "
            f"{r['measured_change_median']:.3f})" for fname, t, r in tens) + ". " if tens else "")
        + "Catching 10% reliably would need a lower factor, which lets more A/A noise "
        "through; the shipped config was not changed.")
    for fname, d in runs:
        for target, levels in d["summary"]["planted"].items():
            for level, r in levels.items():
                if float(level) < 1.2 or r["detection_rate"] is None:
                    continue
                lo, hi = _base_spread(d, TARGETS[target])
                if r["detection_rate"] == 1:
                    out.append(f"- {round((float(level) - 1) * 100)}% on {target}, `{fname}`: "
                               f"detected in all {r['pairs']} pairs (BASE median {lo:.2f} to "
                               f"{hi:.2f} ms over the pairs; {_load(d)}).")
                    continue
                misses = []
                for p in d["pairs"]:
                    if p["scenario"] != f"{target}@{level}":
                        continue
                    for c in p["comparisons"]:
                        if (c["benchmark"], c["params"]) == (TARGETS[target], PARAMS) and \
                                c["verdict"] != "regression":
                            misses.append(
                                f"pair {p['index']}: BASE {c['base'] * 1e3:.2f} ms, HEAD "
                                f"{c['head'] * 1e3:.2f} ms, {c['change']:.2f}x, {c['verdict']} "
                                f"({c['test']})")
                out.append(
                    f"- {round((float(level) - 1) * 100)}% on {target}, `{fname}`: detected in "
                    f"only {r['detected']} of {r['pairs']} pairs ({_load(d)} on "
                    f"{d['machine']['num_cpu']} CPUs; BASE median {lo:.2f} to {hi:.2f} ms over "
                    "the pairs). Missed: " + "; ".join(misses) + "."
                    + (" See the note on this run above." if d.get("note") else ""))
    out.append(
        f"- min_samples = {min_samples}, alpha = {alpha}, and asv's rule: the U test is used "
        "when 1/C(m+n, m) < alpha, but its two-sided p can go no lower than 2/C(m+n, m). With 5 "
        "samples a side (1/252) the 99% CIs decide; with 6 a side (1/924 = 0.0011) the U test is "
        "used yet its smallest p is 2/924 = 0.0022 > 0.002, so a benchmark with exactly 6 "
        "samples a side is never significant, however far apart (checked: asv's is_different "
        "says False for 0..5 vs 100..105). From 7 a side it works (smallest p 0.0006). The "
        "timed benchmarks here record 12 a side or more (smallest p at 12 a side: 2/C(24,12) = "
        "7.4e-07), so the U test decided every timed comparison.")
    return [line + "\n" for line in out]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--aa-pairs", type=int, default=20)
    ap.add_argument("--planted-pairs", type=int, default=10, help="pairs per target and level")
    ap.add_argument("--levels", type=float, nargs="+", default=[1.10, 1.25])
    ap.add_argument("--targets", nargs="+", choices=sorted(TARGETS), default=["compute", "sleep"])
    ap.add_argument("--repeat", type=int, default=24,
                    help="samples per round of the plantable benchmarks (asv repeat)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="asv rounds of the plantable benchmarks (samples a side: repeat x rounds)")
    ap.add_argument("--iterations", type=int, default=100_000, help="loop size of time_compute")
    ap.add_argument("--only-evidence-bench", action="store_true",
                    help="measure only bench_evidence (not the tiny suite's own benchmarks)")
    ap.add_argument("--config", help="gate config (default: ./gate.toml, else reports/gate.toml)")
    ap.add_argument("--out", default=str(ROOT / "measurements" / "gate"))
    ap.add_argument("--name", default="gate_evidence.json",
                    help="results file in --out; README.md there summarises every "
                         "gate_evidence*.json of the folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", help="a sentence kept with this run and shown in README.md")
    ap.add_argument("--readme-only", action="store_true",
                    help="measure nothing: rebuild README.md from the JSON files in --out")
    args = ap.parse_args(argv)

    if args.readme_only:
        out = Path(args.out)
        names = sorted(f.name for f in out.glob("gate_evidence*.json"))
        names.sort(key=lambda n: n != args.name)
        (out / "README.md").write_text(readme([(n, json.loads((out / n).read_text()))
                                              for n in names]))
        return 0
    cfg_path = Path(args.config) if args.config else (
        Path("gate.toml") if Path("gate.toml").exists() else ROOT / "reports" / "gate.toml")
    config = load_config(cfg_path)
    perf = config["perf"]
    effective = {settings_for(perf, b)["factor"] for b in TARGETS.values()}
    bench = r"^bench_evidence\." if args.only_evidence_bench else None
    started, t0 = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    rng = random.Random(args.seed)
    scenarios = ["aa"] * args.aa_pairs + [f"{t}@{lv:.2f}" for t in args.targets
                                          for lv in args.levels] * args.planted_pairs
    rng.shuffle(scenarios)
    root = Path(tempfile.mkdtemp(prefix="taper-gate-evidence-"))
    pairs = []
    try:
        ws = Workspace(root, args.targets, args.levels, args.iterations, args.repeat,
                       args.rounds)
        # One untimed run first: the box's file cache and the forkserver's imports warm up.
        shutil.rmtree(ws.measure("base", bench=bench, label="warm-up"))
        for i, scenario in enumerate(scenarios):
            version = "base" if scenario == "aa" else scenario
            pair = {"index": i, "scenario": scenario} | judge_pair(ws, config, version, rng, bench)
            pairs.append(pair)
            print(f"[{i + 1}/{len(scenarios)}] {scenario:14s} exit {pair['exit_code']} "
                  f"regressions {len(pair['regressions'])} reruns {len(pair['reruns'])} "
                  f"load {pair['loadavg_before']}", file=sys.stderr, flush=True)
        compute_ms = min(c["base"] for p in pairs for c in p["comparisons"]
                         if c["benchmark"] == TARGETS["compute"]) * 1e3
    finally:
        subprocess.run(["git", "worktree", "prune"], cwd=root / "repo", capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
    total = time.perf_counter() - t0
    run_s = [s for label, s in ws.runs if label != "warm-up"]
    loads = [p["loadavg_before"] for p in pairs if p["loadavg_before"] is not None]
    cmd = " ".join(["scripts/gate_evidence.py", *(argv if argv is not None else sys.argv[1:])])
    data = {
        "generated": started.isoformat(timespec="seconds"), "command": cmd.strip(),
        "machine": machine_facts(),
        "config": {"path": os.path.relpath(cfg_path.resolve(), ROOT)
                   if cfg_path.resolve().is_relative_to(ROOT) else str(cfg_path),
                   "perf": {k: v for k, v in perf.items() if k != "override"},
                   "overrides": perf.get("override", []),
                   "effective_factor": (effective.pop() if len(effective) == 1
                                        else sorted(effective))},
        "suite": {"repeat": args.repeat, "rounds": args.rounds, "iterations": args.iterations,
                  "compute_ms": round(compute_ms, 3), "targets": TARGETS, "params": PARAMS,
                  "levels": args.levels, "only_evidence_bench": args.only_evidence_bench,
                  "seed": args.seed},
        "timing": {"total_s": round(total, 1), "asv_runs": len(run_s),
                   "median_run_s": round(statistics.median(run_s), 2),
                   "reruns": sum(1 for label, _ in ws.runs if label == "rerun")},
        "load": {"median": statistics.median(loads) if loads else None,
                 "max": max(loads) if loads else None},
        "summary": summarise(pairs, args.targets, args.levels, perf["factor"]),
        "pairs": pairs,
    }
    if args.note:
        data["note"] = args.note
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / args.name).write_text(json.dumps(data, indent=1) + "\n")
    # The summary covers every evidence run kept in the folder, this one first.
    runs = [(args.name, data)] + [(f.name, json.loads(f.read_text()))
                                  for f in sorted(out.glob("gate_evidence*.json"))
                                  if f.name != args.name]
    (out / "README.md").write_text(readme(runs))
    s = data["summary"]
    print(f"A/A false positives: {s['aa']['failed_pairs']}/{s['aa']['pairs']}", file=sys.stderr)
    for target, levels in s["planted"].items():
        for level, r in levels.items():
            print(f"{target} {level}x: detected {r['detected']}/{r['pairs']} "
                  f"(median change {r['measured_change_median']})", file=sys.stderr)
    print(f"wrote {out / args.name} and {out / 'README.md'} in {total:.0f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
