#!/bin/bash
# Session 20 call 5 (ring-pre, defaults: both formats on qgemv_ring, pre = 1): the nw = 16 / one block an SM check
# (run inline with these lines); call 6: card tests.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 200 python3 measurements/h200/session20/decode_steps.py $OUT/decode.json q8_0,q4_k s1,s1:nw=16:per_sm=1,s1 once > $OUT/decode.log 2>&1
