#!/bin/bash
# Session 19 call 2 (main with norm-first merged): the rotary / attention launches' cost (decode_skip.py, timing only),
# then the card tests of the prologues that load the norm weight first (NormChunks) that call 0 ran out of time on.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 260 python3 measurements/h200/session19/decode_skip.py $OUT/skip.json q8_0,q4_k base,norot,noattn,neither > $OUT/skip.log 2>&1
echo "rc $?" >> $OUT/skip.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/skip.log | tail -13
timeout 230 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "(ring_equals and (norm or glu or segments or one_block)) or (x_in_registers and llama)" > $OUT/test_norm_first.log 2>&1
echo "rc $?" >> $OUT/test_norm_first.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_norm_first.log | tail -3
