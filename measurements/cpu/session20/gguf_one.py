"""One process, one implementation: session 10's gguf_one.py with this worktree's (or --src) tree first on
sys.path. `python gguf_one.py engine|torch [LABEL] [SRC]`: SRC is a checkout of the tree to import (default: this
checkout); the JSON line names the engine files actually imported."""
import json, os, sys, time
src = sys.argv[3] if len(sys.argv) > 3 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
sys.path.insert(0, src)
impl = sys.argv[1]
from suites.bench_gguf import measure
import engine
t = time.time()
r = measure(impl, "cpu", "float32", "smollm2-135m-q4_1")
r["load1"] = os.getloadavg()[0]
print(json.dumps({"impl": impl, "label": sys.argv[2] if len(sys.argv) > 2 else impl,
                  "engine_src": os.path.dirname(os.path.dirname(engine.__file__)), **r}))
