#!/bin/bash
# Session 19 call 1: the L2 prefetch of each warp's first pairs (branch l2-prefetch, on norm-first): decode sweep,
# the test that the prefetch changes no number; the timeline at the best setting is a later call.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 330 python3 measurements/h200/session19/decode_l2.py $OUT/decode.json q8_0,q4_k 0,1,2,3 > $OUT/decode.log 2>&1
echo "rc $?" >> $OUT/decode.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/decode.log | tail -10
timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_gguf_cuda.py -k "l2_prefetch" > $OUT/test_prologue.log 2>&1
echo "rc $?" >> $OUT/test_prologue.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_prologue.log | tail -3
