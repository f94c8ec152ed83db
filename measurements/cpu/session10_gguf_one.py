import json, os, sys, time
sys.path.insert(0, "/work/main")
impl = sys.argv[1]
from suites.bench_gguf import measure
t = time.time()
r = measure(impl, "cpu", "float32", "smollm2-135m-q4_1")
r["load1"] = os.getloadavg()[0]
print(json.dumps({"impl": impl, **r}))
