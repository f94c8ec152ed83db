#!/bin/bash
# Session 13, call 6: one-wave launches (a 7B's o_proj and down_proj) at P = 1, B = 2 with both batches loading
# while x is staged; per-shape variants, the direct kernels' int8 tests (P = 1 among them), the decode of this tree
# (its settings, and p=0: the route's defaults everywhere) and of the session's starting tree (.base13).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 100 python3 measurements/h200/session13/gemv_variants.py $OUT/variants_call6.json base p=0 b=2+p=1 \
    > $OUT/variants_call6.log 2>&1; echo "rc $?" >> $OUT/variants_call6.log; cat $OUT/variants_call6.log
timeout 130 python3 -m pytest -q -x tests/test_gguf_cuda.py -k "direct and int8" > $OUT/tests_call6.log 2>&1
echo "rc $?" >> $OUT/tests_call6.log; tail -3 $OUT/tests_call6.log
timeout 150 python3 -m bench.gguf_decode --formats q8_0,q4_k --dots int8,int8+p=0 --no-profile \
    --out $OUT/decode_call6.json > $OUT/decode_call6.log 2>&1; echo "rc $?" >> $OUT/decode_call6.log
grep -E "tok/s|rc " $OUT/decode_call6.log
(cd .base13 && PYTHONPATH=/tmp/site:. timeout 100 python3 -m bench.gguf_decode --formats q8_0,q4_k --dots int8 \
    --no-profile --out $OUT/decode_call6_base.json > $OUT/decode_call6_base.log 2>&1; echo "rc $?" >> $OUT/decode_call6_base.log)
grep -E "tok/s|rc " $OUT/decode_call6_base.log
