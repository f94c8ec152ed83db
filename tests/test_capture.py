"""engine.capture: a captured step equals the eager one (every model family, token for token), the
fusion plan finds its groups by dataflow, static inputs, clear errors, and graph-safe pool leases.
On the CPU the capture runs the fusion plan eagerly; with ENGINE_DEVICE=cuda it is a CUDA graph."""
import gc

import numpy as np
import pytest

import engine
from engine import functional as F
from engine import models
from engine.capture import CaptureError, Captured, Fused
from engine.generation import Decoder, generate
from engine.storage import GraphMemory
from helpers import DEVICE, needs_device

pytestmark = needs_device
FAMILIES = ["llama", "mistral", "qwen2", "gemma", "phi3", "mixtral"]
DTYPES = ["float32", "float16", "bfloat16"] if DEVICE.type == "cuda" else ["float32", "float16"]
# tiny presets with head_dim 32 (the GPU kernels take multiples of 32) and more layers than heads
SMALL = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32, intermediate_size=192,
             num_hidden_layers=2)


def model(mt, dtype, **over):
    kw = dict(SMALL)
    if mt == "phi3":
        kw.pop("head_dim")
    return models.from_preset(mt, "tiny", dtype=getattr(engine, dtype), device=DEVICE, **{**kw, **over})


