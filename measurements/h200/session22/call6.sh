#!/bin/bash
# Session 22 call 6 (command inline): bench/tp_torch.py --compile on one H200, TP = 1, Llama-2-7B shape.
export NCCL_NVLS_ENABLE=0
timeout 400 torchrun --nproc-per-node 1 -m bench.tp_torch --model llama:llama-2-7b --compile --steps 96 --warmup 32 --out $OUT/tp_torch1c.json > $OUT/tp_torch1c.log 2>&1
echo "rc $?" >> $OUT/tp_torch1c.log
