#!/bin/bash
# Session 21 call 3: why the fold lost on the quantized decodes (call 2): the fold without its K/V prefetches
# before pdl_wait (nopf; they run during the q/k/v GEMV now), and the fold with the ring's pre = 2.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 400 python3 measurements/h200/session21/decode_fold.py $OUT/decode.json q8_0,q4_k fold0,fold1,fold1:nopf,fold1:pre=2,fold0,fold1:nopf > $OUT/decode.log 2>&1
echo "rc $?" >> $OUT/decode.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/decode.log | tail -20
