#!/bin/bash
# Session 25 call 5 (nvidia-h200, carry .whl; timing only): qgemv_ring as one block of 16 warps an SM with launch
# bounds that let it keep 128 registers a thread (decode_w16.py), x then quantised once an SM.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 420 python3 measurements/h200/session25/decode_w16.py $OUT/w16.json q4_k,q8_0 base,w16,w16x,base,w16 > $OUT/w16.log 2>&1
echo "rc $?" >> $OUT/w16.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/w16.log | tail -16
