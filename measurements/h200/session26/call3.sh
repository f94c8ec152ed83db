#!/bin/bash
# Session 26 call 3 (nvidia-h200, carry .whl): the norm statistic without branches (quant_span.cuh's rms_stat_rn:
# div_rn_k, sqrt_rn, rcp_rn) on the card: the exhaustive test against the intrinsics, the benchmark, then
# x kept in registers against the staged prologue (norm_row's statistic: the same bits) and ring = direct.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "ieee" > $OUT/test_ieee.log 2>&1
echo "rc $?" >> $OUT/test_ieee.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_ieee.log | tail -8
timeout 200 python3 -m bench.gguf_decode --no-profile --out $OUT/gguf_decode.json > $OUT/gguf_decode.log 2>&1
echo "rc $?" >> $OUT/gguf_decode.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/gguf_decode.log | tail -5
timeout 230 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "x_in_registers or ring_equals" > $OUT/test.log 2>&1
echo "rc $?" >> $OUT/test.log; grep -v "excepthook\|Original exc\|^$" $OUT/test.log | tail -6
