#!/bin/bash
# Session 19 call 3 (main with norm-first merged): the captured decode tests of quantized models and GGUF files,
# and cupy_kernels.smem_limit (the device's opt-in), then qgemv_direct's prologue with the llama norm in registers (NormChunks loaded first) against the staged one.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "shared_memory_limit" > $OUT/test_smem.log 2>&1
echo "rc $?" >> $OUT/test_smem.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_smem.log | tail -3
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "captured" > $OUT/test_captured.log 2>&1
echo "rc $?" >> $OUT/test_captured.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_captured.log | tail -3
timeout 40 python3 -m pytest -q -p no:cacheprovider tests/test_gguf_cuda.py -k "x_in_registers and llama and float16 and 4352" > $OUT/test_x_norm.log 2>&1
echo "rc $?" >> $OUT/test_x_norm.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_x_norm.log | tail -3
