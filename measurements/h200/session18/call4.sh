#!/bin/bash
# Session 18, call 4: does the weight data in flight before pdl_wait slow the prologue (x's loads after it)? The
# timeline with fewer bytes issued before the wait: qgemv_direct at P = 0 (one batch a warp, not two; B = 2, 16 warps an SM as the default), the ring
# with 2 slots a warp (not 3-4).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 400 python3 measurements/h200/session18/timeline.py $OUT/timeline.json q4_k,q8_0 direct direct+p=0+b=2 ring:s=2 > $OUT/timeline.log 2>&1
echo "rc $?" >> $OUT/timeline.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/timeline.log | grep -v "^N=" | tail -40
