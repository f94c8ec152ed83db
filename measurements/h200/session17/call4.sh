#!/bin/bash
# Session 17, call 4: qgemv_ring after the fix (the launcher had passed RING["nw"], 8, as the norm weight: call 3 under
# compute-sanitizer): its tests bit for bit against qgemv_direct, then the captured decode with each.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 130 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "ring_equals and -float16-" > $OUT/test_ring.log 2>&1
echo "rc $?" >> $OUT/test_ring.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_ring.log | tail -4
timeout 330 python3 measurements/h200/session17/decode_ring.py $OUT/decode_ring.json q4_k,q8_0 direct,ring,ring:per_sm=2,ring:smem=225000 > $OUT/decode_ring.log 2>&1
echo "rc $?" >> $OUT/decode_ring.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/decode_ring.log | tail -12
