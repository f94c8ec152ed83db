#!/bin/bash
# Session 21 call 2: rotary_cache folded into attn_cluster (rotary_attention): its card cases against the
# composition, the captured decodes of every family with the fold on and off, then the decode fold1 / fold0
# alternating.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 240 python3 -m pytest -q -x -p no:cacheprovider tests/test_decode_fuse.py > $OUT/test_fold.log 2>&1
echo "rc $?" >> $OUT/test_fold.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_fold.log | tail -15
timeout 300 python3 measurements/h200/session21/decode_fold.py $OUT/decode.json q8_0,q4_k fold1,fold0,fold1,fold0 > $OUT/decode.log 2>&1
echo "rc $?" >> $OUT/decode.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/decode.log | tail -14
