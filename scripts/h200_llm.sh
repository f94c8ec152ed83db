#!/usr/bin/env bash
# Decode of every LLM family on one nvidia-h200-x2 call, split over its two GPUs (each job sees one GPU, so
# every figure is a single-H200 figure): engine, torch eager and torch.compile side by side per family,
# fp16 batch 1, plus Llama-2-7B at batch 8 and uncaptured. Results: $OUT/run/asv{0,1} (taper report reads them).
#   bash scripts/h200_llm.sh        (repository root, wheels installed, PYTHONPATH set)
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$OUT/run
mkdir -p "$R"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv > "$R/card.txt"
f16="'cuda', 'float16'"
impls="(engine|torch|torch-compile)"
bench() {  # GPU, results name, budget, regexes...
    local g=$1 n=$2 budget=$3; shift 3
    local args=()
    for r in "$@"; do args+=(-b "$r"); done
    CUDA_VISIBLE_DEVICES=$g timeout "$budget" python3 -m taper.cli bench --runner fallback --suite llm \
        --results "$R/asv$n" --machine h200 --markdown "$R/bench$n.md" --no-table "${args[@]}" > "$R/bench$n.log" 2>&1
    echo "bench rc=$?" >> "$R/bench$n.log"
}
bench 0 0 "${BUDGET:-480}" \
    "bench_llm\.Decode\.track_.*\('$impls', $f16, '(llama:llama-2-7b|qwen2:qwen2-7b|mistral:mistral-7b)', 1, 'default'\)" \
    "bench_llm\.Decode\.track_.*\('engine', $f16, 'llama:llama-2-7b', 1, 'eager'\)" \
    "bench_llm\.Decode\.track_.*\('(engine|torch-compile)', $f16, 'llama:llama-2-7b', 8, 'default'\)" &
(bench 1 1 "${BUDGET1:-240}" \
    "bench_llm\.Decode\.track_.*\('$impls', $f16, '(gemma:gemma-7b|phi3:phi-3-mini-4k)', 1, 'default'\)"
 for i in engine torch-compile torch; do  # Mixtral-8x7B is 93 GB: one implementation per process
     bench 1 "1m-$i" "${BUDGET1M:-80}" "bench_llm\.Decode\.track_.*\('$i', $f16, 'mixtral:mixtral-8x7b', 1, 'default'\)"
 done) &
wait
grep -h "fallback r" "$R"/bench*.log
tar czf "$OUT/run.tgz" -C "$OUT" run
