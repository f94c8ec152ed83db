#!/usr/bin/env bash
# Two pytest jobs and two benchmarks on one nvidia-h200-x2 call (each job sees one GPU):
#   GPU 0: T0 (test files), then B0 (a command);  GPU 1: T1, then B1.  Logs under $OUT/run, packed in run.tgz.
#   On a one-GPU machine the two jobs run one after the other on GPU 0.
#   T0="tests/a.py" T1="tests/b.py" B0="python3 -m bench.x --out \$R/x.json" bash scripts/h200_tests.sh
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export R=$OUT/run
mkdir -p "$R"
GPUS=$(nvidia-smi -L | wc -l)
job() {  # GPU, tests, bench
    export CUDA_VISIBLE_DEVICES=$(( $1 % GPUS ))
    if [ -n "$2" ]; then  # no test files: no pytest (an empty list would collect the whole suite)
        ENGINE_DEVICE=cuda timeout "${TEST_BUDGET:-240}" python3 -m pytest -q -p no:cacheprovider -rfE $2 > "$R/tests$1.log" 2>&1
        echo "tests rc=$?" >> "$R/tests$1.log"
    fi
    [ -n "$3" ] && { bash -c "$3" > "$R/bench$1.log" 2>&1; echo "bench rc=$?" >> "$R/bench$1.log"; }
}
if [ "$GPUS" -ge 2 ]; then
    job 0 "${T0:-}" "${B0:-}" &
    job 1 "${T1:-}" "${B1:-}" &
    wait
else
    job 0 "${T0:-}" "${B0:-}"
    job 1 "${T1:-}" "${B1:-}"
fi
tail -n 4 "$R"/tests*.log
tar czf "$OUT/run.tgz" -C "$OUT" run
