#!/bin/bash
# Session 25 call 8 (nvidia-h200, the machine of call 7 still warm; the command as run): the new card test of the
# prologue's scale and reciprocal first, the ring cases of the gemma and torch norms, the int8 route's reference.
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda; timeout 170 python3 -m pytest -q -p no:cacheprovider -rA tests/test_gguf_cuda.py -k "ieee or int8_route_equals or (ring_equals and (gemma or torch))" > $OUT/test2.log 2>&1; echo "rc $?" >> $OUT/test2.log; grep -c PASSED $OUT/test2.log; grep -E "FAILED|ieee|passed|failed|rc " $OUT/test2.log | tail -8
