#!/bin/bash
# For the next session's first call, on branch attn-early: attn_cluster reads the step's mask and prefetches the
# live K/V rows into L2 before pdl_wait (cupy_decode.CLUSTER_ATTENTION["early"]); the attention's card tests, then
# the captured decode with early = 1 / 0 alternating (session 20 call 8's probe: the attention launches cost Q4_K
# ~165 us a step, fp16 ~147). The test line also runs the step ops' card cases: session 20's mend moved their
# wrappers into cupy_step.py after its last card run.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_fused.py tests/test_decode_fuse.py -k "attention or rotary_cache or rope or causal_mask or advance" > $OUT/test_attn.log 2>&1
echo "rc $?" >> $OUT/test_attn.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_attn.log | tail -3
timeout 300 python3 measurements/h200/session20/decode_steps.py $OUT/decode.json q8_0,q4_k s1:early=1,s1:early=0,s1:early=1,s1:early=0 > $OUT/decode.log 2>&1
echo "rc $?" >> $OUT/decode.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/decode.log | tail -12
