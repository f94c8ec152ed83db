#!/bin/bash
# Session 22 call 5 (command inline in the device call): bench/tp_torch.py on one H200 (TP=1, NCCL world of one),
# Llama-2-7B shape: torch's own tensor parallel run on a GPU for the first time (torch 2.11, transformers 5.17).
export NCCL_NVLS_ENABLE=0; mkdir -p $OUT
timeout 200 torchrun --nproc-per-node 1 -m bench.tp_torch --model llama:llama-2-7b --out $OUT/tp_torch1.json > $OUT/tp_torch1.log 2>&1
echo "rc $?" >> $OUT/tp_torch1.log; tail -5 $OUT/tp_torch1.log
