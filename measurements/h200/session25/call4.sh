#!/bin/bash
# Session 25 call 4 (nvidia-h200, carry .whl; timing only, wrong numbers): which part of the quantized GEMVs' x
# prologue Q4_K's step pays for (call 3: x loaded but neither normed nor quantised, 678 -> 760 tok/s; Q8_0 +1%).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 400 python3 measurements/h200/session25/decode_prologue.py $OUT/prologue.json q4_k base,nonorm,noquant,xonly,base,nonorm,noquant,xonly > $OUT/prologue.log 2>&1
echo "rc $?" >> $OUT/prologue.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/prologue.log | tail -16
