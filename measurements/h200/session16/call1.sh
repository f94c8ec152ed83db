#!/bin/bash
# Session 16, call 1: the decode attention alone (attn_probe.py: attn_cluster against attn_fused and the two
# launches, bit for bit and timed), its tests, and session 15's untested case (x in registers, merged blocks in a
# grid of one block: warps walking two pairs), fp16 with the llama norm, every K and both formats.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $OUT/gpu.csv
timeout 120 python3 measurements/h200/session16/attn_probe.py $OUT/attn_probe.json > $OUT/attn_probe.log 2>&1
echo "rc $?" >> $OUT/attn_probe.log; cat $OUT/attn_probe.log | grep -v Warning
timeout 150 python3 -m pytest -q -x tests/test_decode_fuse.py -k "fused_attention" -p no:cacheprovider > $OUT/test_attn.log 2>&1
echo "rc $?" >> $OUT/test_attn.log; tail -5 $OUT/test_attn.log
ids=$(python3 -m pytest tests/test_gguf_cuda.py --collect-only -q -k x_in_registers 2>/dev/null | grep -E "\[1-llama-[0-9]+-float16-")
timeout 290 python3 -m pytest -q -p no:cacheprovider $ids > $OUT/test_xreg.log 2>&1
echo "rc $?" >> $OUT/test_xreg.log; tail -5 $OUT/test_xreg.log
