"""Where a model comes from: one parser for every implementation.

    parse("llama:tiny")              a preset of engine.models (the ONE table of model shapes);
    parse("tinyllama-1.1b")          a preset name unique across model types
    parse("path/to/model_dir")       a Hugging Face directory (config.json + safetensors)
    parse("path/to/model.gguf")      a GGUF file (llama.cpp's format; engine.io.gguf reads it)
    parse("pkg.nets:make_mlp")       a module:factory (or file.py:factory) returning a torch.nn.Module,
                                     or (module, example inputs)

A preset's config is the engine Config of that preset, written with the Hugging Face keys, so
transformers builds the same architecture from it (`hf_config`).
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path


# model types whose PyTorch reference is not a transformers class: model_type -> "module:builder", where
# builder(config dict) returns the torch module (random weights) for that engine config
TORCH_REFERENCES = {"yolov8": "impls.ultralytics_yolo:build"}
# diffusers components in engine.models' registry: their config.json names the class (_class_name)
DIFFUSERS = ("UNet2DConditionModel", "AutoencoderKL")


class SourceError(ValueError):
    """A model source that cannot be parsed or loaded; the message says which and why."""


@dataclass
class Source:
    kind: str  # "preset" | "dir" | "gguf" | "factory"
    text: str
    model_type: str | None = None
    preset: str | None = None
    path: Path | None = None
    overrides: dict = field(default_factory=dict)

    def __str__(self):
        return self.text

    @property
    def config(self) -> dict:
        """The Hugging Face-style config dict (presets: the engine Config's fields; dirs: config.json);
        {} for a factory (its torch module is the only description)."""
        from engine import models
        if self.kind == "preset":
            cls = models.model_class(self.model_type)
            cfg = cls.Config.from_dict({**cls.PRESETS[self.preset], **self.overrides})
            out = {k: v for k, v in dataclasses.asdict(cfg).items() if v is not None}
            out["model_type"] = self.model_type
            return out
        if self.kind in ("dir", "gguf"):
            return models.read_config(self.path)
        return {}

    def engine_model(self, dtype, device, seed: int = 0):
        """The engine model this source names: a preset built with random weights (seed), a directory or a
        GGUF file loaded; a torch factory has none (SourceError: port it first)."""
        from engine import models
        if self.kind == "preset":
            return models.from_preset(self.model_type, self.preset, dtype=dtype, device=device, seed=seed,
                                      **self.overrides)
        if self.kind in ("dir", "gguf"):
            return models.from_pretrained(self.path, dtype=dtype, device=device)
        raise SourceError(f"{self.text} is a torch factory: port it first (taper port / taper verify)")


def parse(spec, **overrides) -> Source:
    """A Source from text (or a Source, returned as is). Preset overrides (e.g. num_hidden_layers=2)
    apply to presets only."""
    if isinstance(spec, Source):
        return spec
    text = str(spec).strip()
    if not text:
        raise SourceError("empty model source: give a preset (llama:tiny), a model directory or module:factory")
    from engine import models
    path = Path(text)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SourceError(f"{path}: no such GGUF file")
        return Source("gguf", text, model_type=models.read_config(path).get("model_type"), path=path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SourceError(f"{path}: a model directory needs config.json (Hugging Face layout)")
        cfg = models.read_config(path)
        return Source("dir", text, model_type=cfg.get("model_type") or cfg.get("_class_name"), path=path)
    left, sep, right = text.partition(":")
    if sep and left in models.REGISTRY:
        if right not in models.model_class(left).PRESETS:
            raise SourceError(f"no preset {right!r} for {left} (known: {', '.join(models.model_class(left).PRESETS)})")
        return Source("preset", text, model_type=left, preset=right, overrides=overrides)
    if sep:
        return Source("factory", text)
    if "/" in text or text.startswith((".", "~")):
        raise SourceError(f"{text}: no such model directory")
    try:
        mt, preset = models.find_preset(text)
    except ValueError as e:
        raise SourceError(f"{text!r} is not a model directory, a preset or module:factory ({e})") from None
    return Source("preset", f"{mt}:{preset}", model_type=mt, preset=preset, overrides=overrides)


def parse_of_type(spec, model_type: str, command: str, what: str) -> Source:
    """parse(spec) for a command that takes one model type: a directory or a preset of `model_type`,
    else ValueError naming what it is (what: the model's name for people, "a Whisper model")."""
    source = parse(spec)
    if source.kind not in ("dir", "preset"):
        raise ValueError(f"{spec}: not a model directory or a preset {model_type}:NAME")
    if source.model_type != model_type:
        where = "config.json has" if source.kind == "dir" else "the preset is"
        raise ValueError(f"{spec}: not {what} ({where} model_type {source.model_type!r}); "
                         f"{command} needs model_type {model_type!r}")
    return source


def hf_config(source: Source):
    """A transformers PretrainedConfig for a preset or model directory (eager attention: the plain
    reference math)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    cfg = dict(source.config)
    mt = cfg.pop("model_type", None)
    if mt not in CONFIG_MAPPING:
        raise SourceError(f"transformers has no config class for model_type {mt!r}")
    out = CONFIG_MAPPING[mt](**cfg)
    out._attn_implementation = "eager"
    return out


def load_factory(spec: str):
    """'package.module:factory' or 'path/to/file.py:factory' -> (torch module, example inputs or None).

    The factory returns an nn.Module, or (module, inputs); a module's `example_inputs` attribute (a
    tuple, or a callable returning one) also gives inputs. Importing the factory's module is also
    where custom classes get registered (migration.module_map.register)."""
    mod_name, sep, attr = str(spec).partition(":")
    if not sep or not mod_name or not attr:
        raise SourceError(f"{spec!r}: expected module:factory (e.g. mypkg.nets:make_mlp) or file.py:factory")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name).resolve()
            s = importlib.util.spec_from_file_location(path.stem, path)
            if s is None or not path.exists():
                raise SourceError(f"{mod_name}: no such file")
            module = importlib.util.module_from_spec(s)
            sys.modules[path.stem] = module
            s.loader.exec_module(module)
        else:
            if "" not in sys.path and "." not in sys.path:
                sys.path.insert(0, "")
            module = importlib.import_module(mod_name)
        factory = getattr(module, attr)
    except SourceError:
        raise
    except (ImportError, AttributeError, SyntaxError) as e:
        raise SourceError(f"cannot load {spec}: {type(e).__name__}: {e}") from None
    out = factory() if callable(factory) else factory
    inputs = None
    if isinstance(out, tuple) and len(out) == 2:
        out, inputs = out
    import torch
    if not isinstance(out, torch.nn.Module):
        raise SourceError(f"{spec} returned {type(out).__name__}, not a torch.nn.Module")
    if inputs is None and hasattr(out, "example_inputs"):
        inputs = out.example_inputs() if callable(out.example_inputs) else out.example_inputs
    if inputs is not None and not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    return out, inputs


def torch_reference(source: Source):
    """The torch module of a preset or directory whose model type is in TORCH_REFERENCES (else None)."""
    spec = TORCH_REFERENCES.get(source.model_type or "")
    if spec is None:
        return None
    module, _, fn = spec.partition(":")
    return getattr(importlib.import_module(module), fn)(source.config)
