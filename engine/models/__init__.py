"""Engine models, one file per Hugging Face `model_type`.

    model = engine.models.from_pretrained("path/to/model_dir", dtype=engine.float16)
    logits = model(input_ids)                       # (B, L, vocab)

    model = engine.models.from_preset("llama", "tinyllama-1.1b")   # random weights, for benchmarks

The registry maps config.json's model_type to a class path; model files are imported on first use.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

REGISTRY = {
    "llama": "engine.models.llama:LlamaForCausalLM",
    "mistral": "engine.models.mistral:MistralForCausalLM",
    "gemma": "engine.models.gemma:GemmaForCausalLM",
    "qwen2": "engine.models.qwen2:Qwen2ForCausalLM",
    "mixtral": "engine.models.mixtral:MixtralForCausalLM",
    "phi3": "engine.models.phi3:Phi3ForCausalLM",
    "bert": "engine.models.bert:BertModel",
    "clip_text_model": "engine.models.clip_text:CLIPTextModel",
    "yolov8": "engine.models.yolov8:YOLOv8",
    "whisper": "engine.models.whisper:WhisperForConditionalGeneration",
    "encodec": "engine.models.encodec:EncodecModel",
    # diffusers components: their config.json names the class (_class_name), not a model_type
    "AutoencoderKL": "engine.models.stable_diffusion.autoencoder_kl:AutoencoderKL",
    "UNet2DConditionModel": "engine.models.stable_diffusion.unet_2d_condition:UNet2DConditionModel",
}


def model_class(model_type: str):
    if model_type not in REGISTRY:
        raise ValueError(f"no engine model for model_type {model_type!r}; known: {', '.join(sorted(REGISTRY))}")
    module, _, name = REGISTRY[model_type].partition(":")
    return getattr(importlib.import_module(module), name)


def read_config(path) -> dict:
    """config.json of a model directory (or the file itself; a .gguf file's metadata) as a dict. FileNotFoundError when it is
    missing; ValueError naming the file when it is not a JSON object. (The one reader of config.json.)"""
    path = Path(path)
    if path.suffix == ".gguf":  # the metadata of a GGUF file is its config
        from engine.io.gguf import open_gguf
        return dict(open_gguf(path).config)
    if not path.exists():
        raise FileNotFoundError(f"model directory not found: {path} (looked for {path / 'config.json'})")
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"model config not found: {file}")
    try:
        cfg = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{file}: a model config must be a JSON object, got {type(cfg).__name__}")
    return cfg


def from_pretrained(path, dtype=None, device=None):
    """The engine model for a HF model directory (or a .gguf file), chosen by config.json's model_type
    (diffusers components: by its _class_name)."""
    cfg = read_config(path)
    kind = cfg.get("model_type") or cfg.get("_class_name")
    if not kind:
        raise ValueError(f"{Path(path) / 'config.json'} has no model_type (nor a diffusers _class_name)")
    return model_class(kind).from_pretrained(path, dtype=dtype, device=device)


def from_preset(model_type: str, preset: str, dtype=None, device=None, seed: int = 0, **overrides):
    """A model of a named preset size with random weights (N(0, 0.02), norms 1); overrides replace
    config fields (e.g. num_hidden_layers=2)."""
    return model_class(model_type).from_preset(preset, dtype=dtype, device=device, seed=seed, **overrides)


def presets() -> dict:
    """{model_type: [preset names]} over every registered model."""
    out = {}
    for mt, path in REGISTRY.items():
        module = importlib.import_module(path.partition(":")[0])
        out[mt] = list(module.PRESETS)
    return out


def find_preset(name: str):
    """(model_type, preset) for a preset name unique across models, or 'model_type:preset'."""
    if ":" in name:
        mt, _, p = name.partition(":")
        return mt, p
    hits = [(mt, p) for mt, ps in presets().items() for p in ps if p == name]
    if len(hits) != 1:
        raise ValueError(f"preset {name!r} matches {len(hits)} models; write model_type:preset "
                         f"(known: {', '.join(f'{m}:{p}' for m, ps in presets().items() for p in ps)})")
    return hits[0]


# ---- helpers the model files share (loading only; the math lives in each model file) ----------------
def config_from_dict(cls, d: dict):
    """A Config dataclass from a HF config dict: unknown keys ignored, known ones kept."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def load_pretrained(model_cls, path, dtype=None, device=None, variant=None):
    """Read config.json and the safetensors of `path` (variant: "fp16" picks *.fp16.* weight files),
    build `model_cls(config, vb)` and check keys."""
    from engine.nn.varbuilder import VarBuilder
    config = model_cls.Config.from_dict(read_config(path))
    gguf = Path(path).suffix == ".gguf"
    if gguf:
        vb = VarBuilder.from_gguf(path, dtype=dtype, device=device)
    else:
        vb = VarBuilder.from_pretrained(path, dtype=dtype, device=device, variant=variant)
    if getattr(model_cls, "CHECKPOINT_RULES", ()):  # declared differences (weight-norm folds, dropped buffers)
        vb = vb.with_rules(model_cls.CHECKPOINT_RULES)
    vb.ignore(*getattr(model_cls, "IGNORED_KEYS", ()))
    with vb.collect():
        model = model_cls(config, vb)
    return model


def load_preset(model_cls, preset: str, dtype=None, device=None, seed: int = 0, **overrides):
    from engine import dtype as D
    from engine.nn.varbuilder import VarBuilder
    presets = model_cls.PRESETS
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r} for {model_cls.__name__}; known: {', '.join(presets)}")
    config = model_cls.Config.from_dict({**presets[preset], **overrides})
    return model_cls(config, VarBuilder.random(seed, dtype=dtype or D.float32, device=device))
