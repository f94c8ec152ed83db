#!/bin/sh
# Alternating before/after decode processes (kq_decode.py) on one GGUF, each under the bench lock:
# `sh kq_rounds.sh BEFORE_TREE AFTER_TREE FILE.gguf ROUNDS STEPS` (a tree: a directory holding engine/).
for i in $(seq "$4"); do
  for t in "$1" "$2"; do
    flock /tmp/taper_cpu_bench.lock env PYTHONPATH="$t" /work/venv/bin/python "$(dirname "$0")/kq_decode.py" "$3" "$5"
  done
done
