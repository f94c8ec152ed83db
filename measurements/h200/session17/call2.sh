#!/bin/bash
# Session 17, call 2: call 1's qgemv_ring faulted (misaligned address) with GLU + norm; each case in its own process
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
for c in norm residual glu_plain glu segments; do
  timeout 80 python3 -m pytest -q -x -p no:cacheprovider tests/test_gguf_cuda.py -k "ring_equals and $c-4096-float16-q4_k" > $OUT/test_$c.log 2>&1
  echo "$c rc $?"; grep -h "Error\|passed\|failed" $OUT/test_$c.log | grep -v excepthook | head -3
done
