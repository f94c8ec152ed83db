"""The asv suites: every file imports, every benchmark is parameterised with impl and device, the
adapters keep implementation names out of benchmark bodies, and one quick setup + timed call works for
the engine and torch on the cpu (tiny sizes: TAPER_BENCH_QUICK=1, through the fallback runner's own
discovery and timing code, so what runs here is what `taper bench` runs without asv)."""
from __future__ import annotations

import ast
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

import impls
from bench.discovery import discover
from bench.measure import run_attrs, run_combo

ROOT = Path(__file__).resolve().parents[1]
MINE = sorted(p.name for p in (ROOT / "suites").glob("bench_*.py"))  # every suite file


@pytest.fixture(scope="module")
def discovered():
    old = os.environ.get("TAPER_BENCH_QUICK")
    benches, errors = discover(tiny=True)
    yield benches, errors
    if old is None:
        os.environ.pop("TAPER_BENCH_QUICK", None)
    else:
        os.environ["TAPER_BENCH_QUICK"] = old


def test_every_suite_file_imports(discovered):
    benches, errors = discovered
    assert errors == {}
    files = {p.stem for p in (ROOT / "suites").glob("bench_*.py")}
    modules = {b.name.split(".")[0] for b in benches}
    assert files <= modules, f"suite files without benchmarks: {files - modules}"
    import suites.common as common
    assert common.QUICK, "the suites must have been imported with TAPER_BENCH_QUICK=1"


def test_every_benchmark_has_params_with_impl_and_device(discovered):
    benches, _ = discovered
    benches = [b for b in benches if b.name.startswith("bench_")]  # suites/bench_<area>.py (DESIGN.md)
    assert len(benches) > 10
    for b in benches:
        assert b.klass is not None, f"{b.name}: benchmarks are methods of parameterised classes"
        assert "params" in vars(b.klass) and "param_names" in vars(b.klass), f"{b.name}: params/param_names unset"
        assert len(b.params) == len(b.param_names), b.name
        assert b.param_names[:2] == ["impl", "device"], f"{b.name}: {b.param_names}"
        assert {"engine", "torch"} <= set(b.params[0]) and {"cpu", "cuda"} <= set(b.params[1]), b.name
        if b.kind == "track":
            assert getattr(b.get_func(), "unit", None), f"{b.name}: a track_ value needs a unit"


def test_metadata_is_asv_shaped(discovered):
    benches, _ = discovered
    for b in benches:
        if not b.name.startswith("bench_"):
            continue
        m = b.meta()
        assert m["name"] == b.name and m["params"] == [[repr(v) for v in p] for p in b.params]
        assert m["type"] in ("time", "track", "peakmem") and m["unit"]
        assert len(m["version"]) == 64


