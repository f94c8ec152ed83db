#!/bin/bash
# Session 20 call 1 (branch step-ops: main + the step's position ops in one launch each + session 19's glu-split):
# the new kernels against their compositions on the card, the split GLU ring's bit-for-bit test, then the decode
# A/B: step ops off/on, and Q8_0's split GLU.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $OUT/card.txt
timeout 100 python3 -m pytest -q -x -p no:cacheprovider tests/test_fused.py -k "rope or causal_mask or advance" > $OUT/test_step_ops.log 2>&1
echo "rc $?" >> $OUT/test_step_ops.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_step_ops.log | tail -3
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_gguf_cuda.py -k "split_glu" > $OUT/test_split.log 2>&1
echo "rc $?" >> $OUT/test_split.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_split.log | tail -3
timeout 300 python3 measurements/h200/session20/decode_steps.py $OUT/decode.json q8_0,q4_k s0,s1,s1:split=1 > $OUT/decode.log 2>&1
echo "rc $?" >> $OUT/decode.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/decode.log | tail -10
