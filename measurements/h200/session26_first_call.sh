#!/bin/bash
# Prepared in session 25 for the next session's first call (nvidia-h200, carry .whl): div127_rn's scaling of inputs
# below 2^-100 (added after session 25's last call; host-checked under FTZ/DAZ in CI) on the card, every finite
# float32 against __fdiv_rn / __frcp_rn; the rest of test_gguf_cuda's int8-route and ring cases and the captured
# decodes that session 25's call 7 ran out of time for; then the issue's benchmark on this tree.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "ieee" > $OUT/test_ieee.log 2>&1
echo "rc $?" >> $OUT/test_ieee.log; tail -3 $OUT/test_ieee.log
timeout 170 python3 -m bench.gguf_decode --no-profile --out $OUT/gguf_decode.json > $OUT/gguf_decode.log 2>&1
echo "rc $?" >> $OUT/gguf_decode.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/gguf_decode.log | tail -5
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py \
  -k "ring_equals or x_in_registers or (edge_shapes and int8) or (fused_equals and int8) or captured" > $OUT/test.log 2>&1
echo "rc $?" >> $OUT/test.log; grep -v "excepthook\|Original exc\|^$" $OUT/test.log | tail -6
