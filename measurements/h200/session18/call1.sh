#!/bin/bash
# Session 18, call 1: qgemv_ring in merged blocks (one block of 16 warps an SM, the whole of its shared memory, so
# x is quantised once an SM and down_proj's K = 11008 gets 3 slots a warp, not 2) against qgemv_direct and the
# ring's own settings (two blocks of 8 warps an SM), the captured decode, both formats.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $OUT/card.txt
M=ring:nw=16:per_sm=1:smem=232320
timeout 420 python3 measurements/h200/session17/decode_ring.py $OUT/decode_merged.json q8_0,q4_k direct,ring,$M,$M:u=1 > $OUT/decode_merged.log 2>&1
echo "rc $?" >> $OUT/decode_merged.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/decode_merged.log | tail -14
