#!/bin/bash
# Session 19 call 3 (main with norm-first merged): the captured decode tests of quantized models and GGUF files,
# (the int8 route: qgemv_ring and qgemv_direct with the norm weight first) and cupy_kernels.smem_limit; cut to the device time left.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "shared_memory_limit" > $OUT/test_smem.log 2>&1
echo "rc $?" >> $OUT/test_smem.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_smem.log | tail -3
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "captured and (int8 or gguf_model)" > $OUT/test_captured.log 2>&1
echo "rc $?" >> $OUT/test_captured.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_captured.log | tail -3
timeout 45 python3 -m pytest -q -p no:cacheprovider tests/test_gguf.py tests/test_quantize.py -k "phi3_gguf or qwen2" > $OUT/test_archs.log 2>&1
echo "rc $?" >> $OUT/test_archs.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_archs.log | tail -3
