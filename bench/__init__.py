"""Running measurements: everything that launches benchmarks or probes the machine, kept out of the
command line (taper/commands/ only parses and calls one function here) and out of asv's
benchmark_dir (suites/ holds the benchmarks only).

Modules
-------
run        `taper bench`: selection, runner choice, the engine vs torch table and the failures
asv        one asv invocation (`-E existing:<this python>`), results published atomically; also the
           temporary git worktree the gate measures a ref in
fallback   the runner without asv: asv's discovery and timing rules, asv-format results
discovery  benchmark discovery as asv_runner does it, benchmarks.json entries
measure    one parameter set timed in this process (asv_runner's rules), peak RSS
worker     the killable child process the fallback runner runs each parameter set in
probes     machine and card facts, in one place: cpu, RAM, card, driver, clocks, CUDA usability,
           device copy bandwidth (copy_gb_per_s), NVML utilisation; the environment sidecar
claims     `taper claims`: the claims re-measured in child processes, one per implementation
kernel_profile, eager_profile   GPU scripts: GEMV variants against bytes moved; host time of eager ops
tp_decode  tensor-parallel decode (engine.distributed): TP=N against TP=1, 70B decode speed, all-reduce cost

Import direction: bench imports engine, suites, reports (and impls); nothing imports bench except
taper/, the tests, scripts, and suites for bench.probes (a leaf module).
"""
