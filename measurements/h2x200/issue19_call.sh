#!/bin/bash
# Issue 19's runs, one call a machine kind (nvidia-h200-x4 with N=4, nvidia-h200-x8 with N=8; carry nothing):
# engine TP=N (greedy tokens against TP=1 on the 7B shape, Llama-2-70B fp16 decode speed, the all-reduce cost a
# step, TP=1 vs TP=N at 7B), then torch's own tensor parallel on the same 70B shape (bench/tp_torch.py: transformers'
# tp plan through torch.distributed.tensor.parallel, eager, DynamicCache), then TP=2 of both on the same host.
N=${N:-4}
export PYTHONPATH=. NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi topo -m > $OUT/topo.txt 2>&1
timeout 260 python3 -m bench.tp_decode --tp $N --equal llama:llama-2-7b --out $OUT/tp$N.json > $OUT/tp$N.log 2>&1
echo "rc $?" >> $OUT/tp$N.log; tail -4 $OUT/tp$N.log
timeout 120 torchrun --nproc-per-node $N -m bench.tp_torch --model llama:llama-2-70b --out $OUT/tp_torch$N.json > $OUT/tp_torch$N.log 2>&1
echo "rc $?" >> $OUT/tp_torch$N.log; tail -2 $OUT/tp_torch$N.log
# compiled too (session 22: eager TP = 1 on one H200 ran 10.6 tok/s against the llm suite's torch eager 43, cause not
# found; profile before quoting these)
timeout 200 torchrun --nproc-per-node $N -m bench.tp_torch --model llama:llama-2-70b --compile --steps 96 --warmup 32 --out $OUT/tp_torch${N}c.json > $OUT/tp_torch${N}c.log 2>&1
echo "rc $?" >> $OUT/tp_torch${N}c.log; tail -2 $OUT/tp_torch${N}c.log
timeout 100 python3 -m bench.tp_decode --tp 2 --equal llama:tiny --scale llama:tiny --out $OUT/tp2.json > $OUT/tp2.log 2>&1
echo "rc $?" >> $OUT/tp2.log; tail -2 $OUT/tp2.log
timeout 100 torchrun --nproc-per-node 2 -m bench.tp_torch --model llama:llama-2-70b --out $OUT/tp_torch2.json > $OUT/tp_torch2.log 2>&1
echo "rc $?" >> $OUT/tp_torch2.log; tail -2 $OUT/tp_torch2.log
