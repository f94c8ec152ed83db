"""Alternating processes, engine then torch, per round: suites.bench_whisper.measure_decode(impl, "cpu", "float32", MODEL)
(median of 3 greedy decodes of 128 steps after a 4-token prompt); tok/s and the 1-minute load per child.

    python measurements/cpu/session11_audio_ab.py whisper:whisper-tiny 3
"""
import json, os, statistics, subprocess, sys
model, rounds = sys.argv[1], int(sys.argv[2])
code = ("import json,os,sys; from suites.bench_whisper import measure_decode; "
        "r=measure_decode(sys.argv[1],'cpu','float32',sys.argv[2]); r['load']=os.getloadavg()[0]; print(json.dumps(r))")
res = {"engine": [], "torch": []}
for r in range(rounds):
    row = []
    for impl in ("engine", "torch"):
        out = subprocess.run([sys.executable, "-c", code, impl, model], cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-2000:]); sys.exit(1)
        d = json.loads(out.stdout.strip().splitlines()[-1])
        res[impl].append(d["tokens_per_s"]); row.append(f"{impl} {d['tokens_per_s']:.1f} (load {d['load']:.2f})")
    print(f"round {r + 1}: " + ", ".join(row), flush=True)
rat = [a / b for a, b in zip(res["engine"], res["torch"])]
print(model, {k: round(statistics.median(v), 1) for k, v in res.items()}, "engine/torch per round", [round(x, 2) for x in rat], "median", round(statistics.median(rat), 2))
