#!/bin/bash
# Session 18, call 5 (the machine still warm): the captured decode tests of quantized models and GGUF files, which
# call 2 cut at 100 s, with room to finish.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "captured" > $OUT/test_captured.log 2>&1
echo "rc $?" >> $OUT/test_captured.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_captured.log | tail -4
