#!/bin/bash
# Session 21 call 6: the captured decodes of quantized models and GGUF files on the merged tree (attn_cluster EARLY).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 280 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "captured or decode or gguf_file" > $OUT/test_captured.log 2>&1
echo "rc $?" >> $OUT/test_captured.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_captured.log | tail -4
