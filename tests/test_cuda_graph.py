"""The CUDA-graph decoder against transformers (teacher-forced logits) and against itself run
uncaptured (token for token). Needs cupy, a GPU and a CUDA build of torch; skipped otherwise."""
import numpy as np
import pytest

cupy = pytest.importorskip("cupy", reason="the graph decoder needs cupy and an NVIDIA GPU")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA build of torch and a GPU", allow_module_level=True)
transformers = pytest.importorskip("transformers")

from engine.models.llama_graph import GraphDecoder, Shape, fuse_weights, rope_tables  # noqa: E402
from migration.tolerances import REDUCED_ERROR_RATIO  # noqa: E402

pytestmark = pytest.mark.cuda


def _build(dtype, seed=0, **over):
    cfg = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=8,
               num_key_value_heads=2, vocab_size=512, rms_norm_eps=1e-5, max_position_embeddings=1024,
               tie_word_embeddings=False)
    cfg.update(over)
    torch.manual_seed(seed)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg, attn_implementation="eager"))
    with torch.no_grad():  # larger weights than the default init so logits are far from flat
        for p in hf.parameters():
            p.normal_(0, 0.08) if p.ndim > 1 else p.uniform_(0.5, 1.5)
    hf64 = hf.double().cuda().eval()
    hft = transformers.LlamaForCausalLM(hf.config).to(getattr(torch, dtype)).cuda().eval()
    hft.load_state_dict({k: v.to(getattr(torch, dtype)) for k, v in hf64.state_dict().items()})
    sd = hft.state_dict()
    shape = Shape.from_config(cfg)

    def get(name):
        if name not in sd:
            raise KeyError(name)
        return cupy.from_dlpack(sd[name].contiguous())
    layers, glob = fuse_weights(get, shape)
    inv = hft.model.rotary_emb.inv_freq.double().cpu().numpy()
    cos, sin = rope_tables(inv, 1024, float(getattr(hft.model.rotary_emb, "attention_scaling", 1.0)))
    return hf64, hft, GraphDecoder(layers, glob, shape, cos, sin, max_seq=1024), shape


def _errors(got, ref_model_dtype, ref64):
    e_engine = float((got - ref64).abs().max())
    e_torch = float((ref_model_dtype - ref64).abs().max())
    return e_engine, e_torch


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_prefill_and_steps_match_transformers(dtype):
    hf64, hft, dec, _ = _build(dtype)
    ids = np.random.default_rng(0).integers(0, 512, 32)
    tid = torch.tensor(ids)[None].cuda()
    with torch.no_grad():
        ref64 = hf64(tid).logits[0]
        reft = hft(tid).logits[0].double()
    got = torch.from_dlpack(dec.prefill(ids, all_logits=True)).double()
    e, t = _errors(got, reft, ref64)
    assert e <= REDUCED_ERROR_RATIO * t + 1e-6, f"prefill: engine err {e:.3e} vs torch err {t:.3e}"
    # 16 decode steps, each compared with the full forward over the tokens so far
    seq = list(ids) + [int(dec.tok[0])]
    for _ in range(16):
        dec.run_step(captured=False)
        with torch.no_grad():
            full = torch.tensor(seq)[None].cuda()
            r64, rt = hf64(full).logits[0, -1], hft(full).logits[0, -1].double()
        g = torch.from_dlpack(dec.logits).double()
        e, t = _errors(g, rt, r64)
        assert e <= REDUCED_ERROR_RATIO * t + 1e-6, f"step {len(seq)}: engine err {e:.3e} vs torch err {t:.3e}"
        seq.append(int(dec.tok[0]))


def test_graph_equals_uncaptured_token_for_token():
    _, _, dec, _ = _build("float16", seed=1)
    ids = np.random.default_rng(1).integers(0, 512, 20)
    eager = dec.generate(ids, 40, captured=False)
    graph = dec.generate(ids, 40, captured=True)
    assert graph == eager
    assert len(set(graph)) > 1  # not a degenerate constant stream
