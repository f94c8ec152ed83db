#!/bin/bash
# Session 17, call 1: qgemv_ring (the quantized GEMV's weights into shared memory by bulk copies, S batches a warp
# ahead, the first before pdl_wait): bit for bit against qgemv_direct, then the captured decode with each.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 170 python3 -m pytest -q -x -p no:cacheprovider tests/test_gguf_cuda.py -k "ring_equals and float16 and (4096 or 11008) and not two_slots and not norm_res" > $OUT/test_ring.log 2>&1
echo "rc $?" >> $OUT/test_ring.log; tail -15 $OUT/test_ring.log
timeout 360 python3 measurements/h200/session17/decode_ring.py $OUT/decode_ring.json q4_k,q8_0 direct,ring,ring:per_sm=2,ring:smem=225000 > $OUT/decode_ring.log 2>&1
echo "rc $?" >> $OUT/decode_ring.log; grep -v Warning $OUT/decode_ring.log | grep -v "first = " | tail -20
