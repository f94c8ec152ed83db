#!/bin/bash
# Session 16, call 4 (the final tree: attn_cluster the decode attention where S <= 1024, chunks of 32 positions where
# S <= 256, else 64, else 128): the GGUF decode benchmark (bench.gguf_decode, int8 route) and the tests on it: the
# attention bit for bit (every chunk size now taken), the plan and captured decodes, capture and PDL, the captured
# decode of quantized models and GGUF files.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 160 python3 -m bench.gguf_decode --formats q8_0,q4_k --dots int8 --no-profile --out $OUT/decode.json \
    > $OUT/decode.log 2>&1; echo "rc $?" >> $OUT/decode.log; grep -v Warning $OUT/decode.log | tail -25
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_decode_fuse.py tests/test_capture.py tests/test_pdl_cuda.py tests/test_capture_models.py > $OUT/test_decode.log 2>&1
echo "rc $?" >> $OUT/test_decode.log; tail -3 $OUT/test_decode.log
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "captured_decode" > $OUT/test_gguf_decode.log 2>&1
echo "rc $?" >> $OUT/test_gguf_decode.log; tail -3 $OUT/test_gguf_decode.log
