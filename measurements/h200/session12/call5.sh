#!/bin/bash
# Session 12, call 5: PDL only for frozen weights; captured decode of every LLM family, the GGUF captured decodes,
# the captured model forwards; then the decode figures of the final tree.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 130 python3 -m pytest -q tests/test_pdl_cuda.py tests/test_capture.py > $OUT/tests_call5_capture.log 2>&1
echo "rc $?" >> $OUT/tests_call5_capture.log; tail -2 $OUT/tests_call5_capture.log
timeout 80 python3 -m pytest -q tests/test_gguf_cuda.py -k "captured or fused_equals_the_composition" \
    > $OUT/tests_call5_gguf.log 2>&1; echo "rc $?" >> $OUT/tests_call5_gguf.log; tail -2 $OUT/tests_call5_gguf.log
timeout 80 python3 -m pytest -q tests/test_capture_models.py > $OUT/tests_call5_models.log 2>&1
echo "rc $?" >> $OUT/tests_call5_models.log; tail -2 $OUT/tests_call5_models.log
timeout 120 python3 -m bench.gguf_decode --formats q8_0,q4_k --dots int8 --no-profile --out $OUT/decode_call5.json \
    > $OUT/decode_call5.log 2>&1; echo "rc $?" >> $OUT/decode_call5.log
grep -E "tok/s|rc " $OUT/decode_call5.log
