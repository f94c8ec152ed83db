#!/bin/bash
# Session 22 call 1 (prepared in session 21 as measurements/h200/session22_first_call.sh): run on the tree with
# `git apply measurements/h200/session21/fold_preload.patch` (reverted after: the fold lost again).
# For the next session's first call, with `measurements/h200/session21/fold_preload.patch` applied (git apply): the
# rotary folded into attn_cluster (session 21's vec version) with each block's K and V slices loaded into registers
# before pdl_wait (PRELOAD, chunks of <= 8 rows a thread), so after the wait only q's, cos/sin's and the step's raw
# K/V row's loads remain (one L2 round trip where the unfolded attention has two). Card cases first (NVRTC compiles
# every variant: give it time), then the decode fold1 / fold0 alternating, fp16 and both formats.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 260 python3 -m pytest -q -x -p no:cacheprovider tests/test_decode_fuse.py -k "rotary_attention or (captured_decode and llama)" > $OUT/test_fold.log 2>&1
echo "rc $?" >> $OUT/test_fold.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_fold.log | tail -3
timeout 200 python3 measurements/h200/session21/decode_fold.py $OUT/decode.json q4_k,q8_0 fold1,fold0,fold1,fold0 > $OUT/decode.log 2>&1
echo "rc $?" >> $OUT/decode.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/decode.log | tail -14
