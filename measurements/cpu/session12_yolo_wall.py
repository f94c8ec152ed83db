"""Median wall time of YOLOv8s 640 detect (bench_detect.YoloDetect.time_detect, cpu float32) in this process, and the
cores other processes used meanwhile (session 12). Run from a tree's root with PYTHONPATH=. to time that tree;
session12_yolo.md alternates a baseline tree, the branch and torch with it:
    for t in BASE BRANCH; do (cd $t && env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. \\
        python BRANCH/measurements/cpu/session12_yolo_wall.py engine 10); done
    (cd BRANCH && env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python measurements/cpu/session12_yolo_wall.py torch 10)"""
import os
import sys

sys.path.insert(0, ".")
from bench.cpu_ab import child  # noqa: E402

impl = sys.argv[1]
r = child("bench_detect.YoloDetect.time_detect", impl, ["cpu", "float32", "640"],
          int(sys.argv[2]) if len(sys.argv) > 2 else 10)
print(f"{impl} {os.path.basename(os.getcwd()):10s} median {r['median_ms']:6.1f} min {r['min_ms']:6.1f} "
      f"others {r['others_cores']:.2f}", flush=True)
