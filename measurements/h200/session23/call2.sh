#!/bin/bash
# Session 23, call 2 (nvidia-h200, carry .whl): the uncaptured-fallback test as rewritten after call 1 (its reference
# now the plan's first step, then the model's ops); the kernel-boundary / grid-barrier probe; bench/tp_torch.py at
# TP = 1 with the cuDNN attention backend off (sdpa), transformers' eager attention, and compiled, beside the profile.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_generation.py -k "uncaptured" > $OUT/test.log 2>&1
echo "rc $?" >> $OUT/test.log; tail -2 $OUT/test.log
timeout 120 python3 measurements/h200/session23/sync_probe.py > $OUT/sync_probe.log 2>&1; echo "rc $?" >> $OUT/sync_probe.log
cat $OUT/sync_probe.log | tail -20
for a in "--attn sdpa" "--attn eager" "--attn sdpa --compile"; do
  n=$(echo $a | tr -d ' -'); timeout 240 python3 -m bench.tp_torch --model llama:llama-2-7b $a --out $OUT/tp1_$n.json > $OUT/tp1_$n.log 2>&1
  echo "$a rc $?"; tail -1 $OUT/tp1_$n.log
done
timeout 150 python3 measurements/h200/session23/tp_torch_profile.py > $OUT/tp_profile.log 2>&1; echo "rc $?" >> $OUT/tp_profile.log; head -3 $OUT/tp_profile.log
