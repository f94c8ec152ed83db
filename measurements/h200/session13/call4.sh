#!/bin/bash
# Session 13, call 4: qgemv_direct's time by parts and settings at the decode's fused shapes (gemv_variants.py)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 400 python3 measurements/h200/session13/gemv_variants.py $OUT/variants_call4.json \
    base noquant noprologue rcp b=4 b=3 rcp+b=4 u=2+b=2 > $OUT/variants_call4.log 2>&1; echo "rc $?" >> $OUT/variants_call4.log
cat $OUT/variants_call4.log
