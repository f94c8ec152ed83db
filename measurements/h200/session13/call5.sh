#!/bin/bash
# Session 13, call 5: quantise_x with a reciprocal and two groups in flight, x from global memory straight into its
# int8 blocks (stage_quantise_x): per-shape variants (gemv_variants.py), the direct kernels' int8 edge tests, and
# the decode of this tree and of the session's starting tree (.base13 = git archive 7b72a86) in the same call.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 150 python3 measurements/h200/session13/gemv_variants.py $OUT/variants_call5.json base noprologue staged \
    > $OUT/variants_call5.log 2>&1; echo "rc $?" >> $OUT/variants_call5.log; cat $OUT/variants_call5.log
timeout 120 python3 -m pytest -q -x tests/test_gguf_cuda.py -k "direct and int8" > $OUT/tests_call5.log 2>&1
echo "rc $?" >> $OUT/tests_call5.log; tail -3 $OUT/tests_call5.log
timeout 110 python3 -m bench.gguf_decode --formats q8_0,q4_k --dots int8 --no-profile --out $OUT/decode_call5.json \
    > $OUT/decode_call5.log 2>&1; echo "rc $?" >> $OUT/decode_call5.log; grep -E "tok/s|rc " $OUT/decode_call5.log
(cd .base13 && PYTHONPATH=/tmp/site:. timeout 110 python3 -m bench.gguf_decode --formats q8_0,q4_k --dots int8 \
    --no-profile --out $OUT/decode_call5_base.json > $OUT/decode_call5_base.log 2>&1; echo "rc $?" >> $OUT/decode_call5_base.log)
grep -E "tok/s|rc " $OUT/decode_call5_base.log
