#!/bin/bash
# Session 20 call 6: card tests of the ring (every ring_equals case, pre = 1 now the formats' own) and of the
# captured decode of quantized models and GGUF files (both formats now on qgemv_ring).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "ring_equals or x_in_registers" > $OUT/test_ring.log 2>&1
echo "rc $?" >> $OUT/test_ring.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_ring.log | tail -3
timeout 270 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "captured or decode or gguf_file" > $OUT/test_captured.log 2>&1
echo "rc $?" >> $OUT/test_captured.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_captured.log | tail -3
