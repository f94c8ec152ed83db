#!/bin/bash
# Session 22 call 4: the GGUF decode benchmark as users run it now that int8 is the CUDA default
# (`python -m bench.gguf_decode --no-profile`, its default --dots int8) beside the float route in the same run, then
# the captured decodes of quantized models and GGUF files (both routes) that call 3's 150 s cut short.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 330 python3 -m bench.gguf_decode --no-profile --dots int8,float --out $OUT/gguf_decode.json > $OUT/gguf_decode.log 2>&1
echo "rc $?" >> $OUT/gguf_decode.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/gguf_decode.log | tail -12
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "captured" > $OUT/test_captured.log 2>&1
echo "rc $?" >> $OUT/test_captured.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_captured.log | tail -3
