#!/bin/bash
# Session 17, call 5: qgemv_ring with U units a lane a batch (Q4_K's per-batch wait / issue over two units), every
# format's own settings (Q8_0: two blocks of 8 warps an SM, the default now): tests, the captured decode, the captured
# decode tests of quantized models.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "ring_equals" > $OUT/test_ring.log 2>&1
echo "rc $?" >> $OUT/test_ring.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_ring.log | tail -4
timeout 200 python3 measurements/h200/session17/decode_ring.py $OUT/decode_ring.json q4_k,q8_0 direct,ring,ring:u=1,ring:s=2 > $OUT/decode_ring.log 2>&1
echo "rc $?" >> $OUT/decode_ring.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/decode_ring.log | tail -12
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "captured" > $OUT/test_captured.log 2>&1
echo "rc $?" >> $OUT/test_captured.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_captured.log | tail -4
