#!/bin/bash
# Session 25, call 1 (nvidia-h200, carry .whl): session 24's fix on a card (a decode step whose recording fails goes
# back to the cache's mark before it runs uncaptured; caches' mark/rewind), the Mixtral GGUF tests, the captured
# decodes of every family; then session 23's probe and torch-TP baseline again, their logs having been lost.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $OUT/card.txt
timeout 330 python3 -m pytest -q -p no:cacheprovider tests/test_generation.py tests/test_nn_blocks.py \
  tests/test_gguf.py tests/test_quantize.py tests/test_capture_models.py \
  -k "generat or uncaptured or capture or rewound or mixtral or cache" > $OUT/test.log 2>&1
echo "rc $?" >> $OUT/test.log; grep -v "excepthook\|Original exc\|^$" $OUT/test.log | tail -6
timeout 60 python3 measurements/h200/session23/sync_probe.py > $OUT/sync_probe.log 2>&1; echo "rc $?" >> $OUT/sync_probe.log
tail -12 $OUT/sync_probe.log
timeout 120 python3 -m bench.tp_torch --model llama:llama-2-7b --attn sdpa --out $OUT/tp1_sdpa.json > $OUT/tp1_sdpa.log 2>&1
echo "rc $?" >> $OUT/tp1_sdpa.log; tail -2 $OUT/tp1_sdpa.log
