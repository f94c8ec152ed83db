"""impls/: one registry, the same interface for every implementation (ops, models, decode loops), each
unavailable one skipped with its reason, and `taper impls`."""
import json

import numpy as np
import pytest

import impls
from taper.cli import main as taper_main

RNG = np.random.default_rng(0)


def test_registry_and_availability_here():
    rows = impls.availability(devices=("cpu",))
    assert [r["impl"] for r in rows] == list(impls.NAMES)
    assert {r["impl"]: r["kind"] for r in rows}["engine"] == "candidate"
    for r in rows:  # every row says why it cannot run, or what it is
        assert r["detail"]
    with pytest.raises(impls.Unavailable, match="unknown implementation 'bogus'"):
        impls.get("bogus")


def test_taper_impls(capsys):
    assert taper_main(["impls", "--device", "cpu", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["impl"] for r in rows} == set(impls.NAMES) and all(r["device"] == "cpu" for r in rows)


OPS = [("softmax", lambda im, x, w, v: im.op("softmax")(x, dim=-1)),
       ("linear", lambda im, x, w, v: im.op("linear")(x, w)),
       ("rms_norm", lambda im, x, w, v: im.op("rms_norm")(x, (8,), v, eps=1e-6)),
       ("silu", lambda im, x, w, v: im.op("silu")(x))]


@pytest.mark.parametrize("name,fn", OPS)
def test_every_available_implementation_computes_the_same_op(name, fn):
    x, w = RNG.standard_normal((3, 8)).astype(np.float32), RNG.standard_normal((8, 8)).astype(np.float32)
    v = RNG.standard_normal(8).astype(np.float32)
    outs = {}
    for n in impls.NAMES:
        try:
            im = impls.get(n, "cpu")
        except impls.Unavailable:
            continue
        outs[n] = im.to_numpy(fn(im, im.tensor(x), im.tensor(w), im.tensor(v)))
    assert {"engine", "torch", "numpy"} <= set(outs)
    for n, o in outs.items():
        np.testing.assert_allclose(o, outs["torch"], rtol=2e-5, atol=2e-5, err_msg=f"{name} on {n}")


def test_decode_loops_agree_on_greedy_tokens():
    """The same preset weights through every implementation's own decode loop."""
    eng = impls.get("engine").load("llama:tiny")
    weights = {k: np.asarray(v) for k, v in eng.state_arrays().items()}
    ids = RNG.integers(0, 256, (2, 6))
    want = eng.generate(ids, 6)
    for n in ("torch", "torch-compile"):
        if impls.available(n):
            got = impls.get(n).load("llama:tiny", weights=weights).generate(ids, 6)
            np.testing.assert_array_equal(got, want, err_msg=n)
    if impls.available("onnxruntime"):
        ort = impls.get("onnxruntime").load("llama:tiny", weights=weights)
        np.testing.assert_allclose(ort.logits(ids), eng.logits(ids), rtol=1e-4, atol=1e-4)
        with pytest.raises(impls.Unavailable, match="no decode loop"):
            ort.start(ids, 4)


def test_a_loop_an_implementation_lacks_is_its_reason():
    with pytest.raises(impls.Unavailable, match="one decode loop"):
        impls.get("torch").load("llama:tiny", loop="eager")


def test_ops_are_built_once_per_implementation():
    """op() and F.<op> hand out the same callable each time (torch-compile's keeps its compiled
    function, onnxruntime's its exported sessions)."""
    for n in impls.NAMES:
        if not impls.available(n):
            continue
        im = impls.get(n, "cpu")
        assert im.op("softmax") is im.op("softmax") is im.F.softmax, n


def test_touch_reads_one_byte_per_page():
    from impls.base import touch
    a = np.zeros(3 * 4096 + 1, np.uint8)
    a[::4096] = 1
    assert touch({"a": a, "b": np.ones(0, np.float32)}) == 4


def test_torch_float32_is_not_tf32():
    """Verify references and benchmarks run torch's float32 as float32 on CUDA (cuDNN defaults to TF32),
    also where torch's test harness froze the cudnn flags."""
    import torch
    from impls.torch_eager import exact_float32
    torch.backends.disable_global_flags()  # what importing torch.testing._internal's OpInfo database does
    exact_float32()
    assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False


def test_torch_compile_static_cache_of_a_window_that_never_slides():
    """A sliding window at least as wide as the cache never slides: its StaticCache is built from a
    full-attention copy of the config (transformers' sliding static layers recompile the compiled step
    at every token); a narrower window is kept as it is, and the model's own config never changes."""
    from transformers import MistralConfig

    from impls.torch_compile import _full_attention_config
    cfg = MistralConfig(sliding_window=4096, num_hidden_layers=2, layer_types=["sliding_attention"] * 2)
    wide = _full_attention_config(cfg, 256)
    assert wide.sliding_window is None and set(wide.layer_types) == {"full_attention"}
    assert cfg.sliding_window == 4096 and set(cfg.layer_types) == {"sliding_attention"}
    assert _full_attention_config(cfg, 8192) is cfg
    assert _full_attention_config(MistralConfig(sliding_window=None), 256).sliding_window is None
