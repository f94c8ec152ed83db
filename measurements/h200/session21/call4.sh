#!/bin/bash
# Session 21 call 4: the merged tree (attn_cluster EARLY on) as users run it: bench.gguf_decode (int8 route), then
# the fp16 Llama-2-7B decode beside torch.compile in one run (taper bench, the llm suite).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $OUT/card.txt
timeout 300 python3 -m bench.gguf_decode --dots int8 --no-profile --out $OUT/gguf_decode.json > $OUT/gguf_decode.log 2>&1
echo "rc $?" >> $OUT/gguf_decode.log; grep -v "Warning\|excepthook\|Original exc\|^$\|first = " $OUT/gguf_decode.log | tail -12
timeout 260 python3 -m taper.cli bench --suite llm --device cuda --dtype float16 --runner fallback --no-table \
  -b "Decode\.track_tokens_per_s\('(engine|torch-compile)', 'cuda', 'float16', 'llama:llama-2-7b', 1, 'default'\)" \
  --results $OUT/results --markdown $OUT/llm.md > $OUT/llm.log 2>&1
echo "rc $?" >> $OUT/llm.log; tail -6 $OUT/llm.log
