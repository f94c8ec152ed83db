"""Chat templates: a model's own Jinja template turned into the prompt text its instruct tuning expects.

    template = chat_template("SmolLM2-135M-Instruct.Q4_1.gguf")
    text = template.render([{"role": "user", "content": "What is the capital of France?"}])

Where the template comes from: a .gguf file's `tokenizer.chat_template` metadata (its special tokens from
`tokenizer.ggml.*_token_id`), or a HF model directory's `chat_template.jinja`, else `tokenizer_config.json`'s
"chat_template" (a string, or a list of named templates: "default" is taken) with its `bos_token`/`eos_token`.
Rendering follows transformers' apply_chat_template: a sandboxed Jinja environment with trim_blocks and
lstrip_blocks, the loop-controls extension, `raise_exception(msg)` and `strftime_now(fmt)` as globals and a
`tojson` filter that keeps non-ASCII characters; the special tokens are template variables. The text it gives is
encoded without adding special tokens again (the template writes them). Needs jinja2 (`pip install jinja2`).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

class TemplateError(ValueError):
    """A chat template that is missing, unreadable, or that refused the messages (its raise_exception)."""


@dataclass(frozen=True)
class ChatTemplate:
    source: str  # where the template was read from (for error messages)
    text: str  # the Jinja source
    tokens: dict = field(default_factory=dict)  # special tokens as template variables (bos_token, eos_token, ...)

    @functools.cached_property
    def _compiled(self):
        """The template compiled once (an interactive chat renders it every turn)."""
        try:
            return _environment().from_string(self.text)
        except TemplateError:
            raise
        except Exception as e:  # jinja2.TemplateSyntaxError and kin: the template itself is broken
            raise TemplateError(f"{self.source}: the chat template does not parse: {e}") from None

    def render(self, messages: list, add_generation_prompt: bool = True) -> str:
        """The prompt text for messages ([{"role": ..., "content": ...}, ...]) as the template writes it; with
        add_generation_prompt the assistant's turn is opened, so the model answers next."""
        _check_messages(messages)
        try:
            return self._compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **self.tokens)
        except TemplateError as e:
            raise TemplateError(f"{self.source}: the chat template refused the messages: {e}") from None
        except Exception as e:  # an undefined name, a type error inside the template
            raise TemplateError(f"{self.source}: the chat template failed: {type(e).__name__}: {e}") from None


def _check_messages(messages) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TemplateError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise TemplateError(f"message {i} must be a dict with a 'role' string and a 'content', got {m!r}")


def _raise(message):
    raise TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _environment():
    try:
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise TemplateError("chat templates need jinja2: pip install jinja2") from None
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def chat_template(model) -> ChatTemplate:
    """The chat template of a .gguf file or a HF model directory; TemplateError naming what is missing."""
    path = Path(model)
    if path.suffix == ".gguf":
        from engine.io.gguf import open_gguf
        meta = open_gguf(path).metadata
        text = meta.get("tokenizer.chat_template")
        if not isinstance(text, str) or not text:
            raise TemplateError(f"{path}: no chat template (the GGUF metadata has no tokenizer.chat_template); "
                                "pass the prompt as it is, without --chat")
        vocab = meta.get("tokenizer.ggml.tokens") or []
        tokens = {}
        for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                          ("pad_token", "padding")):
            i = meta.get(f"tokenizer.ggml.{key}_token_id")
            if isinstance(i, int) and 0 <= i < len(vocab):
                tokens[name] = vocab[i]
        return ChatTemplate(f"{path} (tokenizer.chat_template)", text, tokens)
    if not path.is_dir():
        raise TemplateError(f"{path}: not a model directory or a .gguf file")
    config = {}
    cfg_path = path / "tokenizer_config.json"
    if cfg_path.is_file():
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TemplateError(f"{cfg_path}: not readable JSON: {e}") from None
    tokens = {}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        t = config.get(name)
        t = t.get("content") if isinstance(t, dict) else t
        if isinstance(t, str):
            tokens[name] = t
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return ChatTemplate(str(jinja), jinja.read_text(encoding="utf-8"), tokens)
    text = config.get("chat_template")
    if isinstance(text, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in text if isinstance(t, dict)}
        text = named.get("default")
        if text is None:
            raise TemplateError(f"{cfg_path}: chat_template lists {sorted(map(str, named))} but no 'default'")
    if not isinstance(text, str) or not text:
        raise TemplateError(f"{path}: no chat template (neither chat_template.jinja nor a chat_template in "
                            "tokenizer_config.json); pass the prompt as it is, without --chat")
    return ChatTemplate(f"{cfg_path} (chat_template)", text, tokens)
