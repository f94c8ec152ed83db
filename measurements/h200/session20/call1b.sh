#!/bin/bash
# Session 20 call 1b (run inline, on branch step-ops with glu-split cherry-picked): the timeline of Q8_0's ring with
# and without the split GLU, then the captured-decode tests on the card.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 200 python3 measurements/h200/session18/timeline.py $OUT/timeline.json q8_0 ring ring:split=1 > $OUT/timeline.log 2>&1
timeout 250 python3 -m pytest -q -x -p no:cacheprovider tests/test_generation.py tests/test_capture_models.py > $OUT/test_gen.log 2>&1
