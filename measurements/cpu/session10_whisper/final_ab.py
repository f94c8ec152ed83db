"""Alternating processes: engine at the session-start tree, engine at this branch, torch; each runs
suites.bench_whisper.measure_decode(impl, 'cpu', 'float32', model) under nice -n -20; per round tok/s and load."""
import json, os, statistics, subprocess, sys
model, rounds = sys.argv[1], int(sys.argv[2])
branch = sys.argv[3] if len(sys.argv) > 3 else "/work/wt/cpu-whisper3"
code = ("import json,os,sys; from suites.bench_whisper import measure_decode; "
        "r=measure_decode(sys.argv[1],'cpu','float32',sys.argv[2]); r['load']=os.getloadavg()[0]; print(json.dumps(r))")
variants = [("engine@90632c8", "engine", "/tmp/cw3/base"), ("engine@branch", "engine", branch), ("torch", "torch", branch)]
res = {v[0]: [] for v in variants}
for r in range(rounds):
    row = []
    for name, impl, tree in variants:
        env = dict(os.environ, PYTHONPATH=tree)
        out = subprocess.run(["nice", "-n", "-20", "/work/venv/bin/python", "-c", code, impl, model], cwd=tree, env=env,
                             capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-2000:]); sys.exit(1)
        d = json.loads(out.stdout.strip().splitlines()[-1])
        res[name].append(d["tokens_per_s"]); row.append(f"{name} {d['tokens_per_s']:.1f} (load {d['load']:.2f})")
    print(f"round {r + 1}: " + ", ".join(row), flush=True)
for name in res:
    print(f"{name}: median {statistics.median(res[name]):.1f} tok/s over {rounds} rounds: {[round(x, 1) for x in res[name]]}")
for name in list(res)[:2]:
    rat = [a / b for a, b in zip(res[name], res["torch"])]
    print(f"{name}/torch per round {[round(x, 2) for x in rat]} median {statistics.median(rat):.2f}")
