"""engine.chat against transformers' apply_chat_template (the oracle): the real SmolLM2 GGUF's template, and HF
directories with templates that use what transformers' environment offers (raise_exception, loop controls,
tojson, namespace, the special tokens); `taper generate --chat` on the real file; bad templates and messages."""
import json

import pytest

from engine.chat import TemplateError, chat_template

pytest.importorskip("jinja2")
from test_gguf import smollm2_path  # noqa: E402

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of France?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Ünïcödé 🙂 and\n\ttabs"}],
]

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# Llama-2 style: the system message folded into the first user turn, roles must alternate (raise_exception)
LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
          "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
          "{% set system_message = false %}{% endif %}"
          "{% for message in loop_messages %}"
          "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if loop.index0 == 0 and system_message != false %}"
          "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
          "{% else %}{% set content = message['content'] %}{% endif %}"
          "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
          "{% endfor %}")
# whitespace control (trim_blocks / lstrip_blocks), namespace, loop controls (break), tojson of non-ASCII text
FANCY = """{% set ns = namespace(n=0) %}
{% for message in messages %}
    {% if message['role'] == 'assistant' and loop.last %}{% break %}{% endif %}
    {% set ns.n = ns.n + 1 %}
<{{ message['role'] }}>{{ message['content'] | tojson }}</{{ message['role'] }}>
{% endfor %}
{% if add_generation_prompt %}
[{{ ns.n }} turns]{{ eos_token }}
{% endif %}"""


@pytest.fixture(scope="module")
def smol():
    from transformers import AutoTokenizer
    path = smollm2_path()
    return path, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def hf_dir(tmp_path, template, as_list=False):
    """A HF tokenizer directory (a small word-level tokenizer.json, tokenizer_config.json with the template)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    chat = [{"name": "default", "template": template}, {"name": "tool_use", "template": "x"}] if as_list else template
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
        "eos_token": {"__type": "AddedToken", "content": "</s>", "special": True}, "unk_token": "<unk>",
        "chat_template": chat}))
    return tmp_path


def hf_render(path, messages, add_generation_prompt):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path).apply_chat_template(messages, tokenize=False,
                                                                   add_generation_prompt=add_generation_prompt)


@pytest.mark.parametrize("i", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("gen", [True, False])
def test_smollm2_gguf_template_matches_transformers(smol, i, gen):
    path, ref = smol
    text = chat_template(path).render(CONVERSATIONS[i], add_generation_prompt=gen)
    assert text == ref.apply_chat_template(CONVERSATIONS[i], tokenize=False, add_generation_prompt=gen)


@pytest.mark.parametrize("name,template", [("chatml", CHATML), ("llama2", LLAMA2), ("fancy", FANCY)])
@pytest.mark.parametrize("i", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("gen", [True, False])
def test_directory_templates_match_transformers(tmp_path, name, template, i, gen):
    d = hf_dir(tmp_path, template)
    assert chat_template(d).render(CONVERSATIONS[i], gen) == hf_render(d, CONVERSATIONS[i], gen)


def test_named_templates_take_default_and_jinja_file_wins(tmp_path):
    d = hf_dir(tmp_path, CHATML, as_list=True)
    assert chat_template(d).render(CONVERSATIONS[0]) == hf_render(d, CONVERSATIONS[0], True)
    (d / "chat_template.jinja").write_text(LLAMA2)
    assert chat_template(d).render(CONVERSATIONS[1]) == "<s>[INST] <<SYS>>\nAnswer in one word.\n<</SYS>>\n\n" \
                                                        "Capital of France? [/INST]"


def test_taper_generate_chat_answers_on_the_real_file(capsys):
    from taper.cli import main
    path = smollm2_path()
    assert main(["generate", "--model", str(path), "--chat", "--prompt", "What is the capital of France?",
                 "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("The capital of France is Paris."), out  # the answer only, not the template's text
    assert "stop: stop_token" in out  # <|im_end|>, the GGUF's eos


def test_taper_generate_chat_interactive_keeps_the_conversation(smol, monkeypatch, capsys):
    """--interactive: each further line of standard input is a user turn answered with the whole conversation
    (earlier answers included, without their stop token); each turn's prompt is transformers' apply_chat_template of
    that history, token for token; an empty line ends it."""
    import io
    import re
    from taper.cli import main
    path, ref = smol
    monkeypatch.setattr("sys.stdin", io.StringIO("And of Italy?\n\n"))
    assert main(["generate", "--model", str(path), "--chat", "--interactive", "--prompt",
                 "What is the capital of France?", "--max-new-tokens", "16"]) == 0
    out, err = capsys.readouterr()
    answers = out.strip().split("\n")
    assert answers[0] == "The capital of France is Paris." and len(answers) == 2, out
    history = [{"role": "user", "content": "What is the capital of France?"},
               {"role": "assistant", "content": answers[0]}, {"role": "user", "content": "And of Italy?"}]
    want = ref.apply_chat_template(history, tokenize=True, add_generation_prompt=True)
    want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
    counts = [int(n) for n in re.findall(r"prefill [0-9.]+ ms \((\d+) tokens\)", err)]
    assert counts[1] == len(want), (counts, len(want))


@pytest.mark.parametrize("args,msg", [
    (["--chat", "--ids", "1,2"], "--chat takes text (--prompt), not --ids"),
    (["--chat"], "--chat needs --prompt"),
    (["--system", "x", "--prompt", "hi"], "--system and --interactive need --chat"),
    (["--interactive", "--prompt", "hi"], "--system and --interactive need --chat"),
    ([], "one of --prompt or --ids is required"),
    (["--tp", "2"], "one of --prompt or --ids is required"),
    (["--tp", "2", "--chat", "--prompt", "hi"], "leave out --tp"),
])
def test_taper_generate_chat_bad_usage(capsys, args, msg):
    from taper.cli import main
    assert main(["generate", "--model", str(smollm2_path()), *args]) == 2
    assert msg in capsys.readouterr().err


def test_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(TemplateError, match="roles must alternate"):  # the template's raise_exception
        chat_template(hf_dir(tmp_path, LLAMA2)).render([{"role": "user", "content": "a"}] * 2)
    with pytest.raises(TemplateError, match="does not parse"):
        chat_template(hf_dir(tmp_path, "{% for m in messages %}")).render(CONVERSATIONS[0])
    with pytest.raises(TemplateError, match="message 0 must be a dict"):
        chat_template(hf_dir(tmp_path, CHATML)).render([{"content": "no role"}])
    with pytest.raises(TemplateError, match="non-empty list"):
        chat_template(hf_dir(tmp_path, CHATML)).render([])
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [{"name": "tool_use",
                                                                                    "template": "x"}]}))
    with pytest.raises(TemplateError, match="no 'default'"):
        chat_template(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TemplateError, match="not readable JSON"):
        chat_template(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(TemplateError, match="no chat template"):
        chat_template(tmp_path)
    with pytest.raises(TemplateError, match="not a model directory"):
        chat_template(tmp_path / "missing")
