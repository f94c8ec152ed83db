#!/bin/bash
# Session 22 call 2 (main, timing only, wrong numbers): session 19's probe on the tree with EARLY attention: the
# step with the rotary_cache launches left out (the upper bound of folding the rotary into the q/k/v GEMV's
# epilogue, where the attention would launch behind the GEMV as in this probe).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 250 python3 measurements/h200/session19/decode_skip.py $OUT/skip.json q4_k,q8_0 base,norot,base,norot,noattn > $OUT/skip.log 2>&1
echo "rc $?" >> $OUT/skip.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/skip.log | tail -14
