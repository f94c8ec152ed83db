#!/bin/bash
# Session 26 call 5 (nvidia-h200, carry .whl): the statistic as a short float chain (div_rn_k: Markstein's
# correction; sqrt_rn: one Newton step in float, the midpoint compared in double; rK before the total): the
# exhaustive card test first (the benchmark only if it passes), the benchmark, then as many x_in_registers
# cases (the registers' prologue against the staged one: norm_row's bits) as the device time left allows.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "ieee" > $OUT/test_ieee.log 2>&1
rc=$?; echo "rc $rc" >> $OUT/test_ieee.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_ieee.log | tail -8
[ $rc = 0 ] || exit 1
timeout 190 python3 -m bench.gguf_decode --no-profile --out $OUT/gguf_decode.json > $OUT/gguf_decode.log 2>&1
echo "rc $?" >> $OUT/gguf_decode.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/gguf_decode.log | tail -5
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "x_in_registers" > $OUT/test.log 2>&1
echo "rc $?" >> $OUT/test.log; grep -v "excepthook\|Original exc\|^$" $OUT/test.log | tail -4
