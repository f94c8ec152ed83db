"""`taper bench`: run a chosen part of the asv suites here and print every implementation side by side.

With asv importable (and a git checkout), the run is asv's own, in this interpreter, through
bench.asv (one environment, one progress line per benchmark, results published atomically).
Without asv (the GPU box), bench.fallback runs the same suite classes in killable worker processes
and writes asv-format results. Either way the card, driver and clocks are written beside
machine.json (bench.probes), and the table printed at the end comes from reports.compare: engine,
torch and their ratio (above 1: the engine is better), then every failed parameter set.

Exit codes: 0 everything selected ran (or skipped with a reason); 1 some benchmark failed, or
nothing was measured, or asv itself failed; 2 bad usage (an unknown suite, a bad regex, --device
cuda without a usable GPU, a damaged results file).
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from bench.discovery import ROOT

SUITES = {"ops": "bench_ops", "pool": "bench_pool", "load": "bench_load", "llm": "bench_llm",
          "models": "bench_models", "encoders": "bench_encoders",
          "detect": "bench_detect", "whisper": "bench_whisper", "encodec": "bench_encodec",
          "diffusion": "bench_diffusion", "gguf": "bench_gguf"}


def say(msg: str) -> None:
    print(f"taper bench: {msg}", file=sys.stderr, flush=True)


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


# ---- tables ------------------------------------------------------------------------------------------------
def _this_run(results: Path, machine: str, commit: str, regex):
    from reports.results import load_results

    df = load_results(results)
    df = df[(df["machine"] == machine) & (df["commit"] == commit)]
    if regex:
        rx = re.compile(regex)
        labels = df["benchmark"] + "(" + df["params_repr"] + ")"
        df = df[[bool(rx.search(lab)) for lab in labels]]
    return df


def tables(df) -> list[tuple[str, object]]:
    """(title, display frame) pairs for this run, one per suite and benchmark class: every
    implementation measured side by side, and the engine against the best other one."""
    from reports.compare import display_wide, wide

    df = df[df["status"] == "ok"]
    out = []
    if df.empty or "impl" not in df.columns or not (df["impl"] == "engine").any():
        return out
    groups = df["suite"].str.removeprefix("bench_") + "." + df["name"].str.split(".").str[0]
    for group, part in df.groupby(groups, sort=True):
        w = wide(part)
        w = w[w["impls"].map(lambda i: "engine" in i and len(i) > 1)]
        if w.empty:
            continue
        others = [i for i in dict.fromkeys(i for row in w["impls"] for i in row) if i != "engine"]
        out.append((f"{group}: engine vs {', '.join(others)}", display_wide(w.reset_index(drop=True))))
    return out


def failures_table(df, reasons: dict):
    """The failed parameter sets of this run: benchmark, parameters, reason (None when none failed)."""
    import pandas as pd

    failed = df[df["status"] == "failed"]
    if failed.empty:
        return None
    rows = []
    for _, r in failed.iterrows():
        label = f"{r['benchmark']}({r['params_repr']})" if r["params_repr"] else r["benchmark"]
        why = reasons.get(label) or reasons.get(r["benchmark"]) or "see the asv log"
        rows.append({"benchmark": r["benchmark"], "parameters": r["params_repr"],
                     "reason": why.strip().splitlines()[-1][:160] if why.strip() else why})
    return pd.DataFrame(rows, columns=["benchmark", "parameters", "reason"])


# ---- the run -------------------------------------------------------------------------------------------------
def _check_devices(args) -> str | None:
    """Why the devices asked for cannot run here (None when they can)."""
    if args.device and "cuda" in args.device:
        from bench.probes import cuda_status
        ok, why = cuda_status()
        if not ok:
            others = [d for d in args.device if d != "cuda"]
            if not others:
                return f"--device cuda: {why}; nothing would be measured"
            say(f"warning: --device cuda: {why}; the cuda benchmarks will be skipped")
    return None


def _measure(runner, root, results, machine, commit, regex, args, env) -> tuple[dict, int]:
    """Run the benchmarks; (failure reasons by label, number of failed sets or -1 when unknown)."""
    if runner == "asv":
        from bench.asv import AsvRunner, python

        asv = AsvRunner(root, results, machine=machine, extra_env=env, quick=args.quick,
                        launch_method=args.launch_method, progress=lambda line: print(line, file=sys.stderr, flush=True))
        asv.ensure_machine()
        say(f"asv run -E existing:{python()} --bench {regex!r} (full output: {results / 'taper-asv.log'})")
        run = asv.run(commit, regex)
        return {name: f"asv: failed (details in {run.log})" for name in run.failed}, len(run.failed)
    from bench.fallback import run_fallback

    s = run_fallback(results, machine, commit, regex, args.quick, args.tiny, root=root)
    say(f"fallback runner: {s['ok']} ok, {s['skipped']} skipped, {s['failed']} failed of {s['selected']} selected")
    if s["selected"] == 0:
        raise LookupError("nothing matched the selection")
    return s["failures"], s["failed"]


def main(args, root: Path = ROOT) -> int:
    """`taper bench` with parsed arguments, on the checkout at `root` (its asv.conf.json and benchmark
    package; this repository by default); returns the exit code."""
    from bench.asv import AsvRunError
    from bench.probes import write_sidecar
    from reports.compare import LEGEND, to_markdown
    from reports.results import ResultsError

    try:
        regex = selection_regex(args)
    except (ValueError, re.error) as e:
        say(str(e))
        return 2
    why = _check_devices(args)
    if why:
        say(why)
        return 2
    results = Path(args.results).resolve()
    machine = machine_name(args)
    commit = git_commit(root)
    runner = args.runner
    if runner == "auto":
        runner = "asv" if (asv_available() and commit) else "fallback"
    if runner == "asv" and not asv_available():
        say("asv is not importable here; use --runner fallback")
        return 2
    if runner == "asv" and commit is None:
        say("asv needs a git checkout; use --runner fallback")
        return 2
    if commit is None:
        commit = os.environ.get("TAPER_COMMIT") or tree_hash(root)
        say(f"no git here; results recorded under the source-tree hash {commit[:10]}")
    elif dirty(root):
        say(f"note: engine/ or suites/ have uncommitted changes; results are recorded under HEAD {commit[:10]} "
            "but measure the working tree")
    env = {"TAPER_BENCH_QUICK": "1" if args.tiny else ""}
    if runner == "fallback" and "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules:
        # one worker runs every implementation: torch's OpenMP workers would otherwise busy-wait after
        # each parallel region and take the cores from numpy's BLAS threads (seen by bench_llm)
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        say("fallback runner: OMP_WAIT_POLICY=PASSIVE (set it yourself to override)")
    t0 = time.time()
    try:
        reasons, n_failed = _measure(runner, root, results, machine, commit, regex, args, env)
    except (ResultsError, AsvRunError) as e:
        say(str(e))
        return 2 if isinstance(e, ResultsError) else 1
    except LookupError as e:
        say(str(e))
        return 2
    path, warning = write_sidecar(results, machine)
    if warning:
        say(f"warning: {warning}")
    say(f"{runner} run took {time.time() - t0:.0f} s; results in {results} (machine {machine}, commit {commit[:10]}); "
        f"environment in {path}")
    try:
        df = _this_run(results, machine, commit, regex)
    except ResultsError as e:
        say(str(e))
        return 1
    measured = int((df["status"] == "ok").sum())
    failed = failures_table(df, reasons)
    code = 1 if (n_failed or failed is not None) else 0
    if measured == 0:
        say("nothing was measured: every selected benchmark was skipped or failed")
        code = 1
    if args.no_table:
        return code
    md = []
    shown = tables(df)
    if not shown:
        print("no engine/torch pair in the results of this selection and commit (all skipped or failed, "
              "or only one implementation selected)")
    for title, table in shown:
        print(f"\n{title} ({machine})")
        print(table.to_string(index=False))
        md += [f"### {title} ({machine})", "", to_markdown(table), ""]
    if shown:
        print("\n" + LEGEND)
    if failed is not None:
        print(f"\nFAILED ({len(failed)} parameter sets, {machine})")
        print(failed.to_string(index=False))
        md += [f"### failed ({machine})", "", to_markdown(failed), ""]
    if args.markdown:
        from engine.io.atomic import atomic_write_text
        atomic_write_text(args.markdown, "\n".join(md + ([LEGEND, ""] if shown else [])))
    return code
