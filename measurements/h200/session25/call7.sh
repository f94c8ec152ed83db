#!/bin/bash
# Session 25 call 7 (nvidia-h200, carry .whl): the x prologue's branch-free, correctly rounded scale and reciprocal
# (quant_span.cuh's div127_rn / rcp_rn) and qgemv_ring's norm style compiled in: the benchmark on this tree,
# then the card tests: every finite float32 against the intrinsics, ring = direct bit for bit (every norm style),
# the int8 route against numpy_quant.qdot_int8, the captured decodes of quantized models and GGUF files.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 160 python3 -m bench.gguf_decode --no-profile --out $OUT/gguf_decode.json > $OUT/gguf_decode.log 2>&1
echo "rc $?" >> $OUT/gguf_decode.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/gguf_decode.log | tail -5
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py \
  -k "ieee or ring_equals or int8_route_equals or x_in_registers" > $OUT/test.log 2>&1
echo "rc $?" >> $OUT/test.log; grep -v "excepthook\|Original exc\|^$" $OUT/test.log | tail -6
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "captured" > $OUT/test_captured.log 2>&1
echo "rc $?" >> $OUT/test_captured.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_captured.log | tail -4
