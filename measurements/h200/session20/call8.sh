#!/bin/bash
# Session 20 call 8 (main after the merge; timing only, wrong numbers): session 19's probe again under the ring's
# pre = 1 (both formats on qgemv_ring): the step with the rotary_cache launches left out, and with the attention's.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 200 python3 measurements/h200/session19/decode_skip.py $OUT/skip.json q8_0,q4_k base,norot,noattn > $OUT/skip.log 2>&1
echo "rc $?" >> $OUT/skip.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/skip.log | tail -10
