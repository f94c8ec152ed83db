#!/bin/bash
# Session 22 call 7 (command inline): bench/tp_torch.py without torchrun (plain python, TP = 1), default threads and
# OMP_NUM_THREADS=1: whether the launcher or its thread setting made call 5's 10.6 tok/s (no: 9.0 and 9.8 tok/s).
for v in "" "OMP_NUM_THREADS=1"; do env $v timeout 90 python3 -m bench.tp_torch --model llama:llama-2-7b --steps 40 --warmup 8 --out $OUT/p.json 2>&1 | grep tok/s; done
