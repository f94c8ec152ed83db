#!/bin/bash
# Session 25 call 6 (nvidia-h200, carry .whl; timing only): which instructions of the x prologue cost Q4_K's step
# (decode_divs.py), and which launches pay it (decode_prologue.py's xonly_big / xonly_small).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 250 python3 measurements/h200/session25/decode_divs.py $OUT/divs.json q4_k base,fastdiv,style1,both,base,fastdiv,style1,both > $OUT/divs.log 2>&1
echo "rc $?" >> $OUT/divs.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/divs.log | tail -10
timeout 200 python3 measurements/h200/session25/decode_prologue.py $OUT/split.json q4_k base,xonly_big,xonly_small,base,xonly_big,xonly_small > $OUT/split.log 2>&1
echo "rc $?" >> $OUT/split.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/split.log | tail -8
