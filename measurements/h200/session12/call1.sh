#!/bin/bash
# Session 12, call 1: PDL (cupy_launch) and Q8_0 in 16-byte chunks (QD_q8_0c): tests, then decode A/B.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $OUT/card.txt
timeout 170 python3 -m pytest -q -x tests/test_pdl_cuda.py tests/test_gguf_cuda.py \
    -k "pdl or direct_edge or captured_decode_of_a_quantized" > $OUT/tests_call1.log 2>&1; echo "rc $?" >> $OUT/tests_call1.log
tail -3 $OUT/tests_call1.log
for pdl in 0 1; do
  TAPER_PDL=$pdl timeout 200 python3 -m bench.gguf_decode --formats q8_0,q4_k --dots int8,int8+q8h=1 \
      --profile-dots int8,int8+q8h=1 $([ $pdl = 0 ] && echo --no-profile) --out $OUT/decode_call1_pdl$pdl.json \
      > $OUT/decode_call1_pdl$pdl.log 2>&1; echo "rc $?" >> $OUT/decode_call1_pdl$pdl.log
  grep -E "tok/s|rc " $OUT/decode_call1_pdl$pdl.log
done
grep -E " us " $OUT/decode_call1_pdl1.log | head -30
