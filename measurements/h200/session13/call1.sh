#!/bin/bash
# Session 13, call 1: the L2 prefetch probe (prefetch_probe.py's docstring)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 300 python3 measurements/h200/session13/prefetch_probe.py $OUT/probe_call1.json 2>&1 | tee $OUT/probe_call1.log
