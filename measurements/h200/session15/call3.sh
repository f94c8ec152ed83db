#!/bin/bash
# Session 15, call 3: merged blocks now the int8 route's default (m=1); more warps an SM where a launch takes more
# than one wave (rb=4: Q4_K's 32 warps a block, ob=3: Q8_0's 24), balanced grids with them (w=1), P = 1 and U = 2
# (this session's decode_variants.py: session 14's with route/format defaults as variants); then the captured decode
# of quantized models and the int8 route's tests in fp16 on the new defaults. (w=1 was cupy_quant's DIRECT['w'], a
# balanced grid; removed after this call, having lost in calls 2 and 3.)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
V=measurements/h200/session15/decode_variants.py
timeout 200 python3 $V $OUT/variants_q4k.json q4_k base rb=4 rb=4+w=1 rp=1 ru=2 \
    > $OUT/variants_q4k.log 2>&1; echo "rc $?" >> $OUT/variants_q4k.log; grep -v Warning $OUT/variants_q4k.log | grep -v "first = "
timeout 140 python3 $V $OUT/variants_q8.json q8_0 base ob=3 ob=3+w=1 \
    > $OUT/variants_q8.log 2>&1; echo "rc $?" >> $OUT/variants_q8.log; grep -v Warning $OUT/variants_q8.log | grep -v "first = "
timeout 200 python3 -m pytest -q -x tests/test_gguf_cuda.py -k "captured_decode or (int8 and (route_equals or fused_equals) and float16 and not bfloat16)" \
    > $OUT/tests.log 2>&1; echo "rc $?" >> $OUT/tests.log; tail -3 $OUT/tests.log