def test_benchmark_bodies_never_name_an_implementation():
    for name in MINE:
        tree = ast.parse((ROOT / "suites" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in impls.NAMES:
                pytest.fail(f"{name}:{node.lineno} names implementation {node.value!r}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                assert not any(m and m.split(".")[0] in ("torch", "cupy", "engine") for m in mods), \
                    f"{name}:{node.lineno} imports an implementation; go through suites.common"


def _run_cpu(benches, impls):
    """Run every (impl in impls, cpu) combination of each benchmark once (asv --quick rules)."""
    import suites.common as common
    results = {}
    caches = {}
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            for b in benches:
                cache = None
                if b.setup_cache is not None:
                    key = b.meta()["setup_cache_key"]
                    if key not in caches:
                        caches[key] = b.setup_cache(b.klass())
                    cache = caches[key]
                for combo in b.combos():
                    if combo[0] not in impls or combo[1] != "cpu":
                        continue
                    args = ((cache,) if cache is not None else ()) + tuple(combo)
                    r = run_combo(b, args, run_attrs(b, quick=True))
                    common.reset()
                    results[(b.name, combo)] = r
        finally:
            os.chdir(cwd)
    return results


@pytest.fixture(scope="module")
def cpu_runs(discovered):
    benches, _ = discovered
    mine = [b for b in benches if b.name.split(".")[0] + ".py" in MINE]
    return _run_cpu(mine, ("engine", "torch", "numpy"))


def test_one_quick_call_per_benchmark_engine_and_torch_cpu(cpu_runs):
    failed = {k: r["error"].strip().splitlines()[-1] for k, r in cpu_runs.items() if r["error"]}
    assert not failed, failed
    by_bench = {}
    for (name, combo), r in cpu_runs.items():
        if r["skip"] is None:
            by_bench.setdefault(name, set()).add(combo[0])
    for name in {n for n, _ in cpu_runs}:
        reasons = {r["skip"] for (n, _), r in cpu_runs.items() if n == name}
        if all(str(r).startswith("GPU-only") for r in reasons):
            continue  # a GPU-only measurement
        if any("pip install -e '.[yolo-test]'" in str(r) for r in reasons):
            continue  # its torch reference (ultralytics) lives in the yolo-test venv, not installed here
        assert {"engine", "torch"} <= by_bench.get(name, set()), f"{name}: ran for {by_bench.get(name)}"


def test_values_are_sane(cpu_runs):
    for (name, combo), r in cpu_runs.items():
        if r["skip"] is not None:
            continue
        if ".time_" in name:
            assert 0 < r["result"] < 5, (name, combo, r["result"])
            assert r["number"] == 1 and len(r["samples"]) == 1
        elif "peak_device_bytes" in name or "reserved_bytes" in name:
            # the engine's pool keeps statistics on the cpu too; torch and numpy keep none there
            assert (r["result"] >= 0) if combo[0] == "engine" else math.isnan(r["result"]), (name, combo)


def test_skips_say_why(cpu_runs):
    skips = {k: r["skip"] for k, r in cpu_runs.items() if r["skip"] is not None}
    assert all(isinstance(v, str) and len(v) > 10 for v in skips.values()), skips
    # the engine never unpickles: (engine, pt) is a skip with that reason
    assert any("never unpickles" in v for (n, c), v in skips.items() if n.endswith("Load.time_load")), skips


def test_llm_suite_runs_tiny_on_cpu_with_every_implementation(discovered):
    """bench_llm's decode and prefill through every implementation present (tiny, float32, batch 1):
    each runs, or skips with its reason (ONNX Runtime has no decode loop)."""
    benches, _ = discovered
    llm = [b for b in benches if b.name in ("bench_llm.Decode.track_tokens_per_s", "bench_llm.Prefill.track_prefill_ms")]
    assert len(llm) == 2
    import suites.common as common
    ran = {}
    for b in llm:
        for combo in b.combos():
            if combo[1] != "cpu" or combo[2] != "float32" or (len(combo) > 4 and (combo[4] != 1 or combo[5] != "default")):
                continue
            r = run_combo(b, tuple(combo), run_attrs(b, quick=True))
            common.reset()
            assert not r["error"], (b.name, combo, r["error"])
            ran[(b.name, combo[0])] = r["skip"] or r["result"]
    present = [n for n in impls.MODEL_IMPLS if impls.available(n)]
    for name in present:
        assert isinstance(ran[("bench_llm.Prefill.track_prefill_ms", name)], float), (name, ran)
        dec = ran[("bench_llm.Decode.track_tokens_per_s", name)]
        assert isinstance(dec, float) and dec > 0 or "no decode loop" in str(dec), (name, dec)


def test_run_attrs_and_metadata_share_asv_defaults():
    import types

    from bench.discovery import DEFAULTS, Bench

    class T:
        def time_x(self):
            pass
    b = Bench("bench_x.T.time_x", "time", types.ModuleType("bench_x"), T, "time_x")
    a = run_attrs(b, quick=False)
    assert a == {"number": 0, "repeat": 0, "rounds": 2, "min_run_count": 2, "sample_time": 0.01,
                 "warmup_time": -1.0, "timeout": 60.0}
    assert {k: b.meta()[k] for k in a} == a and a["rounds"] == DEFAULTS["processes"]
    T.processes, T.timeout = 3, 5
    assert run_attrs(b, quick=False)["rounds"] == 3 and b.meta()["timeout"] == 5.0
    T.rounds = 4
    assert run_attrs(b, quick=True) == {**a, "number": 1, "repeat": 1, "rounds": 1, "warmup_time": 0.0, "timeout": 5.0}
    assert b.meta()["rounds"] == 4


# ---- the adapters ------------------------------------------------------------------------------------------
def test_adapters_agree_on_ops():
    from suites.common import get_impl
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8), dtype=np.float32)
    w = rng.standard_normal((8,), dtype=np.float32)
    impls = [get_impl(n, "cpu", "float32") for n in ("engine", "torch", "numpy")]
    for op, args, kw in [("softmax", (x,), {"dim": -1}), ("rms_norm", (x, (8,), w), {"eps": 1e-6}),
                         ("layer_norm", (x, (8,), w, w), {"eps": 1e-5}), ("silu", (x,), {}),
                         ("matmul", (x, x.transpose(0, 2, 1)), {}), ("reshape", (x, (6, 8)), {})]:
        outs = []
        for im in impls:
            native = [im.tensor(a) if isinstance(a, np.ndarray) else a for a in args]
            outs.append(im.to_numpy(im.build(im.op(op), *native, **kw)()))
        for o in outs[1:]:
            np.testing.assert_allclose(o, outs[0], rtol=1e-5, atol=1e-5, err_msg=op)
    q = rng.standard_normal((1, 4, 5, 8), dtype=np.float32)
    kv = rng.standard_normal((1, 2, 5, 8), dtype=np.float32)
    outs = [im.to_numpy(im.op("sdpa")(im.tensor(q), im.tensor(kv), im.tensor(kv), is_causal=True, enable_gqa=True))
            for im in impls]
    for o in outs[1:]:
        np.testing.assert_allclose(o, outs[0], rtol=1e-5, atol=1e-5)


def test_missing_things_are_skips_with_reasons():
    from suites.common import get_impl
    for impl, device, dtype in [("numpy", "cuda", "float32"), ("cupy", "cpu", "float32"),
                                ("numpy", "cpu", "bfloat16"), ("nope", "cpu", "float32")]:
        with pytest.raises(NotImplementedError, match=r"\w"):
            get_impl(impl, device, dtype)
    with pytest.raises(NotImplementedError, match="conv2d"):
        get_impl("numpy", "cpu", "float32").op("conv2d")


def test_functional_decoder_same_work_on_both_sides():
    from suites.common import DECODERS, Decoder, decoder_arrays, get_impl
    shape = DECODERS["tiny"]
    arrays = decoder_arrays(shape, "float32")
    outs = []
    for name in ("engine", "torch"):
        im = get_impl(name, "cpu", "float32")
        dec = Decoder(im, shape, {k: im.tensor(v) for k, v in arrays.items()})
        toks, prefill, steps = dec.generate([1, 2, 3, 4, 5], 4)
        assert len(toks) == 4 and len(steps) == 3 and prefill > 0
        outs.append(toks)
    assert outs[0] == outs[1]


def test_checkpoint_round_trip_and_page_cache(tmp_path):
    from suites.common import drop_page_cache, get_impl, resident_fraction, warm_page_cache, write_checkpoint
    arrays = {"a": np.arange(50_000, dtype=np.float32).reshape(500, 100), "b": np.ones(7, np.float32)}
    paths = write_checkpoint(tmp_path, arrays)
    assert set(paths) == {"pt", "safetensors"}
    for impl, fmt in (("engine", "safetensors"), ("torch", "pt"), ("torch", "safetensors")):
        im = get_impl(impl, "cpu")
        out = im.load_checkpoint(paths[fmt])
        np.testing.assert_array_equal(im.to_numpy(out["a"]), arrays["a"])
    with pytest.raises(NotImplementedError, match="never unpickles"):
        get_impl("engine", "cpu").can_load(paths["pt"])
    warm_page_cache([paths["safetensors"]])
    frac = resident_fraction(paths["safetensors"])
    reason = drop_page_cache([paths["safetensors"]])
    if reason is None:
        assert resident_fraction(paths["safetensors"]) <= 0.05
    else:
        assert "cold page cache" in reason
    assert frac is None or 0 <= frac <= 1


def test_ops_suite_runs_with_every_implementation(discovered):
    """Each op benchmark (tiny, float32, its first size) through torch-compile and onnxruntime too: it
    runs or skips with its reason, never fails."""
    benches, _ = discovered
    ops = [b for b in benches if b.name.startswith("bench_ops.")]
    import suites.common as common
    ran = {}
    for b in ops:
        seen = set()
        for combo in b.combos():
            if combo[1] != "cpu" or combo[2] != "float32" or combo[0] not in ("torch-compile", "onnxruntime") \
                    or combo[0] in seen:
                continue
            seen.add(combo[0])
            r = run_combo(b, tuple(combo), run_attrs(b, quick=True))
            common.reset()
            assert not r["error"], (b.name, combo, r["error"])
            ran[(b.name, combo[0])] = r["skip"] or r["result"]
    for n in ("torch-compile", "onnxruntime"):
        if impls.available(n):
            assert any(isinstance(v, float) for (name, i), v in ran.items() if i == n), (n, ran)


# ---- memoised measurements and warm-ups ------------------------------------------------------------------------
def test_measured_keeps_results_and_skips():
    """A skip raised after a costly load (e.g. onnxruntime's start) is kept like a result: later
    track_ methods of the same parameter set raise the same reason without measuring again."""
    import suites.common as common
    calls = []

    def skip():
        calls.append("skip")
        raise impls.Unavailable("onnxruntime: no decode loop (test)")

    def value():
        calls.append("value")
        return {"x": 1.0}
    keys = (("test", "skip", object()), ("test", "value", object()))
    try:
        for _ in range(3):
            with pytest.raises(impls.Unavailable, match=r"^onnxruntime: no decode loop \(test\)$"):
                common.measured(keys[0], skip)
            assert common.measured(keys[1], value) == {"x": 1.0}
        assert calls == ["skip", "value"]
    finally:
        for k in keys:
            common._MEASURED.pop(k, None)


def test_llm_warm_up_warms_the_timed_shape(monkeypatch):
    """warm_up runs the timed loop itself: the timed runs reuse its decoder (no second capture)."""
    import engine.generation
    from suites import bench_llm

    built = []

    class Counted(engine.generation.Decoder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)
    monkeypatch.setattr(engine.generation, "Decoder", Counted)
    lm = impls.get("engine").load("llama:tiny", capture=False)  # the planned step (the cpu's default is plain)
    bench_llm.warm_up(lm, 1, steps=4)
    bench_llm.decode_seconds(lm, 1, steps=4)
    assert len(built) == 1 and lm.decoder is built[0]
    assert lm.decoder.step_fn.calls == 4 + 4  # one step function: warmed, recorded, planned in the warm-up


def test_step_bytes_counts_only_routed_experts():
    """achieved_gb_per_s of a mixture of experts: the experts no row routes to are not read."""
    from engine import models
    from suites.bench_llm import step_bytes
    m = models.from_preset("mixtral", "tiny")
    c = {"num_local_experts": m.config.num_local_experts, "num_experts_per_tok": m.config.num_experts_per_tok,
         "hidden_size": m.config.hidden_size, "intermediate_size": m.config.intermediate_size,
         "num_hidden_layers": m.config.num_hidden_layers}
    total = sum(p.numel() * 4 for p in m.parameters())
    experts = sum(p.numel() * 4 for n, p in m.named_parameters() if ".experts." in n)
    n_exp, k = c["num_local_experts"], c["num_experts_per_tok"]
    assert step_bytes(c, total, 4, 1) == total - experts * (n_exp - k) // n_exp
    assert step_bytes(c, total, 4, n_exp) == total
    assert step_bytes({"hidden_size": 8}, total, 4, 1) == total