PROMPTS = [[5, 9, 33, 2, 71, 100, 3], [17, 4, 250]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mt", FAMILIES)
def test_captured_equals_eager(mt, dtype):
    m = model(mt, dtype)
    for prompts in (PROMPTS[:1], PROMPTS):  # batch 1, and batch 2 with left padding
        plain = generate(m, prompts, max_new_tokens=10, stop_token_ids=[], capture="plain").tokens
        for mode in (False, True):  # the fused kernels launched from the host, and as a graph
            assert generate(m, prompts, max_new_tokens=10, stop_token_ids=[], capture=mode).tokens == plain


@pytest.mark.parametrize("mt", FAMILIES)
def test_captured_sampling_equals_eager(mt):
    m = model(mt, "float32")
    kw = dict(max_new_tokens=8, stop_token_ids=[], temperature=0.9, top_k=40, top_p=0.9, repetition_penalty=1.2,
              seed=5)
    assert generate(m, PROMPTS[0], capture=True, **kw).tokens == generate(m, PROMPTS[0], capture="plain", **kw).tokens


@pytest.mark.parametrize("mt", FAMILIES)
def test_a_recurring_prompt_shape_prefills_from_a_graph(mt):
    """The second prefill of a prompt shape runs a Captured's three calls, later ones replay it; each
    prefill (new ids, the same shape) and the decode after it give a plain decoder's tokens."""
    m = model(mt, "float32")
    rng = np.random.default_rng(1)
    # max_len 12: room for one prefill of 7 and 4 steps (the capture must not count the prompt twice)
    plain, dec = Decoder(m, 1, 12, capture="plain"), Decoder(m, 1, 12, capture=True)
    for _ in range(4):
        ids = engine.tensor(rng.integers(0, 250, (1, 7)), device=DEVICE)
        for d in (plain, dec):
            d.prefill(ids)
            for _ in range(4):
                d.step()
        assert dec.tokens().tolist() == plain.tokens().tolist()
    assert isinstance(dec.prefills[(1, 7)], Captured) and dec.prefills[(1, 7)].calls == 5  # 1 + 2: phases, 2 replays


def test_captured_prefills_keep_the_latest_shapes():
    m = model("llama", "float32")
    dec = Decoder(m, 1, 24, capture=True)
    for n in (3, 4, 5, 3, 4, 5):  # each shape seen twice: captured at its second prefill
        dec.prefill(engine.tensor([list(range(1, n + 1))], device=DEVICE))
    kept = {k[1] for k, g in dec.prefills.items() if isinstance(g, Captured)}
    assert kept == {4, 5} and dec.prefills[(1, 3)] is None  # the least recently used graph went
    ids = engine.tensor([[1, 2, 3]], device=DEVICE)
    first = dec.prefill(ids).numpy()  # seen before: captured again
    assert isinstance(dec.prefills[(1, 3)], Captured) and set(dec.prefills) == {(1, 3), (1, 4), (1, 5)}
    assert first.tolist() == Decoder(m, 1, 24, capture="plain").prefill(ids).numpy().tolist()


def _plan_fused(m, batch=1) -> list:
    dec = Decoder(m, batch, 24, capture=True)
    dec.prefill(engine.tensor([[1, 2, 3]] * batch, device=DEVICE))
    for _ in range(3):
        dec.step()
    return [f for f in dec.step_fn.the_plan.values() if isinstance(f, Fused)]


def _groups(m, batch=1):
    fused = _plan_fused(m, batch)
    return {"norm": sum(f.norm is not None for f in fused), "glu": sum(f.act is not None for f in fused),
            "residual": sum(f.residual is not None for f in fused),
            "grouped": sum(len(f.group) + 1 for f in fused if f.group)}


@pytest.mark.parametrize("mt,want", [
    # per layer: q, k, v grouped into one launch that takes the norm, gate/up with the norm and the GLU,
    # o_proj and down_proj with the residual; + lm_head with the final norm
    ("llama", {"norm": 5, "glu": 2, "residual": 4, "grouped": 6}),
    ("phi3", {"norm": 5, "glu": 2, "residual": 4, "grouped": 0}),  # fused qkv_proj; gate_up_proj in halves
    ("gemma", {"norm": 5, "glu": 2, "residual": 4, "grouped": 6}),  # gelu_tanh GLU, (1 + w) norm
])
def test_fusion_plan_groups(mt, want):
    assert _groups(model(mt, "float32")) == want


def test_fusion_plan_marks_frozen_weights():
    """Fused.frozen (the GPU backend then loads the weights before the kernel before ends, cupy_launch): a
    decode's weights, parameters, are frozen; a weight the step computes is not (a linear's, or the norm's that the
    fused launch takes), and the step still equals eager."""
    assert all(f.frozen for f in _plan_fused(model("llama", "float32")))
    rng = np.random.default_rng(0)
    w = engine.tensor(rng.standard_normal((32, 32)).astype(np.float32), device=DEVICE)
    nw = engine.tensor(1 + 0.1 * rng.standard_normal(32).astype(np.float32), device=DEVICE)
    for fn, frozen in ((lambda x: x + F.linear(x, w), True), (lambda x: x + F.linear(x, w * 2.0), False),
                       (lambda x: x + F.linear(F.rms_norm(x, (32,), nw, 1e-5), w), True),
                       (lambda x: x + F.linear(F.rms_norm(x, (32,), nw * 2.0, 1e-5), w), False)):
        step = Captured(fn)
        for i in range(5):
            x = engine.tensor(rng.standard_normal((1, 32)).astype(np.float32), device=DEVICE)
            np.testing.assert_array_equal(step(x).numpy(), fn(x).numpy())
        assert [f.frozen for f in step.the_plan.values() if isinstance(f, Fused)] == [frozen]


def test_static_inputs_and_fixed_shapes():
    step = Captured(lambda x: (x * 2.0 + 1.0).sum(-1))
    for i in range(5):  # warm-up, record, capture, replays: every call computes on this call's input
        x = engine.tensor(np.full((2, 3), float(i), np.float32), device=DEVICE)
        np.testing.assert_allclose(step(x).numpy(), np.full(2, 3 * (2.0 * i + 1)))
    with pytest.raises(CaptureError, match=r"input 0: \(3, 3\).*captured with \(2, 3\)"):
        step(engine.zeros(3, 3, device=DEVICE))


def test_a_step_that_changes_path_is_refused():
    calls = [0]

    def fn(x):
        calls[0] += 1
        return x.exp() if calls[0] < 3 else x.exp().sum()  # the third call differs from the record

    step = Captured(fn)
    x = engine.ones(4, device=DEVICE)
    step(x)
    step(x)
    with pytest.raises(CaptureError, match="more backend calls|another path"):
        step(x)


@pytest.mark.cuda
def test_host_read_inside_a_step_names_the_op():
    step = Captured(lambda x: x * float((x.sum()).item()))
    x = engine.ones(4, device=DEVICE)
    step(x)
    with pytest.raises(CaptureError, match=r"to_numpy .*test_capture.py"):
        step(x)


@pytest.mark.cuda
def test_capture_under_pool_pressure_and_recapture():
    """A pool capped near what decoding needs still captures (the graph takes blocks the record left
    in the cache), and a second decoder with a longer cache captures its own graph."""
    m = model("llama", "float16")
    b = engine.backend(DEVICE)
    eager = generate(m, PROMPTS[0], max_new_tokens=40, stop_token_ids=[], capture="plain").tokens
    gc.collect()
    b.pool.empty_cache()
    old = b.pool.limit_bytes
    b.pool.limit_bytes = b.pool.stats()["allocated_bytes"] + (24 << 20)
    try:
        assert generate(m, PROMPTS[0], max_new_tokens=12, stop_token_ids=[], capture=True).tokens[0] == eager[0][:12]
        assert generate(m, PROMPTS[0], max_new_tokens=40, stop_token_ids=[], capture=True).tokens == eager
    finally:
        b.pool.limit_bytes = old


def test_graph_memory_is_not_handed_out_while_the_graph_lives():
    b = type(engine.backend(DEVICE))(DEVICE)  # a fresh backend: exact counts
    pool = b.pool
    mem = GraphMemory(pool)
    with mem:
        t = b.empty((1024,), engine.float32)
        t2 = b.empty((1024,), engine.float32)
        ptr = t.__array_interface__["data"][0] if hasattr(t, "__array_interface__") else t.data.ptr
        del t  # released during the capture: the graph keeps it
    assert pool.stats()["graph_bytes"] == 4096 and pool.stats()["allocated_bytes"] == 8192
    u = b.empty((1024,), engine.float32)
    uptr = u.__array_interface__["data"][0] if hasattr(u, "__array_interface__") else u.data.ptr
    assert uptr != ptr  # not the graph's block
    del t2  # still pinned by the graph
    assert pool.stats()["allocated_bytes"] == 3 * 4096
    mem.release()
    assert pool.stats()["graph_bytes"] == 0 and pool.stats()["allocated_bytes"] == 4096  # only u
    del u
    assert pool.stats()["allocated_bytes"] == 0
