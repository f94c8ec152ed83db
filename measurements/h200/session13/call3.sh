#!/bin/bash
# Session 13, call 3: the prefetch probe with a full read by the kernel before (mode 4); Nsight Compute on the
# decode's GEMV launches (ncu_shapes.py's docstring)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. ENGINE_DEVICE=cuda
timeout 100 python3 measurements/h200/session13/prefetch_probe.py $OUT/probe_call3.json > $OUT/probe_call3.log 2>&1
grep -E "twice|spin 4 us|full" $OUT/probe_call3.log
S="--section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis"
timeout 400 ncu --clock-control none --kernel-name regex:gemv $S --print-details all \
    python3 measurements/h200/session13/ncu_shapes.py > $OUT/ncu_call3.log 2>&1 \
  || timeout 400 ncu --clock-control none --kernel-name regex:gemv $S \
    python3 measurements/h200/session13/ncu_shapes.py > $OUT/ncu_call3b.log 2>&1
echo "ncu rc $?"
grep -E "^== |Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers Per|Stall|stall|Warp Cycles Per Issued|Issued Warp" \
    $OUT/ncu_call3*.log | head -150
