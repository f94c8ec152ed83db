#!/bin/bash
# Prepared in session 26 for the next session's first call (nvidia-h200, carry .whl): whether the approximated norm
# statistic's +20 tok/s is its code or its data (session26/decode_data.py, timing only), then the rest of
# test_gguf_cuda's int8/captured cases that session 26's calls ran out of time for.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 250 python3 measurements/h200/session26/decode_data.py $OUT/data.json q4_k ieee,ieee_ulp,fast,ieee,ieee_ulp,fast > $OUT/data.log 2>&1
echo "rc $?" >> $OUT/data.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/data.log | tail -8
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py \
  -k "captured or (fused_equals and int8) or (edge_shapes and int8)" > $OUT/test.log 2>&1
echo "rc $?" >> $OUT/test.log; grep -v "excepthook\|Original exc\|^$" $OUT/test.log | tail -6
