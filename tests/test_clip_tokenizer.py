"""CLIP's BPE tokenizer (engine/models/clip_tokenizer.py) against transformers' CLIPTokenizer and
CLIPTokenizerFast loaded offline from the same vocab.json + merges.txt: a small vocabulary learned
here by BPE on a text, so every rule (lower case, whitespace, </w>, byte-level alphabet, splits,
specials, truncation and padding to 77) is exercised."""
import json
from collections import Counter

import numpy as np
import pytest

transformers = pytest.importorskip("transformers", reason="transformers' CLIPTokenizer is the oracle (pip install -e '.[test]')")
regex = pytest.importorskip("regex", reason="CLIPTokenizer (the oracle) needs regex (pip install -e '.[test]')")

from engine.models.clip_tokenizer import SPLIT, clip_tokenizer  # noqa: E402
from engine.models.stable_diffusion.pipeline import PromptTokenizer  # noqa: E402
from engine.io.gguf_tokenizer import _bytes_to_unicode  # noqa: E402  (GPT-2's byte alphabet: the test vocabulary's symbols)

CORPUS = """a photo of a cat sitting on the moon, highly detailed, 4k, trending on artstation.
an oil painting of a red fox in the snow by claude monet; soft light, golden hour!
portrait of an astronaut riding a horse on mars -- cinematic, 35mm, f/1.8, bokeh.
the quick brown fox jumps over the lazy dog. it's what they've said: we'll see, i'm sure you'd agree.
a watercolor of a lighthouse at dusk (masterpiece) [best quality] {sharp focus} #art @artist
café, naïve, über-detailed, 東京の夜景, emoji 🐱🚀, numbers 1234567890 and 3.14159"""

TEXTS = ["a photo of a cat", "A Photo Of A CAT", "  a   photo\tof\n a cat  ", "", "cat", "catsitting on moons",
         "it's a dog's life, isn't it? we'll see; i'd've", "portrait of an astronaut riding a horse on mars, 8k",
         "café naïve über", "東京の夜景 and 東京", "🐱 🚀🐱", "1234 5.6 f/1.8", "(masterpiece:1.2), [best quality]",
         "<|startoftext|>a cat<|endoftext|>", "zzzz qqq xylophone", "a " * 100 + "cat",
         "Ünïcödé ÀÉÎÕÜ ß ﬁ", "a\u00a0non-breaking\u2003space", "tab\tand\r\nnewlines", "x" * 300]


def learn_bpe(text: str, n_merges: int):
    """CLIP-style vocabulary: the 256 byte symbols, the same with </w>, then n_merges merges learned
    greedily (most frequent pair, ties by the pair itself), then the two specials."""
    b2u = _bytes_to_unicode()
    words = Counter("".join(b2u[b] for b in w.encode()) for w in regex.findall(SPLIT, text.lower()))
    split = {w: tuple(w[:-1]) + (w[-1] + "</w>",) for w in words}
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for w, n in words.items():
            s = split[w]
            for p in zip(s, s[1:]):
                pairs[p] += n
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        for w in words:
            s, out, i = split[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            split[w] = tuple(out)
    syms = list(b2u.values())
    vocab = syms + [s + "</w>" for s in syms] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(dict.fromkeys(vocab))}, merges


