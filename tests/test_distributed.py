"""Tensor parallelism (engine.distributed) on the CPU: 2 processes over the shared-memory communicator (and 4 and
8 for one llama config, the world sizes of the 70B runs on 4 and 8 GPUs).

Every LLM family's tiny config, TP=2 against TP=1 in fp32: prefill logits within 1e-5 and greedy tokens
identical, loading from a safetensors directory (each rank reads its slices) and from random preset
weights (drawn at full size, sliced). The decode runs engine.generation's Decoder, whose step is
recorded and replayed through engine.capture's fusion plan, so the plan's handling of the all-reduce is
exercised too. One launch serves all families (spawning interpreters is the slow part).
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import engine
from engine import models
from engine.distributed import LaunchError, RankPlan, TensorParallelError, check_world, launch
from engine.distributed import from_pretrained as tp_from_pretrained, from_preset as tp_from_preset
from engine.generation import generate
from engine.io.safetensors import save_file

# tiny presets made divisible by 2 where needed; llama with biases (the row layers' bias is added once)
FAMILIES = {
    "llama": dict(attention_bias=True, mlp_bias=True),
    "mistral": dict(num_key_value_heads=2),
    "qwen2": dict(),
    "gemma": dict(num_key_value_heads=2),
    "phi3": dict(),
    "mixtral": dict(),
}
IDS = [[3, 17, 42, 5, 99, 7], [11, 2, 250, 64, 8, 1]]  # batch 2
NEW = 6


def _outputs(model, capture=None) -> dict:
    logits = model(engine.tensor(np.array(IDS, np.int64), device=model.device)).numpy()  # (2, 6, vocab): prefill
    tokens = generate(model, IDS[0], max_new_tokens=NEW, stop_token_ids=[], capture=capture).tokens[0]
    return {"logits": logits, "tokens": tokens}


def _rank_work(comm, dirs: dict) -> dict:
    out = {}
    for mt, d in dirs.items():
        out[mt] = _outputs(tp_from_pretrained(d, comm))
        out[mt + ":preset"] = _outputs(tp_from_preset(mt, "tiny", comm, seed=3, **FAMILIES[mt]))
        m = tp_from_pretrained(d, comm)
        c = m.config
        out[mt + ":heads"] = (c.num_attention_heads, c.num_key_value_heads, c.intermediate_size,
                              m.tensor_parallel.hooks, tuple(m.new_cache(1, 8, static=True).keys[0].shape))
    return out


@pytest.fixture(scope="module")
def tp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp")
    dirs, ref = {}, {}
    for mt, over in FAMILIES.items():
        m = models.from_preset(mt, "tiny", seed=1, device="cpu", **over)
        d = root / mt
        d.mkdir()
        (d / "config.json").write_text(json.dumps(dataclasses.asdict(m.config)))
        rng = np.random.default_rng(7)  # biases away from zero: a row layer's bias must be added exactly once
        state = {k: (rng.normal(0, 0.1, v.shape).astype(np.float32) if k.endswith(".bias") else v.numpy())
                 for k, v in m.state_dict().items()}
        save_file(state, d / "model.safetensors")
        dirs[mt] = str(d)
        ref[mt] = _outputs(models.from_pretrained(d, device="cpu"))
        ref[mt + ":preset"] = _outputs(models.from_preset(mt, "tiny", seed=3, device="cpu", **over))
    ranks = launch(_rank_work, 2, "cpu", args=(dirs,), timeout=600)
    return ref, ranks


@pytest.mark.parametrize("source", ["dir", "preset"])
@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_tp2_equals_tp1(tp_run, model_type, source):
    ref, ranks = tp_run
    key = model_type if source == "dir" else model_type + ":preset"
    one, r0, r1 = ref[key], ranks[0][key], ranks[1][key]
    assert r0["tokens"] == one["tokens"] == r1["tokens"]
    err = np.abs(r0["logits"] - one["logits"]).max()
    assert err < 1e-5, f"{key}: max abs logit error {err:.3g} vs TP=1"
    np.testing.assert_array_equal(r0["logits"], r1["logits"])  # every rank holds the same logits


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_rank_holds_half_the_heads_and_mlp(tp_run, model_type):
    ref, ranks = tp_run
    full = models.from_preset(model_type, "tiny", **FAMILIES[model_type]).config
    heads, kv, inter, hooks, cache = ranks[0][model_type + ":heads"]
    assert (heads, kv, inter) == (full.num_attention_heads // 2, full.num_key_value_heads // 2,
                                  full.intermediate_size // 2)
    assert cache == (1, full.num_key_value_heads // 2, 8, full.head_dim)  # the KV cache holds this rank's heads
    assert hooks == 2 * full.num_hidden_layers  # attention output and MLP (or experts) output per layer


def test_rank_reads_only_its_slices(tmp_path):
    """A column-parallel shard over a mapped file is a view of the mapping (zero-copy); a row-parallel
    one is this rank's columns; a row layer's bias sits on rank 0 only."""
    from engine.distributed.shard import RankPlan as RP
    cfg = models.from_preset("llama", "tiny").config
    w = np.arange(64 * 128, dtype=np.float32).reshape(64, 128)  # o_proj.weight (hidden, heads*d)
    r1 = RP(cfg, 2, 1)
    q = r1.take("model.layers.0.self_attn.q_proj.weight", w, copy=False)
    assert np.shares_memory(q, w) and np.array_equal(q, w[32:])
    o = r1.take("model.layers.0.self_attn.o_proj.weight", w, copy=False)
    assert np.array_equal(o, w[:, 64:])
    b = np.ones(64, np.float32)
    assert not r1.take("model.layers.0.self_attn.o_proj.bias", b, copy=False).any()
    assert RP(cfg, 2, 0).take("model.layers.0.self_attn.o_proj.bias", b, copy=False) is b
    assert r1.take("model.embed_tokens.weight", w, copy=False) is w  # replicated


def test_phi3_fused_qkv_and_gate_up_split_per_part():
    cfg = models.from_preset("phi3", "tiny").config  # hq = hkv = 2, head_dim 80, intermediate 256
    d, i = cfg.head_dim, cfg.intermediate_size
    qkv = np.arange(6 * d)[:, None] * np.ones((1, 3))  # rows q0 q1 | k0 k1 | v0 v1 (d rows each)
    s = RankPlan(cfg, 2, 1).take("model.layers.0.self_attn.qkv_proj.weight", qkv, copy=False)
    np.testing.assert_array_equal(s[:, 0], np.concatenate([np.arange(d, 2 * d), np.arange(3 * d, 4 * d),
                                                           np.arange(5 * d, 6 * d)]))
    gu = np.arange(2 * i)[:, None].astype(np.float32)
    s = RankPlan(cfg, 2, 0).take("model.layers.0.mlp.gate_up_proj.weight", gu, copy=False)
    np.testing.assert_array_equal(s[:, 0], np.concatenate([np.arange(i // 2), np.arange(i, i + i // 2)]))


# TP = 4 and 8 (issue 19's world sizes for Llama-2-70B: 64 heads, 8 KV heads): one KV head a rank at TP = 8
WIDE = dict(num_attention_heads=8, num_key_value_heads=8, attention_bias=True, mlp_bias=True)


def _wide_work(comm):
    return _outputs(tp_from_preset("llama", "tiny", comm, seed=3, **WIDE))


@pytest.mark.parametrize("tp", [4, 8])
def test_tp4_and_tp8_equal_tp1(tp):
    one = _outputs(models.from_preset("llama", "tiny", seed=3, device="cpu", **WIDE))
    ranks = launch(_wide_work, tp, "cpu", timeout=600)
    assert all(r["tokens"] == one["tokens"] for r in ranks)
    assert max(np.abs(r["logits"] - one["logits"]).max() for r in ranks) < 1e-5


def _reduce_work(comm, dtypes):
    from engine.distributed.cpu import CpuCommunicator
    assert isinstance(comm, CpuCommunicator)
    comm.slot_bytes = 64  # force several chunks
    out = {}
    for dtype in dtypes:
        x = engine.tensor(np.arange(37, dtype=np.float64) * (comm.rank + 1) + comm.rank, dtype=getattr(engine, dtype))
        comm.all_reduce(x)
        out[dtype] = x.numpy()
    comm.barrier()
    return out


def test_cpu_all_reduce_sums_in_chunks():
    dtypes = ["float32", "float16", "bfloat16", "int64"]
    outs = launch(_reduce_work, 3, "cpu", args=(dtypes,), timeout=120)
    for dtype in dtypes:
        want = (np.arange(37) * 6 + 3).astype(outs[0][dtype].dtype)  # 0..36 * (1+2+3) + (0+1+2)
        for o in outs:
            np.testing.assert_array_equal(o[dtype], want)


def _fail_work(comm):
    if comm.rank == 1:
        raise ValueError("rank one gives up")
    comm.barrier()  # rank 0 would wait here for ever


def test_a_failing_rank_ends_the_run_with_its_error():
    with pytest.raises(LaunchError, match=r"rank 1 of 2 failed: ValueError: rank one gives up"):
        launch(_fail_work, 2, "cpu", timeout=120, grace=1.0)


@pytest.mark.parametrize("tp, key, value", [(3, "num_attention_heads", 4), (4, "num_key_value_heads", 2)])
def test_sizes_that_do_not_divide_are_named(tp, key, value):
    cfg = models.from_preset("llama", "tiny").config  # 4 heads, 2 kv heads, intermediate 128
    with pytest.raises(TensorParallelError, match=f"size {tp} does not divide llama's {key}={value}"):
        RankPlan(cfg, tp)


def test_more_ranks_than_gpus_is_refused():
    with pytest.raises(TensorParallelError, match=r"--tp 4 needs 4 GPUs \(one per rank\) but 2 are visible"):
        check_world(4, "cuda", available=2)
    with pytest.raises(TensorParallelError, match="pass --device cuda, not 'cuda:1'"):
        check_world(2, "cuda:1")
    with pytest.raises(TensorParallelError, match="positive integer, got 0"):
        check_world(0, "cpu")
    if not engine.is_available("cuda"):
        with pytest.raises(TensorParallelError, match=r"--tp 2 needs 2 GPUs .* 0 are visible"):
            check_world(2, "cuda")


def test_models_without_a_plan_are_refused(tmp_path):
    from engine.distributed.cpu import CpuCommunicator
    block = CpuCommunicator.create_block(2)
    try:
        comm = CpuCommunicator(0, 2, block.name, barrier=None)  # refused before any collective
        with pytest.raises(TensorParallelError, match="'bert' .* is not a decoder LM"):
            tp_from_preset("bert", "tiny", comm)
        with pytest.raises(TensorParallelError, match="not GGUF"):
            tp_from_pretrained(tmp_path / "m.gguf", comm)
        comm.close()
    finally:
        block.close()
        block.unlink()


def test_forward_hook_replaces_the_output_and_comes_off():
    lin = engine.nn.Linear(2, 2, bias=False)
    x = engine.ones(1, 2)
    h = lin.register_forward_hook(lambda m, args, out: out + 1)
    assert lin(x).numpy().tolist() == [[1.0, 1.0]]
    h.remove()
    assert lin(x).numpy().tolist() == [[0.0, 0.0]]


def test_cli_generate_tp2_prints_rank0_tokens(capfd):
    from taper.cli import main
    assert main(["generate", "--model", "llama:tiny", "--ids", "1,2,3", "--max-new-tokens", "8", "--tp", "2",
                 "--device", "cpu"]) == 0
    out = capfd.readouterr().out
    want = generate(models.from_preset("llama", "tiny", device="cpu"), [1, 2, 3], 8).tokens[0]
    assert out.splitlines()[0].split() == [str(t) for t in want]
    assert "tp 2 on cpu" in out


def test_cli_tp_errors_are_one_line(capfd):
    from taper.cli import main
    assert main(["generate", "--model", "llama:tiny", "--ids", "1,2", "--tp", "3", "--device", "cpu"]) == 2
    err = capfd.readouterr().err
    assert err.strip() == ("taper generate: tensor parallel size 3 does not divide llama's num_attention_heads=4 "
                           "(each rank holds whole attention heads); use a size that divides 4")


def test_bench_tp_decode_cpu_path(tmp_path):
    """bench/tp_decode.py's jobs on tiny shapes through the CPU communicator (its GPU run is the lead's)."""
    from bench import tp_decode
    out = tmp_path / "tp.json"
    assert tp_decode.main(["--device", "cpu", "--equal", "llama:tiny", "--scale", "llama:tiny", "--speed", "",
                           "--new-tokens", "4", "--time-steps", "3", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    c = r["equal"][0]["compare"]
    assert c["float32"]["greedy_tokens_equal"] and c["float32"]["logits_max_abs_err"] < 1e-5
    assert c["float16"]["logits_cosine"] > 0.9999
    assert r["equal"][0]["scaling"]["tp1_tokens_per_s"] > 0 and all("error" not in x for x in r["equal"][0]["runs"])


# ---- on GPUs (ENGINE_DEVICE=cuda, two or more GPUs): NCCL, collectives inside CUDA graphs ----------------------
def _nccl_work(comm):
    from engine.capture import Captured
    x = engine.zeros(4, 1024, dtype=engine.float16, device=comm.device)
    step = Captured(lambda: comm.all_reduce(x), device=comm.device)
    sums = []
    for _ in range(6):  # eager, record, capture (+ one planned run), then replays of the graph
        x.fill_(comm.rank + 1)
        step()
        sums.append(float(x.float().sum().item()) / x.numel())
    model = tp_from_preset("llama", "tiny", comm, seed=5)
    return {"sums": sums, "graph": step.graph is not None, **_outputs(model)}


@pytest.mark.cuda
def test_nccl_tp2_on_gpus_equals_tp1():
    from engine.distributed.launch import cuda_device_count
    if cuda_device_count()[0] < 2:
        pytest.skip(f"NCCL tensor parallel needs 2 GPUs, this machine has {cuda_device_count()[0]}")
    ranks = launch(_nccl_work, 2, "cuda", timeout=600)
    for r in ranks:
        assert r["graph"] and r["sums"] == [3.0] * 6  # 1 + 2 on every element, replays included
    one = _outputs(models.from_preset("llama", "tiny", seed=5, device="cuda"))
    assert ranks[0]["tokens"] == one["tokens"] == ranks[1]["tokens"]
    assert np.abs(ranks[0]["logits"] - one["logits"]).max() < 1e-4


def _shared_gpu_work(comm):
    assert comm.device == "cuda:0"
    return _outputs(tp_from_preset("llama", "tiny", comm, seed=5), capture=False)


@pytest.mark.cuda
def test_two_ranks_sharing_one_gpu_equal_tp1():
    """The one-GPU check: both ranks on cuda:0, all-reduces staged through shared host memory, eager."""
    ranks = launch(_shared_gpu_work, 2, "cuda", timeout=600, shared_gpu=True)
    one = _outputs(models.from_preset("llama", "tiny", seed=5, device="cuda"), capture=False)
    assert ranks[0]["tokens"] == one["tokens"] == ranks[1]["tokens"]
    assert np.abs(ranks[0]["logits"] - one["logits"]).max() < 1e-4
