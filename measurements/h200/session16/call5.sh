#!/bin/bash
# Session 16, call 5: the rotary + cache writes joined to the decode attention (attn_rotary_cluster, the plan's
# RotaryAttention): its tests (bit for bit against rotary_cache then attention; the plan; captured decodes equal
# uncaptured ones), then the captured decode with the two as two launches and as one (decode_rotary.py).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 110 python3 -m pytest -q -p no:cacheprovider tests/test_decode_fuse.py tests/test_capture.py tests/test_pdl_cuda.py \
    tests/test_capture_models.py > $OUT/test_decode.log 2>&1
echo "rc $?" >> $OUT/test_decode.log; grep -E "passed|failed|Error|error" $OUT/test_decode.log | tail -15
timeout 230 python3 measurements/h200/session16/decode_rotary.py $OUT/decode_rotary.json q4_k,q8_0 > $OUT/decode_rotary.log 2>&1
echo "rc $?" >> $OUT/decode_rotary.log; grep -v Warning $OUT/decode_rotary.log | grep -v "first = "
