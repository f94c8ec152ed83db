#!/bin/bash
# Session 12, call 2: PDL chain test (fixed), qgemv_direct edge shapes with Q8_0 in chunks, Q8_0 layout A/B.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 200 python3 -m pytest -q tests/test_pdl_cuda.py tests/test_gguf_cuda.py \
    -k "pdl or direct_edge or captured_decode_of_a_quantized" > $OUT/tests_call2.log 2>&1; echo "rc $?" >> $OUT/tests_call2.log
tail -3 $OUT/tests_call2.log
timeout 150 python3 -m bench.gguf_decode --formats q8_0 --profile-only \
    --profile-dots int8,int8+l=1,int8+l=1+u=2+b=4,int8+u=2+b=4,int8+q8h=1 --out $OUT/profile_call2_q8.json \
    > $OUT/profile_call2_q8.log 2>&1; echo "rc $?" >> $OUT/profile_call2_q8.log
grep -E " us |rc " $OUT/profile_call2_q8.log
timeout 100 python3 -m bench.step_profile --quantize q4_k --quant-dot int8 --out $OUT/step_profile_call2_q4_k.json \
    > $OUT/step_profile_call2_q4_k.log 2>&1; echo "rc $?" >> $OUT/step_profile_call2_q4_k.log
head -30 $OUT/step_profile_call2_q4_k.log
