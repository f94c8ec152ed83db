#!/bin/bash
# Session 26 call 4 (nvidia-h200, carry .whl; timing only): call 3's benchmark gave Q4_K 712.4 tok/s against call 1's
# 718.4 on the tree before: the statistic as the tree has it, as the intrinsics, as approximations, one run.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 280 python3 measurements/h200/session26/decode_stat.py $OUT/stat.json q4_k exact,ieee,exact,ieee,fast,exact,ieee > $OUT/stat.log 2>&1
echo "rc $?" >> $OUT/stat.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/stat.log | tail -10
