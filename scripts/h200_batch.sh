#!/usr/bin/env bash
# One device call on a two-GPU H200 machine (nvidia-h200-x2), two independent jobs side by side:
#   GPU 0: `taper bench --suite llm` (decode of every LLM family: engine, torch eager, torch.compile),
#   GPU 1: the CUDA test files, then the per-kernel step profile and the other GPU benchmarks.
# Each job sees one GPU (CUDA_VISIBLE_DEVICES), so the figures are single-H200 figures. Everything it
# writes goes under $OUT/run (packed into $OUT/run.tgz at the end: the device tool brings back few files).
#
#   bash scripts/h200_batch.sh        (from the repository root, wheels installed, PYTHONPATH set)
# Env: LLM_BENCH=0 / STEP_PROFILE=0 leave those out; CUDA_TESTS (test files), GPU0_EXTRA / GPU1_EXTRA
# (commands run after each job; $R is the results folder), BENCH_BUDGET / TEST_BUDGET (seconds).
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$OUT/run
mkdir -p "$R"
nvidia-smi --query-gpu=index,name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv > "$R/card.txt"
BENCH_BUDGET=${BENCH_BUDGET:-520}
TEST_BUDGET=${TEST_BUDGET:-240}

gpu0() {
    export CUDA_VISIBLE_DEVICES=0
    if [ "${LLM_BENCH:-1}" = 1 ]; then
    local f16="'cuda', 'float16'"
    timeout "$BENCH_BUDGET" python3 -m taper.cli bench --runner fallback --suite llm --results "$R/asv" \
        --machine h200 --markdown "$R/bench.md" --no-table \
        -b "bench_llm\.Decode\.track_.*\('(engine|torch|torch-compile)', $f16, '(llama:llama-2-7b|qwen2:qwen2-7b)', 1, 'default'\)" \
        -b "bench_llm\.Decode\.track_.*\('engine', $f16, 'llama:llama-2-7b', 1, 'eager'\)" \
        -b "bench_llm\.Decode\.track_.*\('(engine|torch-compile)', $f16, 'llama:llama-2-7b', 8, 'default'\)" \
        -b "bench_llm\.Decode\.track_.*\('(engine|torch-compile)', $f16, '(mistral:mistral-7b|gemma:gemma-7b|phi3:phi-3-mini-4k|mixtral:mixtral-8x7b)', 1, 'default'\)" \
        > "$R/bench.log" 2>&1
    echo "gpu0 done rc=$?" >> "$R/bench.log"
    fi
    if [ -n "${GPU0_EXTRA:-}" ]; then
        bash -c "$GPU0_EXTRA" > "$R/extra0.log" 2>&1
        echo "extra rc=$?" >> "$R/extra0.log"
    fi
}

gpu1() {
    export CUDA_VISIBLE_DEVICES=1
    ENGINE_DEVICE=cuda timeout "$TEST_BUDGET" python3 -m pytest -q -p no:cacheprovider ${CUDA_TESTS:-tests/test_fused.py tests/test_capture.py tests/test_generation.py} \
        > "$R/cuda_tests.log" 2>&1
    echo "tests rc=$?" >> "$R/cuda_tests.log"
    [ "${STEP_PROFILE:-1}" = 1 ] && timeout 120 python3 -m bench.step_profile --model llama:llama-2-7b --batch 1,8 --eager --prefill 512 \
        --out "$R/step_profile.json" > "$R/step_profile.log" 2>&1
    if [ -n "${GPU1_EXTRA:-}" ]; then
        bash -c "$GPU1_EXTRA" > "$R/extra1.log" 2>&1
        echo "extra rc=$?" >> "$R/extra1.log"
    fi
}

gpu0 &
gpu1 &
wait
tail -3 "$R/cuda_tests.log"
grep -hE "wall|fallback runner" "$R"/*.log | head -20
tar czf "$OUT/run.tgz" -C "$OUT" run
