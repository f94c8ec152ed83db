#!/bin/bash
# Session 12, call 3: the new decode attention (chunks of 128, coalesced K/V slices, one-pass combine) with PDL:
# its tests and the captured decode's, then decode (fp16, Q8_0, Q4_K int8) and Q4_K's step profile.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 240 python3 -m pytest -q -x tests/test_decode_fuse.py tests/test_fused.py tests/test_capture.py \
    tests/test_pdl_cuda.py > $OUT/tests_call3.log 2>&1; echo "rc $?" >> $OUT/tests_call3.log
tail -4 $OUT/tests_call3.log
timeout 150 python3 -m bench.gguf_decode --formats q8_0,q4_k --dots int8 --no-profile --out $OUT/decode_call3.json \
    > $OUT/decode_call3.log 2>&1; echo "rc $?" >> $OUT/decode_call3.log
grep -E "tok/s|rc " $OUT/decode_call3.log
timeout 90 python3 -m bench.step_profile --quantize q4_k --quant-dot int8 --out $OUT/step_profile_call3_q4_k.json \
    > $OUT/step_profile_call3_q4_k.log 2>&1; echo "rc $?" >> $OUT/step_profile_call3_q4_k.log
grep -E "wall|attn|rotary|qgemv" $OUT/step_profile_call3_q4_k.log
