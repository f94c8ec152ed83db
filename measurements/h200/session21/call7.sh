#!/bin/bash
# Session 21 call 7 (branch fold-vec: rotary_attention.patch + 16-byte loads of q's / the step row's slice, its
# partner, cos and sin): the fold's card cases, then the decode fold1 / fold0 alternating.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 100 python3 -m pytest -q -x -p no:cacheprovider tests/test_decode_fuse.py -k "rotary_attention" > $OUT/test_fold.log 2>&1
echo "rc $?" >> $OUT/test_fold.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_fold.log | tail -3
timeout 170 python3 measurements/h200/session21/decode_fold.py $OUT/decode.json q4_k,q8_0 fold1,fold0,fold1,fold0 > $OUT/decode.log 2>&1
echo "rc $?" >> $OUT/decode.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/decode.log | tail -14
