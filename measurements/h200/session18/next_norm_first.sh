#!/bin/bash
# For the next session's first call, on a tree with norm_first.patch applied (branch norm-first): the card tests
# of the prologue's kernels, the captured decode (compare: session 18 call 1, qgemv_direct Q4_K 644.7, ring Q8_0
# 418.8 tok/s; sessions 16-18 agree within 0.3%), then the timeline of the norm launches' prologues.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 200 python3 measurements/h200/session17/decode_ring.py $OUT/decode.json q8_0,q4_k direct,ring > $OUT/decode.log 2>&1
echo "rc $?" >> $OUT/decode.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/decode.log | tail -8
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "ring_equals or x_in_registers" > $OUT/test_prologue.log 2>&1
echo "rc $?" >> $OUT/test_prologue.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_prologue.log | tail -3
timeout 150 python3 measurements/h200/session18/timeline.py $OUT/timeline.json q8_0,q4_k direct ring > $OUT/timeline.log 2>&1
echo "rc $?" >> $OUT/timeline.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/timeline.log | grep -v "^N=" | tail -12
