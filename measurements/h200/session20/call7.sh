#!/bin/bash
# Session 20 call 7: the benchmark as users run it (bench.gguf_decode, int8 route) on the merged tree.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 330 python3 -m bench.gguf_decode --dots int8 --no-profile --out $OUT/gguf_decode.json > $OUT/gguf_decode.log 2>&1
echo "rc $?" >> $OUT/gguf_decode.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/gguf_decode.log | tail -25
