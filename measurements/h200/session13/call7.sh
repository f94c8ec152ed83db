#!/bin/bash
# Session 13, call 7 (the session's last device time): the int8 route's tests beyond the direct kernel's (call 6):
# the captured decode of a quantized model (one-wave launches at P = 1 inside a graph), the route against its
# reference in every dtype, fused launches against the composition, qgemv_span's edge shapes.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
for k in "captured_decode_of_a_quantized_model and int8" "int8_route_equals_its_reference" \
         "fused_equals_the_composition and int8" "span_edge_shapes and int8"; do
  timeout 60 python3 -m pytest -q tests/test_gguf_cuda.py -k "$k" > "$OUT/tests_call7_${k%% *}.log" 2>&1
  echo "rc $? ($k)" >> "$OUT/tests_call7_${k%% *}.log"; tail -2 "$OUT/tests_call7_${k%% *}.log"
done
