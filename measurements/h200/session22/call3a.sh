#!/bin/bash
# Session 22 call 3a (command inline): carries out/smolA, the first half of the real SmolLM2 GGUF, onto the machine,
# which stays warm for call 3 (carry out/smolB: ignored paths already there are kept between calls).
ls -la out/smolA && nvidia-smi --query-gpu=name --format=csv,noheader
