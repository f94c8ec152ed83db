"""bench/tp_torch.py, the torch tensor-parallel baseline beside engine.distributed (issue 19): on the CPU, two
gloo ranks under torchrun hold TP=1's model exactly (the same greedy tokens, the same logits within float32
rounding), each rank fewer weight bytes; a plan style it does not split is refused by name."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(tmp_path, world: int, *extra) -> dict:
    out = tmp_path / f"tp{world}{''.join(extra)}.json"
    cmd = [sys.executable, "-m", "bench.tp_torch", "--device", "cpu", "--model", "llama:tiny", "--steps", "5",
           "--warmup", "1", "--out", str(out), *extra]
    if world > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
               "--master-port", "29533", *cmd[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())


def test_torch_tp2_holds_tp1s_model(tmp_path):
    one, two = run(tmp_path, 1), run(tmp_path, 2)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["tokens"] == one["tokens"] and len(one["tokens"]) == 6
    a, b = np.array(one["last_logits"]), np.array(two["last_logits"])
    assert np.abs(a - b).max() <= 1e-5 * np.ptp(a)
    assert two["weight_bytes_per_rank"] < one["weight_bytes_per_rank"] and two["tokens_per_s"] > 0


def test_compiled_torch_tp2_gives_eager_tp1s_tokens(tmp_path):
    """--compile (torch.compile, dynamic shapes: DTensor's dispatch traced away, as torch's TP is meant to run)."""
    one, two = run(tmp_path, 1), run(tmp_path, 2, "--compile")
    assert two["compiled"] and not one["compiled"]
    assert two["tokens"] == one["tokens"]
    a, b = np.array(one["last_logits"]), np.array(two["last_logits"])
    assert np.abs(a - b).max() <= 1e-5 * np.ptp(a)


def test_unsupported_plan_styles_are_named():
    from bench.tp_torch import _styles
    with pytest.raises(SystemExit, match="colwise_rep"):
        _styles({"layers.*.self_attn.qkv_proj": "colwise_rep", "layers.*.mlp.down_proj": "rowwise"})


def test_eager_attention_gives_sdpas_tokens(tmp_path):
    """--attn eager (transformers' eager attention, the llm suite's torch runner's) against the default sdpa."""
    sdpa, eager = run(tmp_path, 1), run(tmp_path, 1, "--attn", "eager")
    assert (sdpa["attn"], eager["attn"]) == ("sdpa", "eager") and eager["tokens"] == sdpa["tokens"]
    a, b = np.array(sdpa["last_logits"]), np.array(eager["last_logits"])
    assert np.abs(a - b).max() <= 1e-5 * np.ptp(a)
