#!/bin/bash
# Session 18, call 2: the captured decode step's timeline (timeline.py: %globaltimer stamps per block and warp,
# timing only) for fp16, Q4_K (qgemv_direct) and Q8_0 (qgemv_direct, qgemv_ring).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 500 python3 measurements/h200/session18/timeline.py $OUT/timeline.json fp16,q4_k,q8_0 direct ring > $OUT/timeline.log 2>&1
echo "rc $?" >> $OUT/timeline.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/timeline.log | tail -40
# session 17's review commit (smem_addr, quantise_x_after_wait; PTX identical) had not run its tests on a card
timeout 110 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "ring_equals and q8_0" > $OUT/test_ring.log 2>&1
echo "rc $?" >> $OUT/test_ring.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_ring.log | tail -3
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "captured" > $OUT/test_captured.log 2>&1
echo "rc $?" >> $OUT/test_captured.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_captured.log | tail -3
