#!/bin/bash
# Session 18, call 3: the timeline again, now of captured steps (call 2's stamped steps were the eager ones after a
# fresh start) and with a record counter an SM (call 2's one global counter serialised every block's stamp).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 400 python3 measurements/h200/session18/timeline.py $OUT/timeline.json q4_k,q8_0,fp16 direct ring > $OUT/timeline.log 2>&1
echo "rc $?" >> $OUT/timeline.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/timeline.log | tail -40
