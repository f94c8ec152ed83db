#!/bin/bash
# Session 16, call 2: attn_cluster with chunks of 128 / 64 / 32 positions (attn_probe.py), its tests (bit for bit
# against the two launches in chunks of the same size), and the captured decode with each (decode_attn.py).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 110 python3 measurements/h200/session16/attn_probe.py $OUT/attn_probe.json > $OUT/attn_probe.log 2>&1
echo "rc $?" >> $OUT/attn_probe.log; cat $OUT/attn_probe.log | grep -v Warning
timeout 100 python3 -m pytest -q -x tests/test_decode_fuse.py -k "fused_attention" -p no:cacheprovider > $OUT/test_attn.log 2>&1
echo "rc $?" >> $OUT/test_attn.log; tail -5 $OUT/test_attn.log
timeout 370 python3 measurements/h200/session16/decode_attn.py $OUT/decode_attn.json q4_k,q8_0 > $OUT/decode_attn.log 2>&1
echo "rc $?" >> $OUT/decode_attn.log; grep -v Warning $OUT/decode_attn.log | grep -v "first = "
