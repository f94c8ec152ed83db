#!/bin/bash
# Session 15, call 1: qgemv_direct's L2 prefetch (cupy_quant DIRECT f: bytes of each row of a warp's pair, n: of its
# next pair's, prefetched into L2 when the warp takes the pair) in the captured decode (session 14's
# decode_variants.py: int8 route, Llama-2-7B shape), then the tests session 14 left unrun on its final kernels.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader > $OUT/card.txt
V=measurements/h200/session14/decode_variants.py
timeout 330 python3 $V $OUT/variants.json q4_k,q8_0 base f=1048576 n=1048576 f=1048576+n=1048576 \
    > $OUT/variants.log 2>&1; echo "rc $?" >> $OUT/variants.log; grep -v Warning $OUT/variants.log | grep -v "first = "
timeout 90 python3 -m pytest -q -x tests/test_capture.py tests/test_pdl_cuda.py > $OUT/tests_capture.log 2>&1
echo "rc $?" >> $OUT/tests_capture.log; tail -3 $OUT/tests_capture.log
timeout 120 python3 -m pytest -q -x tests/test_gguf_cuda.py -k "int8 and (route_equals or fused_equals) and float16 and not bfloat16" \
    > $OUT/tests_int8.log 2>&1; echo "rc $?" >> $OUT/tests_int8.log; tail -3 $OUT/tests_int8.log
