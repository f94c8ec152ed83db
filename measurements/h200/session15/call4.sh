#!/bin/bash
# Session 15, call 4 (the final tree: merged blocks the int8 route's default, the balanced grid removed): the GGUF
# decode benchmark (bench.gguf_decode, int8 route: tokens/s, bytes/s against the roofline) and the tests not yet run
# on these kernels: capture and PDL, the merged blocks' bit-exactness in bf16, the int8 route's tests in bf16.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 150 python3 -m bench.gguf_decode --formats q8_0,q4_k --dots int8 --no-profile --out $OUT/decode.json \
    > $OUT/decode.log 2>&1; echo "rc $?" >> $OUT/decode.log; grep -v Warning $OUT/decode.log | tail -25
timeout 60 python3 -m pytest -q -x tests/test_capture.py tests/test_pdl_cuda.py > $OUT/tests_capture.log 2>&1
echo "rc $?" >> $OUT/tests_capture.log; tail -2 $OUT/tests_capture.log
timeout 150 python3 -m pytest -q -x tests/test_gguf_cuda.py -k "x_in_registers and bfloat16 and (1-None or 1-llama or 1-torch)" \
    > $OUT/tests_merge_bf16.log 2>&1; echo "rc $?" >> $OUT/tests_merge_bf16.log; tail -2 $OUT/tests_merge_bf16.log
timeout 120 python3 -m pytest -q -x tests/test_gguf_cuda.py -k "int8 and (route_equals or fused_equals) and bfloat16" \
    > $OUT/tests_int8_bf16.log 2>&1; echo "rc $?" >> $OUT/tests_int8_bf16.log; tail -2 $OUT/tests_int8_bf16.log
