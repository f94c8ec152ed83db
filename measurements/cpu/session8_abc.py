"""Same-run A/B/C (session 8): engine at a base tree copy (/tmp/cb/base, from `git archive cf24db4`), engine at the
branch worktree, torch; each a child process (bench.cpu_ab --child), in turn. Paths are this session's; edit `dirs`."""
import json, os, statistics, subprocess, sys
bench, params, calls, rounds = sys.argv[1], sys.argv[2].split(), sys.argv[3], int(sys.argv[4])
dirs = {"engine@base": ("/tmp/cb/base", "engine"), "engine@head": ("/work/wt/cpu-bert", "engine"), "torch": ("/work/wt/cpu-bert", "torch")}
rows = {k: [] for k in dirs}
for r in range(rounds):
    for name, (d, impl) in dirs.items():
        out = subprocess.run([sys.executable, "-m", "bench.cpu_ab", bench, *params, "--calls", calls, "--child", impl],
                             capture_output=True, text=True, cwd=d)
        if out.returncode:
            print(out.stderr[-2000:]); sys.exit(1)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        rows[name].append(res)
        print(f"round {r+1} {name:12s} median {res['median_ms']:8.1f} ms  min {res['min_ms']:8.1f}  load {res['load']:.2f}", flush=True)
med = {k: statistics.median(x["median_ms"] for x in v) for k, v in rows.items()}
rb = [a["median_ms"] / c["median_ms"] for a, c in zip(rows["engine@base"], rows["torch"])]
rh = [a["median_ms"] / c["median_ms"] for a, c in zip(rows["engine@head"], rows["torch"])]
print(f"{bench} {' '.join(params)}: base {med['engine@base']:.1f} ms, head {med['engine@head']:.1f} ms, torch {med['torch']:.1f} ms; "
      f"base/torch per round {', '.join(f'{v:.2f}' for v in rb)} (median {statistics.median(rb):.2f}); "
      f"head/torch {', '.join(f'{v:.2f}' for v in rh)} (median {statistics.median(rh):.2f})")
