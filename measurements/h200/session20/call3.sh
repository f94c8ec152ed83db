#!/bin/bash
# Session 20 call 3 (ring-pre with Q8_0's own pre = 1): Q8_0 at pre = 1 against all S, alternating (call 2's order
# was S, 2, 1, 0 on one model); Q4_K on qgemv_direct (its default) against the ring at pre = S, 1, 2.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 230 python3 measurements/h200/session20/decode_steps.py $OUT/decode_q8.json q8_0 s1,s1:pre=9,s1,s1:pre=9 once > $OUT/decode_q8.log 2>&1
echo "rc $?" >> $OUT/decode_q8.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/decode_q8.log | tail -6
timeout 230 python3 measurements/h200/session20/decode_steps.py $OUT/decode_q4.json q4_k s1,s1:formats=q4_k+q8_0:pre=9,s1:formats=q4_k+q8_0:pre=1,s1:formats=q4_k+q8_0:pre=2 once > $OUT/decode_q4.log 2>&1
echo "rc $?" >> $OUT/decode_q4.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/decode_q4.log | tail -6
