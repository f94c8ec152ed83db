#!/bin/bash
# Session 15, call 2: qgemv_direct in merged blocks (cupy_quant DIRECT m=1: one block of 8 B warps an SM where x is
# quantised in registers, so x is staged once an SM rather than B times) and balanced grids (w=1: every warp the same
# number of pairs, or one fewer) in the captured decode (session 14's decode_variants.py: int8 route, Llama-2-7B
# shape); then the bit-exactness test of the merged blocks against the staged prologue (fp16).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
V=measurements/h200/session14/decode_variants.py
timeout 400 python3 $V $OUT/variants.json q4_k,q8_0 base m=1 w=1 m=1+w=1 \
    > $OUT/variants.log 2>&1; echo "rc $?" >> $OUT/variants.log; grep -v Warning $OUT/variants.log | grep -v "first = "
timeout 170 python3 -m pytest -q -x tests/test_gguf_cuda.py -k "x_in_registers and float16 and not bfloat16 and (1-None or 1-llama or 1-gemma)" \
    > $OUT/tests_merge.log 2>&1; echo "rc $?" >> $OUT/tests_merge.log; tail -3 $OUT/tests_merge.log
