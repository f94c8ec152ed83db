#!/bin/bash
# Session 21 call 5: settings tuned before attn_cluster's EARLY, again on the merged tree: the ring's pre, Q4_K off
# the ring (qgemv_direct), the cluster's chunks of 64 or 128 positions rather than 32.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 330 python3 measurements/h200/session21/decode_tune.py $OUT/decode.json q4_k,q8_0 base,pre=2,formats=q8_0,chunks=64+128,base,chunks=128 > $OUT/decode.log 2>&1
echo "rc $?" >> $OUT/decode.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/decode.log | tail -14
