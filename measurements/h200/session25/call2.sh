#!/bin/bash
# Session 25 call 2 (nvidia-h200, carry .whl): the issue's benchmark on this tree (session 24's Decoder change), then
# what o_proj's launch costs beyond its bytes (timing only, wrong numbers; decode_skip_o.py).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 250 python3 -m bench.gguf_decode --no-profile --out $OUT/gguf_decode.json > $OUT/gguf_decode.log 2>&1
echo "rc $?" >> $OUT/gguf_decode.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/gguf_decode.log | tail -8
timeout 280 python3 measurements/h200/session25/decode_skip_o.py $OUT/skip_o.json q4_k,q8_0 base,noo,base,noo > $OUT/skip_o.log 2>&1
echo "rc $?" >> $OUT/skip_o.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/skip_o.log | tail -14
