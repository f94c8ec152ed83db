"""migration.verify, migration.report and `taper verify`.

Small torch nets and every engine LLM (tiny transformers configs, random weights) must pass; planted
bugs (rotary halves swapped in one layer, a Gemma norm without its (1 + w), one Linear transposed,
a wrong BatchNorm eps) must be localised to the right layer as the first divergence."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import engine
from engine.io.safetensors import safe_open
from migration.port import port, port_hf
from migration.report import LayerResult, VerifyReport
from migration.verify import (CaptureFile, Tolerance, compare_arrays, first_divergence, lm_metrics, split_key,
                              verify, verify_golden, verify_hf, verify_module)
from taper.cli import main
from test_port import HF, Block, LSTMTagger, make_cnn, randomize, registered, tiny_hf  # noqa: F401

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rnd(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---- metrics and helpers ---------------------------------------------------------------------------------
def test_compare_arrays_metrics():
    r = np.array([1.0, -2.0, 0.0, 4.0], np.float32)
    a = np.array([1.0, -2.5, 0.0, 4.1], np.float32)
    m = compare_arrays(a, r, rtol=0.01, atol=0.0)
    assert m["max_abs"] == pytest.approx(0.5) and m["mean_abs"] == pytest.approx(0.15, rel=1e-5)
    assert m["max_rel"] == pytest.approx(0.25) and 0.98 < m["cosine"] < 1
    # the smallest atol that passes with rtol: |a - r| - rtol * |r| at the worst element
    assert m["min_passing_atol"] == pytest.approx(0.5 - 0.02, rel=1e-6) and not m["passed"]
    assert compare_arrays(a, r, 0.01, m["min_passing_atol"] + 1e-12)["passed"]
    nan = np.array([np.nan, np.inf, 1.0], np.float32)
    same = compare_arrays(nan, nan.copy(), 0, 0)
    assert same["passed"] and same["nan"] == 1 and same["inf"] == 1 and same["max_abs"] == 0
    bad = compare_arrays(np.array([np.nan, 1.0]), np.array([0.0, 1.0]), 0.1, 0.1)
    assert not bad["passed"] and bad["max_abs"] == np.inf and bad["nan"] == 1
    assert compare_arrays(np.zeros(3), np.zeros(3), 0, 0)["cosine"] == 1.0
    chunked = compare_arrays(a, r, 0.01, 0.0, chunk=3)
    assert chunked == m


def test_tolerance_overrides_and_keys():
    t = Tolerance("float32", {"model.layers.*": (1e-3, 1e-4), "lstm:1": (0.5, 0.5)}, scale=2.0)
    assert t("fc") == (2.6e-6, 2e-5)
    assert t("model.layers.3.mlp") == (1e-3, 1e-4) and t("model.layers.3.mlp@1:2") == (1e-3, 1e-4)
    assert t("lstm:1") == (0.5, 0.5) and t("lstm") == (2.6e-6, 2e-5)
    assert t("ids", np.int64) == (0.0, 0.0)
    assert split_key("a.b@2:1") == ("a.b", 2, 1) and split_key("<output>") == ("<output>", 0, 0)


def _res(name, passed, inp):
    return LayerResult(name, name, (1,), 0.0, 0.0, 0.0, 1.0, 0, 0, 0.0, passed, 0, 0, inp)


def test_first_divergence_rule():
    rs = [_res("a", True, True), _res("b.child", False, False), _res("b", False, True), _res("c", False, False)]
    assert first_divergence(rs) == ("b", "")
    name, note = first_divergence([_res("a", True, None), _res("b", False, False), _res("c", False, False)])
    assert name == "b" and "outside the compared modules" in note
    assert first_divergence([_res("a", True, True)]) == (None, "")


@pytest.mark.parametrize("reruns,output_ok,inherited", [
    ({"g": False}, True, ["g", "h"]),               # the root matches on the reference inputs: inherited
    ({"g": True}, True, []),                        # it still fails there: the layer is wrong
    ({"g": None}, True, []),                        # it cannot be re-run: not explained
    ({"g": False}, False, []),                      # the model output fails: never excused
    ({"g": False, "k": True}, True, []),            # a second root that still fails
])
def test_inherited_rounding_is_reported_not_failed(reruns, output_ok, inherited):
    """A failing intermediate output whose re-run on the reference inputs passes, with passing model
    outputs, is rounding carried in from upstream (seen: bfloat16 cuBLAS rounding a gelu input one ulp
    apart); every other case keeps the FAIL verdict."""
    from migration.verify import explain_inherited
    layers = [_res("a", True, True), _res("g", False, True), _res("h", False, False),
              _res("<output>", output_ok, True)]
    if "k" in reruns:
        layers.insert(3, _res("k", False, True))
    rep = VerifyReport("m", "bfloat16", "cuda", layers)
    rep.first_divergence = first_divergence(layers)[0]
    rep.confirmed = reruns[rep.first_divergence]  # as verify does before asking about the other roots
    explain_inherited(rep, lambda name: reruns[name])
    assert rep.inherited == inherited and rep.passed == bool(inherited)
    assert rep.confirmed == reruns["g"]
    back = VerifyReport.from_dict(json.loads(rep.to_json()))
    assert back.inherited == inherited and back.passed == rep.passed
    if inherited:
        assert "inherited: 2 failing" in rep.table() and "inherited" in rep.markdown()


def test_lm_metrics():
    x = rnd(2, 5, 11)
    m = lm_metrics(x, x)
    assert m["top1_agreement"] == 1 and m["top5_overlap"] == 1 and m["kl"] == pytest.approx(0, abs=1e-12)
    y = x.copy()
    y[0, 0] = -y[0, 0]
    m = lm_metrics(y, x)
    assert m["top1_agreement"] == pytest.approx(0.9) and m["kl"] > 0


def test_capture_file_streams_valid_safetensors(tmp_path):
    import ml_dtypes
    from safetensors.numpy import load_file
    cap = CaptureFile(tmp_path / "c.safetensors")
    arrays = {"b": rnd(3, 4), "a@1:2": np.arange(5, dtype=np.int64), "s": np.float32(2.5) * np.ones(()),
              "e": np.zeros((0, 3), np.float32)}
    for k, v in arrays.items():
        cap.add(k, v)
    cap.add("h", np.ones(4, ml_dtypes.bfloat16))
    with pytest.raises(Exception):
        cap.add("b", rnd(1))
    cap.close({"order": ["b", "a@1:2"]})
    assert not (tmp_path / "c.safetensors.part").exists()
    with safe_open(tmp_path / "c.safetensors") as f:
        assert f.keys() == ["b", "a@1:2", "s", "e", "h"] and json.loads(f.metadata["order"]) == ["b", "a@1:2"]
    back = load_file(str(tmp_path / "c.safetensors"))  # the safetensors library reads it too
    for k, v in arrays.items():
        np.testing.assert_array_equal(back[k], v)


# ---- small nets ------------------------------------------------------------------------------------------------
def test_verify_mlp():
    tm = randomize(nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Dropout(0.1), nn.Linear(32, 32), nn.SiLU(),
                                 nn.Linear(32, 4)))
    rep = verify_module(tm, [rnd(3, 8)])
    assert rep.passed and rep.first_divergence is None
    assert [r.name for r in rep.layers] == ["0", "1", "2", "3", "4", "5", "<output>"]
    assert all(r.input_passed for r in rep.layers) and rep.layers[0].torch_max_abs is not None


def test_verify_cnn_with_batchnorm_and_pooling():
    rep = verify_module(make_cnn(), [rnd(2, 3, 16, 16)])
    assert rep.passed, rep.table()
    assert {"0", "1", "3", "7", "8", "9", "11"} <= {r.name for r in rep.layers}


def test_verify_lstm_tagger(registered):
    ids = np.random.default_rng(1).integers(0, 50, (3, 9))
    rep = verify_module(randomize(LSTMTagger()), [ids])
    assert rep.passed, rep.table()
    names = [r.name for r in rep.layers]
    assert names == ["embed", "lstm", "lstm:1", "lstm:2", "head", "<output>"]  # output, h_n, c_n
    assert rep.layer("lstm").shape == (3, 9, 20) and rep.layer("lstm:1").shape == (4, 3, 10)


def test_verify_transformer_block_with_mha(registered):
    rep = verify_module(randomize(Block()), [rnd(2, 6, 16)])
    assert rep.passed, rep.table()
    assert "attn" in [r.name for r in rep.layers]  # MultiheadAttention compared as one layer
    assert rep.unmatched["torch_only"] == []  # out_proj is not called as a module on either side


def test_planted_bug_in_a_cnn_is_localised():
    tm = make_cnn()
    em = port(tm)
    em[1].eps = 1e-1  # BatchNorm2d with the wrong eps
    rep = verify(tm, em, [rnd(2, 3, 16, 16)])
    assert not rep.passed and rep.first_divergence == "1" and rep.confirmed is True
    assert rep.layer("0").passed and rep.layer("2").input_passed is False


def test_module_called_twice_and_tolerance_globs():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            return self.fc(torch.tanh(self.fc(x)))

    class ETwice(engine.nn.Module):
        def forward(self, x):
            return self.fc(self.fc(x).tanh())

    from migration import module_map as mm
    mm.register(Twice, ETwice, children=True)
    try:
        tm = randomize(Twice())
        em = port(tm)
        rep = verify(tm, em, [rnd(4, 6)])
        assert [r.name for r in rep.layers] == ["fc", "fc@1", "<output>"] and rep.passed
        em.fc.bias = em.fc.bias + 1e-3  # a small error on every call
        rep = verify(tm, em, [rnd(4, 6)])
        assert not rep.passed and rep.first_divergence == "fc"
        rep = verify(tm, em, [rnd(4, 6)], tol={"fc*": (0, 5e-3), "<output>": (0, 5e-3)})
        assert rep.passed and rep.layer("fc@1").atol == 5e-3
    finally:
        mm.unregister(Twice)


# ---- engine LLMs ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", list(HF))
def test_verify_every_engine_model(model_type):
    tm = tiny_hf(model_type)
    rep = verify_hf(tm, seq_len=12)
    assert rep.passed, rep.table(only_failed=True)
    assert rep.top1_agreement == 1.0 and rep.top5_overlap == 1.0 and rep.kl < 1e-8
    names = [r.name for r in rep.layers]
    assert names[-1] == "<output>" and "model.layers.1.self_attn" in names and "lm_head" in names
    if model_type == "mixtral":  # torch's mlp is the engine's block_sparse_moe (renamed by the rules)
        assert "model.layers.0.block_sparse_moe" in names


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_verify_reduced_precision_against_fp64(dtype):
    rep = verify_hf(tiny_hf("llama"), dtype=dtype, seq_len=8)
    assert rep.passed, rep.table(only_failed=True)
    assert rep.reference == "torch float64" and rep.dtype == dtype
    assert all(r.torch_max_abs is not None for r in rep.layers)
    assert rep.top1_agreement >= 0.85


def _swap_rotary_in(module, attn):
    """Plant 'rotary halves not swapped' (x * sin instead of rotate_half(x) * sin) in one attention."""
    real_fwd = attn.forward

    def bad_rotary(x, cos, sin):
        return x * cos.unsqueeze(1) + x * sin.unsqueeze(1)

    def forward(*a, **k):
        real = module.apply_rotary
        module.apply_rotary = bad_rotary
        try:
            return real_fwd(*a, **k)
        finally:
            module.apply_rotary = real
    object.__setattr__(attn, "forward", forward)


def test_planted_rotary_bug_is_localised():
    import engine.models.llama as llama
    tm = tiny_hf("llama", num_hidden_layers=3)
    em = port_hf(tm).model
    _swap_rotary_in(llama, em.model.layers[1].self_attn)
    rep = verify_hf(tm, engine_model=em, seq_len=12)
    assert not rep.passed
    assert rep.first_divergence == "model.layers.1.self_attn" and rep.confirmed is True
    assert rep.layer("model.layers.1.self_attn.v_proj").passed  # projections before the rotary are fine
    assert rep.layer("model.layers.1.self_attn.o_proj").input_passed is False
    assert all(r.passed for r in rep.layers[:rep.layers.index(rep.layer("model.layers.1.self_attn.o_proj"))])


def test_planted_gemma_norm_bug_is_localised():
    from engine.nn.norm import RmsNorm
    tm = tiny_hf("gemma", num_hidden_layers=3)
    em = port_hf(tm).model
    norm = em.model.layers[1].post_attention_layernorm
    object.__setattr__(norm, "style", RmsNorm.style)  # x * w, not x * (1 + w)
    rep = verify_hf(tm, engine_model=em, seq_len=12)
    assert rep.first_divergence == "model.layers.1.post_attention_layernorm" and rep.confirmed is True
    assert rep.layer("model.layers.1.self_attn").passed


def test_planted_transposed_linear_is_localised():
    tm = tiny_hf("qwen2", num_hidden_layers=3)
    em = port_hf(tm).model
    lin = em.model.layers[2].self_attn.q_proj  # (32, 32): square, so the transpose still runs
    lin.weight = lin.weight.t().contiguous()
    rep = verify_hf(tm, engine_model=em, seq_len=12)
    assert rep.first_divergence == "model.layers.2.self_attn.q_proj" and rep.confirmed is True
    assert rep.kl > 1e-8 and not rep.layer("<output>").passed


def test_divergence_outside_modules_is_explained():
    """A bug in the model's own forward (not in any compared module): every failing layer already
    gets a failing input, and the report says so."""
    tm = tiny_hf("llama")
    em = port_hf(tm).model
    real = em.model.embed_tokens.forward
    object.__setattr__(em.model.embed_tokens, "forward", real)
    inner = em.model.forward

    def forward(ids, *a, **k):  # scale the embeddings between the embedding module and layer 0
        emb = em.model.embed_tokens
        f = emb.forward
        object.__setattr__(emb, "forward", lambda x: f(x) * 1.5)
        try:
            return inner(ids, *a, **k)
        finally:
            object.__setattr__(emb, "forward", f)
    object.__setattr__(em.model, "forward", forward)
    rep = verify_hf(tm, engine_model=em, seq_len=8, confirm=False)
    assert rep.first_divergence == "model.embed_tokens" and rep.confirmed is None


# ---- reports ----------------------------------------------------------------------------------------------------
def test_reports_json_markdown_html(tmp_path):
    import engine.models.llama as llama
    tm = tiny_hf("llama")
    em = port_hf(tm).model
    _swap_rotary_in(llama, em.model.layers[0].self_attn)
    rep = verify_hf(tm, engine_model=em, seq_len=8)
    d = rep.to_dict()
    assert set(d) >= {"model", "dtype", "device", "layers", "summary"}
    for layer in d["layers"]:
        assert set(layer) >= {"name", "max_abs", "max_rel", "mean_abs", "cosine", "nan", "inf", "min_passing_atol",
                              "passed"}
    assert set(d["summary"]) >= {"passed", "first_divergence", "top1_agreement", "top5_overlap", "kl"}
    assert d["summary"]["first_divergence"] == "model.layers.0.self_attn" and d["summary"]["passed"] is False
    rep.write_json(tmp_path / "r.json")
    json.loads((tmp_path / "r.json").read_text())  # strict JSON (no NaN/Infinity)
    from reports.drift import load_verify  # the regression gate's reader
    layers = load_verify(tmp_path / "r.json")
    assert "<summary>" in layers and layers["model.layers.0.self_attn"]["passed"] is False
    back = VerifyReport.from_dict(d)
    assert back.first_divergence == rep.first_divergence and len(back.layers) == len(rep.layers)
    md = rep.markdown()
    assert "**model.layers.0.self_attn**" in md and "| # | layer |" in md
    page = rep.html()
    assert "data:image/png;base64," in page and "first divergence" in page
    page = rep.html(tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG" and 'src="plot.png"' in page
    table = rep.table(max_rows=3)
    assert "FIRST (confirmed)" in table and "more row(s) not shown" in table


# ---- `taper verify` ---------------------------------------------------------------------------------------------
NETS = '''
import numpy as np
import torch
from torch import nn

def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), (torch.randn(3, 8),)

def bare():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten())

def odd():
    return nn.Sequential(nn.PReLU())
'''


def test_cli_verify_factories(tmp_path, capsys):
    f = tmp_path / "nets_verify.py"
    f.write_text(NETS)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["verify", f"{f}:mlp", "--json", str(out / "r.json"), "--markdown", str(out / "r.md"),
                 "--html", str(out / "r.html"), "--plot-beside"]) == 0
    text = capsys.readouterr().out
    assert "verdict: PASS" in text and "<output>" in text
    assert json.loads((out / "r.json").read_text())["summary"]["passed"] is True
    assert (out / "r.png").exists() and (out / "r.md").exists()
    assert main(["verify", f"{f}:bare", "--input", "2,3,8,8", "--dtype", "float64"]) == 0
    assert "dtype=float64" in capsys.readouterr().out
    assert main(["verify", f"{f}:bare"]) == 2  # no inputs
    assert "--input" in capsys.readouterr().err
    assert main(["verify", f"{f}:odd", "--input", "2,3", "--route", "hand"]) == 2  # no hand-written twin
    assert "PReLU" in capsys.readouterr().err
    assert main(["verify", f"{f}:odd", "--input", "2,3"]) == 0  # ported through torch.export instead
    assert "route=export" in capsys.readouterr().out
    assert main(["verify", "nothing-here"]) == 2
    with pytest.raises(SystemExit) as e:
        main(["verify", f"{f}:mlp", "--tol", "oops"])
    assert e.value.code == 2


def test_cli_verify_hf_fail_golden_and_no_torch(tmp_path, capsys):
    from safetensors.numpy import load_file, save_file
    d = tmp_path / "tiny"
    tiny_hf("llama").save_pretrained(d)
    golden = tmp_path / "golden"
    assert main(["verify", str(d), "--seq-len", "8", "--save-golden", str(golden), "--quiet"]) == 0
    assert "verdict: PASS" in capsys.readouterr().out
    assert {p.name for p in golden.iterdir()} == {"meta.json", "reference.safetensors", "torch_noise.safetensors",
                                                  "inputs.safetensors"}
    # compare with the golden in a fresh interpreter where `import torch` fails
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' or name.startswith('torch.'):\n"
            "            raise ImportError('torch blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "from taper.cli import main\n"
            "rc = main(sys.argv[1:])\n"
            "assert 'torch' not in sys.modules\n"
            "sys.exit(rc)\n")
    env = {**os.environ, "PYTHONPATH": ROOT_DIR}
    r = subprocess.run([sys.executable, "-c", code, "verify", str(d), "--golden", str(golden), "--json",
                        str(tmp_path / "g.json")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "verdict: PASS" in r.stdout and "golden" in r.stdout
    # plant a bug in the checkpoint: the golden catches it and names the layer (exit 1)
    sd = load_file(str(d / "model.safetensors"))
    w = sd["model.layers.1.mlp.down_proj.weight"]
    sd["model.layers.1.mlp.down_proj.weight"] = (w * 1.01).astype(w.dtype)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    r = subprocess.run([sys.executable, "-c", code, "verify", str(d), "--golden", str(golden), "--only-failed"],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 1, r.stderr + r.stdout
    assert "first divergence: model.layers.1.mlp.down_proj" in r.stdout
    assert main(["verify", str(d), "--golden", str(tmp_path / "nope")]) == 2
    assert "not a golden directory" in capsys.readouterr().err
    assert main(["verify", str(d), "--seq-len", "8", "--quiet"]) == 0  # torch reads the same changed weights


def test_verify_golden_api_roundtrip(tmp_path):
    tm = randomize(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)))
    em = port(tm)
    rep = verify(tm, em, [rnd(5, 4)], save_golden=tmp_path / "g", tol={"2": (1e-5, 1e-5)})
    rep2 = verify_golden(em, tmp_path / "g")
    assert rep.passed and rep2.passed and [r.name for r in rep2.layers] == [r.name for r in rep.layers]
    assert rep2.layer("2").atol == 1e-5  # the golden's tolerance overrides travel with it
    em[2].weight = em[2].weight * 2
    rep3 = verify_golden(em, tmp_path / "g")
    assert rep3.first_divergence == "2" and rep3.confirmed is True


def test_golden_meta_is_written_atomically(tmp_path, monkeypatch):
    """meta.json (written last: it marks a complete golden) goes through engine.io.atomic: a failed write
    leaves neither meta.json nor a temp file behind."""
    from migration.golden import save_golden
    (tmp_path / "ref.safetensors").write_bytes(b"ref")
    real = os.replace

    def replace(src, dst, *a, **k):  # the disk fills up as meta.json is put in place
        if os.path.basename(dst) == "meta.json":
            raise OSError(28, "No space left on device")
        return real(src, dst, *a, **k)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="cannot write .*meta.json"):
        save_golden(tmp_path / "g", {"dtype": "float32"}, tmp_path / "ref.safetensors", None, [rnd(2, 3)])
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["inputs.safetensors", "reference.safetensors"]
    monkeypatch.undo()
    save_golden(tmp_path / "g", {"dtype": "float32"}, tmp_path / "ref.safetensors", None, [rnd(2, 3)])
    assert json.loads((tmp_path / "g" / "meta.json").read_text())["dtype"] == "float32"


# ---- the hand-written route: skipped calls, None attributes, bfloat16 -----------------------------------------
class Block2(nn.Module):
    """A residual block whose `downsample` is None (a plain attribute, as in torchvision's ResNet)."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.downsample = None
        self.scale = 0.5

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(self.bn(self.conv(x)) * self.scale + identity)


class EngineBlock2(engine.nn.Module):
    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return (self.bn(self.conv(x)) * self.scale + identity).relu()


class EngineBlock2NoBN(engine.nn.Module):  # forgets to call bn
    def forward(self, x):
        return (self.conv(x) * self.scale + x).relu()


@pytest.fixture
def block2():
    from migration import module_map as mm
    mm.register(Block2, EngineBlock2, children=True)
    yield randomize(Block2())
    mm.unregister(Block2)


def test_none_and_plain_attributes_reach_the_engine_twin(block2):
    em = port(block2)
    assert em.downsample is None and em.scale == 0.5
    assert verify_module(block2, [rnd(2, 4, 6, 6)]).passed


def test_a_call_the_engine_skips_is_named_and_pointed_at(block2):
    import types
    em = port(block2)
    object.__setattr__(em, "forward", types.MethodType(EngineBlock2NoBN.forward, em))
    rep = verify(block2, em, [rnd(2, 4, 6, 6)])
    assert not rep.passed and rep.first_divergence == "bn"
    assert rep.unmatched["reference_outputs_not_produced"] == ["bn"]
    line = "reference outputs not produced: bn"
    assert line in rep.table() and line in rep.markdown() and line in rep.html()
    assert "never called" in rep.layer("bn").note and "FIRST" in rep.table()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_verify_module_reduced_precision(dtype):
    rep = verify_module(make_cnn(), [rnd(2, 3, 16, 16)], dtype=dtype)
    assert rep.passed, rep.table(only_failed=True)
    assert rep.reference == "torch float64" and rep.dtype == dtype


def test_cli_verify_bfloat16_factory(tmp_path, capsys):
    f = tmp_path / "nets_bf16.py"
    f.write_text(NETS)
    assert main(["verify", f"{f}:mlp", "--dtype", "bfloat16", "--quiet"]) == 0
    assert "verdict: PASS" in capsys.readouterr().out


# ---- any candidate against any reference (impls) -------------------------------------------------------------
def _candidates():
    import impls
    return [n for n in impls.MODEL_IMPLS]


@pytest.mark.parametrize("candidate", _candidates())
def test_tiny_llama_with_every_candidate(candidate, capsys):
    import impls
    if not impls.available(candidate):
        [row] = impls.availability([candidate], ["cpu"])
        pytest.skip(f"{candidate} cannot run here: {row['detail']}")
    assert main(["verify", "llama:tiny", "--candidate", candidate, "--seq-len", "8", "--json", os.devnull]) == 0
    out = capsys.readouterr().out
    assert "verdict: PASS" in out and "top-1 agreement 1.0000" in out
    if candidate == "onnxruntime":
        assert "outputs only, no layer taps: onnxruntime runs the exported graph as one program" in out
    if candidate in ("engine", "torch"):
        assert "model.layers.1.mlp" in out  # per-layer rows


def test_verify_impls_api_reduced_precision_and_errors():
    from migration.verify_impls import verify_impls
    rep = verify_impls("llama:tiny", candidate="engine", dtype="bfloat16", seq_len=8)
    assert rep.passed and rep.route.startswith("impls") and "float32 truth" in rep.reference
    assert rep.layer("model.layers.0.mlp").torch_max_abs is not None
    with pytest.raises(Exception, match="unknown implementation 'nope'"):
        verify_impls("llama:tiny", candidate="nope")
