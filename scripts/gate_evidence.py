"""Evidence that the regression gate works: its false-positive rate on A/A pairs, its detection
rate for planted slowdowns (on real asv results) and for planted numerical drift (on real
`taper verify` reports; scripts/gate_evidence_drift.py).

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
present, else reports/gate.toml, or --config) and its real confirming re-run: the suspects of
BASE's and HEAD's code measured again by the same asv harness, interleaved B/H/B/H, each round into
a fresh directory. Pairs of all scenarios are interleaved in a seeded
random order (and so is which side of a pair runs first), so that a change of the box's load over
the run spreads over every scenario.

The plantable benchmarks record 24 samples a side by default (--repeat): with 12, a BASE run with
a few samples slowed by a moment of contention kept a 25% slowdown below the U test's threshold.

Writes <out>/gate_evidence.json (every pair, every judged comparison, the raw samples of the
plantable benchmarks; --name for another file) and <out>/README.md, which summarises every
gate_evidence*.json kept in <out> (--readme-only rebuilds it without measuring).

    python scripts/gate_evidence.py                     # 20 A/A pairs, 10 per target and level
    python scripts/gate_evidence.py --aa-pairs 2 --planted-pairs 1 --levels 1.25 \\
        --targets compute --drift-weights 2 --out /tmp/ev   # the tiny mode of the test
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
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
sys.path.insert(0, str(ROOT / "scripts"))

from reports import stats  # noqa: E402
from bench.asv import bench_regex  # noqa: E402
from reports.gate import load_config, run_gate, settings_for  # noqa: E402
from engine.io.atomic import atomic_write_text as write_text_atomic  # noqa: E402
from reports.results import load_results  # noqa: E402
from gate_evidence_report import PARAMS, TARGETS, headline, readme, summarise  # noqa: E402

HARNESS = ROOT / "tests" / "data" / "asv_tiny" / "harness.py"
MACHINE = "gate-evidence"
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


def planted_factor(ws: Workspace, version: str) -> dict:
    """What the code of `version` plants, read back from its commit (the mechanism, not timing)."""
    text = git(ws.repo, "show", f"{ws.commits[version]}:planted.py")
    return {k: float(v) for k, v in (line.split(" = ") for line in text.splitlines() if line)}


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
    calls = []

    def measure(side, keys, results_dir):  # the gate's re-run: both sides, the same harness
        regex = bench_regex([(b, p) for _, b, p in keys])
        t = time.perf_counter()
        ws.measure("base" if side == "base" else version, Path(results_dir), bench=regex,
                   label="rerun")
        calls.append({"side": side, "seconds": round(time.perf_counter() - t, 2),
                      "fresh_dir": Path(results_dir).name})

    base_df, head_df = load_results(dirs["base"]), load_results(dirs["head"])
    t = time.perf_counter()
    result = run_gate(base_df, head_df, config, measure=measure, workdir=ws.root)
    gate_s = time.perf_counter() - t
    rows = []
    for c in result.judged:
        row = {"benchmark": c.benchmark, "params": c.params, "unit": c.unit,
               "base": c.base, "head": c.head, "change": round(c.change, 5),
               "verdict": c.verdict, "suspect": c.verdict in ("regression", "unconfirmed"),
               "samples": list(c.samples), "test": c.test}
        if c.benchmark in TARGETS.values():  # first-run samples of the plantable benchmarks
            row["samples_ms_base"] = samples_ms(base_df, c.benchmark, c.params)
            row["samples_ms_head"] = samples_ms(head_df, c.benchmark, c.params)
        rows.append(row)
    shutil.rmtree(dirs["base"]), shutil.rmtree(dirs["head"])
    return {"version": version, "commit": ws.commits[version][:10],
            "planted": planted_factor(ws, version), "order": order,
            "loadavg_before": load_before, "base_run_s": round(secs["base"], 2),
            "head_run_s": round(secs["head"], 2), "gate_s": round(gate_s, 2),
            "exit_code": result.exit_code, "reasons": result.reasons,
            "rerun": (result.rerun or {}) | {"calls": calls},
            "not_gated": len(result.by("not gated")),
            "regressions": [[c.benchmark, c.params] for c in result.by("regression")],
            "comparisons": rows}


def main(argv=None) -> int:
    import gate_evidence_drift

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
    ap.add_argument("--drift-weights", type=int, default=0,
                    help="plant drift in the first N weights only (default 0: every weight)")
    ap.add_argument("--no-drift", action="store_true", help="skip the numerical-drift evidence")
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

    out = Path(args.out)
    if args.readme_only:
        names = sorted(f.name for f in out.glob("gate_evidence*.json"))
        names.sort(key=lambda n: n != args.name)
        write_text_atomic(out / "README.md", readme(
            [(n, json.loads((out / n).read_text())) for n in names]))
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
                  f"regressions {len(pair['regressions'])} re-run rounds "
                  f"{len(pair['rerun']['calls'])} load {pair['loadavg_before']}",
                  file=sys.stderr, flush=True)
        compute_ms = min(c["base"] for p in pairs for c in p["comparisons"]
                         if c["benchmark"] == TARGETS["compute"]) * 1e3
    finally:
        subprocess.run(["git", "worktree", "prune"], cwd=root / "repo", capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
    drift = None if args.no_drift else gate_evidence_drift.run(
        config, limit=args.drift_weights or None)
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
                   "overrides": perf.get("override", []), "drift": config["drift"],
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
    if drift is not None:
        data["drift"] = drift
    if args.note:
        data["note"] = args.note
    write_text_atomic(out / args.name, json.dumps(data, indent=1) + "\n")
    # The summary covers every evidence run kept in the folder, this one first.
    runs = [(args.name, data)] + [(f.name, json.loads(f.read_text()))
                                  for f in sorted(out.glob("gate_evidence*.json"))
                                  if f.name != args.name]
    write_text_atomic(out / "README.md", readme(runs))
    print(headline(args.name, data).strip("*"), file=sys.stderr)
    print(f"wrote {out / args.name} and {out / 'README.md'} in {total:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
