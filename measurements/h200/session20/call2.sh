#!/bin/bash
# Session 20 call 2 (branch ring-pre: step-ops + qgemv_ring issuing only `pre` of its S batches before pdl_wait,
# the rest once x's loads are out): the card test that it changes no number, Q8_0's decode at pre = S (as main),
# 2, 1, 0, and the timeline of the ring at pre = S, 1, 0.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_gguf_cuda.py -k "ring_equals and pre" > $OUT/test_pre.log 2>&1
echo "rc $?" >> $OUT/test_pre.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_pre.log | tail -3
timeout 200 python3 measurements/h200/session20/decode_steps.py $OUT/decode.json q8_0 s1,s1:pre=2,s1:pre=1,s1:pre=0 once > $OUT/decode.log 2>&1
echo "rc $?" >> $OUT/decode.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/decode.log | tail -6
timeout 180 python3 measurements/h200/session18/timeline.py $OUT/timeline.json q8_0 ring ring:pre=1 ring:pre=0 > $OUT/timeline.log 2>&1
echo "rc $?" >> $OUT/timeline.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/timeline.log | grep "==\|N=\|sums"
