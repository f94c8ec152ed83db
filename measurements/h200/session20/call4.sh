#!/bin/bash
# Session 20 call 4 (ring-pre, both formats on qgemv_ring at pre = 1): the ring's other settings again under pre = 1.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 280 python3 measurements/h200/session20/decode_steps.py $OUT/decode.json q8_0,q4_k s1,s1:s=2,s1:u=2,s1:u=1,s1:per_sm=1 once > $OUT/decode.log 2>&1
echo "rc $?" >> $OUT/decode.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/decode.log | tail -12
