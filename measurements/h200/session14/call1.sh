#!/bin/bash
# Session 14, call 1: the captured decode under prologue probes (noprologue, prequant: timing only) and grid caps
# that leave room on each SM for the next kernel's blocks under PDL; then session 13's untested cases: the direct
# kernels' edge shapes with the new default row and the captured decode of a quantized model (both routes).
# (Run twice: the first run, with "base" first in the variant list and the direct kernels' edge shapes before the
# captured decode test, stopped at the noprologue edit, which then also matched gemv.cu; its logs are the *_first
# files: base 550.7 tok/s, and 144 edge-shape cases passed before the 220 s budget ran out.)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee $OUT/gpu.txt
timeout 300 python3 measurements/h200/session14/decode_variants.py $OUT/variants_call1.json q4_k,q8_0 \
    noprologue prequant blocks=132 b=3+blocks=132 b=3+blocks=264 b=2+p=1+blocks=132 \
    > $OUT/variants_call1.log 2>&1; echo "rc $?" >> $OUT/variants_call1.log; grep -v Warning $OUT/variants_call1.log | grep -v "first = " 
timeout 200 python3 -m pytest -q -x tests/test_gguf_cuda.py -k "captured_decode_of_a_quantized" \
    > $OUT/tests_call1.log 2>&1; echo "rc $?" >> $OUT/tests_call1.log; tail -4 $OUT/tests_call1.log
