#!/bin/bash
# Session 26 call 2 (nvidia-h200, carry .whl): where the rest of Q4_K's x prologue goes (decode_probe.py, timing
# only), then test_qgemv_ring_equals_qgemv_direct on this tree (call 1 ran out of time before it).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 250 python3 measurements/h200/session26/decode_probe.py $OUT/probe.json q4_k base,xonly0,xonlyN,normfast,pre2,base,xonly0,normfast,pre2 > $OUT/probe.log 2>&1
echo "rc $?" >> $OUT/probe.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/probe.log | tail -12
# (ring_equals ran in the first try of this call: 208 passed)
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "captured or (fused_equals and int8)" > $OUT/test_rest.log 2>&1
echo "rc $?" >> $OUT/test_rest.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_rest.log | tail -4
