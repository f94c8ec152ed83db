#!/bin/bash
# Session 23's first call, prepared in session 22 (nvidia-h200, carry .whl): (1) the session-22 work that has not
# run on a card: the Mixtral GGUF tests (quantized experts on CUDA through engine.nn.moe's composition), the decode
# step that falls back to uncaptured, the generate stats line; (2) why bench/tp_torch.py's TP = 1 decode is ~4x
# slower than the llm suite's torch eager runner on the same card (profile of one model build).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gguf.py -k "mixtral or rope_parameters" tests/test_generation.py tests/test_quantize.py -k "mixtral or uncaptured or cli" > $OUT/test.log 2>&1
echo "rc $?" >> $OUT/test.log; grep -v "excepthook\|Original exc\|^$" $OUT/test.log | tail -4
timeout 200 python3 measurements/h200/session23/tp_torch_profile.py > $OUT/tp_profile.log 2>&1
echo "rc $?" >> $OUT/tp_profile.log; head -5 $OUT/tp_profile.log
