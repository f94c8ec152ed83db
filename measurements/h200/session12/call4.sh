#!/bin/bash
# Session 12, call 4: rotary_cache and attn_fused as PDLs too; decode with qgemv_direct settings (pipelined, two
# units a lane) for Q8_0 and Q4_K; the per-shape profile of the same settings.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 150 python3 -m pytest -q -x tests/test_decode_fuse.py tests/test_capture.py tests/test_pdl_cuda.py \
    > $OUT/tests_call4.log 2>&1; echo "rc $?" >> $OUT/tests_call4.log
tail -3 $OUT/tests_call4.log
timeout 230 python3 -m bench.gguf_decode --formats q8_0,q4_k --dots int8,int8+p=1,int8+u=2 --no-profile \
    --out $OUT/decode_call4.json > $OUT/decode_call4.log 2>&1; echo "rc $?" >> $OUT/decode_call4.log
grep -E "tok/s|rc " $OUT/decode_call4.log
timeout 110 python3 -m bench.gguf_decode --formats q8_0,q4_k --profile-only \
    --profile-dots int8,int8+p=1,int8+u=2,int8+b=4 --out $OUT/profile_call4.json \
    > $OUT/profile_call4.log 2>&1; echo "rc $?" >> $OUT/profile_call4.log
grep -E " us |rc " $OUT/profile_call4.log | grep -v "q_proj\|k_proj"
