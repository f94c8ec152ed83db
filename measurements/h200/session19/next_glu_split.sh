#!/bin/bash
# For the next session's first call, on branch glu-split (also session19/glu_split.patch): qgemv_ring's GLU launches
# with their last round of pairs split into gate and up warps (RING["split"]), Q8_0's captured decode against the
# ring as it is (session 19 call 2: 427.2 tok/s, fp16 256.6); the card test that it changes no number.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 240 python3 -m pytest -q -x -p no:cacheprovider tests/test_gguf_cuda.py -k "split_glu" > $OUT/test_split.log 2>&1
echo "rc $?" >> $OUT/test_split.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_split.log | tail -3
timeout 200 python3 measurements/h200/session17/decode_ring.py $OUT/decode.json q8_0 ring,ring:split=1 > $OUT/decode.log 2>&1
echo "rc $?" >> $OUT/decode.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/decode.log | tail -5
timeout 150 python3 measurements/h200/session18/timeline.py $OUT/timeline.json q8_0 ring ring:split=1 > $OUT/timeline.log 2>&1
echo "rc $?" >> $OUT/timeline.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/timeline.log | tail -14
