#!/bin/bash
# Session 17, call 3: which launch faults (call 2: qgemv_ring with the norm, misaligned address)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
which compute-sanitizer; ls /usr/local/cuda*/bin 2>/dev/null | head -3
for a in "direct norm" "ring none" "ring norm" "ring norm 2" "direct none"; do
  timeout 60 python3 measurements/h200/session17/ring_probe.py $a 2>&1 | grep -v "Warning\|excepthook\|Original exc\|^$" | tail -2
done
