#!/bin/bash
# Session 13, call 2: the L2 prefetch probe, pieces spread over the blocks, sectors, 128-byte loads, a read twice (prefetch_probe.py's docstring)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 300 python3 measurements/h200/session13/prefetch_probe.py $OUT/probe_call2.json 2>&1 | tee $OUT/probe_call2.log
