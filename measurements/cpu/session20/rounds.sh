#!/bin/sh
# Alternating rounds: the engine at the branch point (SRC_BASE, a `git archive` of it), the engine of this
# branch, and transformers; each run one process under the CPU benchmark lock. Appends JSON lines to $OUT.
ROUNDS=${ROUNDS:-5}; OUT=${OUT:-rounds.jsonl}; SRC_BASE=${SRC_BASE:-/tmp/s20/base}
HERE=$(dirname "$0"); TREE=$(cd "$HERE/../../.." && pwd)  # this checkout
for i in $(seq "$ROUNDS"); do
  for run in "engine before $SRC_BASE" "engine after $TREE" "torch torch $TREE"; do
    set -- $run
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/taper_cpu_bench.lock \
      /work/venv/bin/python "$HERE/gguf_one.py" "$1" "$2" "$3" | sed "s/^{/{\"round\": $i, /" >> "$OUT"
  done
done
