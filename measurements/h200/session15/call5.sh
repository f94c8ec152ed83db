#!/bin/bash
# Session 15, call 5 (the last of the session's device time): where a launch takes more than one wave, the one-wave
# settings (B = 2, P = 1: merged, 16 warps a block with two batches each in flight) rather than B = 3, P = 0 (Q4_K:
# rb=2+rp=1) or P = 0 (Q8_0: op=1); the same kernels the one-wave launches already run.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 280 python3 measurements/h200/session15/decode_variants.py $OUT/variants.json q4_k,q8_0 base rb=2+rp=1+op=1 \
    > $OUT/variants.log 2>&1; echo "rc $?" >> $OUT/variants.log; grep -v Warning $OUT/variants.log | grep -v "first = "
