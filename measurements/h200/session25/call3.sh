#!/bin/bash
# Session 25 call 3 (nvidia-h200, carry .whl; timing only, wrong numbers): what the quantized GEMVs' prologue (x
# normed and quantised after the wait) costs the captured decode step (decode_prologue.py).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 400 python3 measurements/h200/session25/decode_prologue.py $OUT/prologue.json q4_k,q8_0 base,xonly,nox,base,xonly,nox > $OUT/prologue.log 2>&1
echo "rc $?" >> $OUT/prologue.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/prologue.log | tail -16