@pytest.fixture(scope="module")
def tokdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip_tok")
    vocab, merges = learn_bpe(CORPUS, 300)
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n",
                                  encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps({  # as SD 1.5's tokenizer/ has it
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, "errors": "replace",
        "bos_token": {"content": "<|startoftext|>", "lstrip": False, "normalized": True, "rstrip": False,
                      "single_word": False, "__type": "AddedToken"},
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
    return d


@pytest.mark.parametrize("cls", ["CLIPTokenizer", "CLIPTokenizerFast"])
def test_ids_match_transformers(tokdir, cls):
    ref = getattr(transformers, cls).from_pretrained(str(tokdir))
    tok = clip_tokenizer(tokdir)
    for t in TEXTS + CORPUS.split("\n"):
        assert tok.encode(t).ids == ref(t)["input_ids"], t


def test_padded_prompts_match_diffusers_call(tokdir):
    """diffusers' encode_prompt: tokenizer(prompts, padding="max_length", max_length=77, truncation=True)."""
    ref = transformers.CLIPTokenizer.from_pretrained(str(tokdir))
    pt = PromptTokenizer.from_dir(tokdir)
    got = pt(TEXTS)
    want = np.array(ref(TEXTS, padding="max_length", max_length=ref.model_max_length, truncation=True)["input_ids"])
    assert ref.model_max_length == 77 and got.shape == (len(TEXTS), 77) and got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    assert got[15, -1] == got[19, -1] == ref.eos_token_id  # truncated texts still end with </s>


def test_real_merges_order_matters(tokdir):
    """The merge ranks decide: 'cat' is one token, and the learned merges reach whole words."""
    tok = clip_tokenizer(tokdir)
    ids = tok.encode("a cat").ids
    vocab = json.loads((tokdir / "vocab.json").read_text(encoding="utf-8"))
    assert ids == [vocab["<|startoftext|>"], vocab["a</w>"], vocab["cat</w>"], vocab["<|endoftext|>"]]


def test_errors(tmp_path, tokdir):
    with pytest.raises(FileNotFoundError, match="has no vocab.json or merges.txt"):
        clip_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text("{not json")
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    with pytest.raises(ValueError, match="vocab.json: not valid JSON"):
        clip_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
    with pytest.raises(ValueError, match="has no bos_token '<|startoftext|>'"):
        clip_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text((tokdir / "vocab.json").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\nc d e\n")
    with pytest.raises(ValueError, match=r"merges.txt line 3: a merge is two tokens"):
        clip_tokenizer(tmp_path)


def test_txt2img_dir_with_clip_bpe_files(tokdir, tmp_path, capsys):
    """A diffusers directory whose tokenizer/ holds vocab.json + merges.txt only (as SD 1.5 ships it):
    the engine pipeline's prompt embeddings equal diffusers' encode_prompt, and `taper txt2img --prompt`
    runs from it."""
    torch = pytest.importorskip("torch", reason="diffusers' encode_prompt (the oracle) needs torch")
    diffusers = pytest.importorskip("diffusers", reason="diffusers' pipeline is the oracle (pip install -e '.[test]')")
    from test_sd_pipeline import REF_SCHEDULERS, _randomised
    from engine.models.stable_diffusion.pipeline import StableDiffusionPipeline
    from engine.models.stable_diffusion.unet_2d_condition import UNet2DConditionModel as EU
    from engine.models.stable_diffusion.autoencoder_kl import AutoencoderKL as EV
    hf_tok = transformers.CLIPTokenizer.from_pretrained(str(tokdir))
    torch.manual_seed(3)
    cfg = transformers.CLIPTextConfig(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=77,
                                      bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id)
    clip = _randomised(transformers.CLIPTextModel(cfg), 4)
    unet = _randomised(diffusers.UNet2DConditionModel(**EU.PRESETS["tiny"]), 1)
    vae = _randomised(diffusers.AutoencoderKL(**EV.PRESETS["tiny"]), 2)
    ref = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=clip, tokenizer=hf_tok, unet=unet,
                                            scheduler=REF_SCHEDULERS["ddim"](), safety_checker=None,
                                            feature_extractor=None, requires_safety_checker=False)
    ref.save_pretrained(tmp_path / "sd", safe_serialization=True)
    td = tmp_path / "sd" / "tokenizer"
    (td / "tokenizer.json").unlink(missing_ok=True)  # only the BPE files, as the SD 1.5 checkpoint
    for name in ("vocab.json", "merges.txt"):
        (td / name).write_bytes((tokdir / name).read_bytes())
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "sd")
    prompts, negs = ["A photo of a CAT, 4k!", "portrait of an astronaut riding a horse on mars"], ["", "blurry"]
    with torch.no_grad():
        want = ref.encode_prompt(prompts, "cpu", 1, True, negs)
    got_c, got_n = pipe.encode_prompt(prompts).numpy(), pipe.encode_prompt(negs).numpy()
    assert got_c.shape == (2, 77, 32)
    assert np.abs(got_c - want[0].numpy()).max() < 1e-5 and np.abs(got_n - want[1].numpy()).max() < 1e-5
    pytest.importorskip("PIL", reason="taper txt2img writes a PNG with Pillow (pip install pillow)")
    from taper.cli import main
    out = tmp_path / "cat.png"
    assert main(["txt2img", "--model", str(tmp_path / "sd"), "--prompt", "a cat", "--steps", "1", "--out", str(out),
                 "--no-progress"]) == 0, capsys.readouterr().err
    assert out.is_file()
