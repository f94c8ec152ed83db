"""The torch -> engine registry: which engine class stands in for each torch.nn class, how it is built
from the torch module's hyperparameters, and how its weights are transformed (as migration.rules data).

Three kinds of entries:
  leaf       the engine twin is built whole and takes the torch module's entire local state dict
             (Linear, Conv2d, LSTM, MultiheadAttention, ...); children are not visited
  container  Sequential, ModuleList, ModuleDict: an engine container with the children ported by name
  composite  a user class whose forward composes registered children: `register(TorchBlock, EngineBlock,
             children=True)` builds EngineBlock() and attaches the ported children (and the torch
             module's own direct parameters) under the same attribute names

Hugging Face models are not ported module by module: HF_MODELS maps a config.json `model_type` to the
engine model class and the model's state-dict rules (see migration.port.port_hf).

Torch is imported lazily (`registry()`), so HF_MODELS and the rules are usable without torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from engine.models.encodec import CHECKPOINT_RULES as _ENCODEC_RULES
from migration.rules import Drop, FoldWeightNorm, Rename, Split, Tie, Unstack


@dataclass
class Entry:
    torch_cls: type
    engine: str | type | None         # "engine.nn.linear:Linear", a class, or None (built by `build` alone)
    build: Callable | None = None     # build(torch_module, dtype) -> engine Module; default engine(**args)
    rules: tuple = ()                 # migration.rules applied to the module's local state dict
    transform: Callable | None = None  # transform(torch_module, local_sd) -> local_sd, after the rules
    kind: str = "leaf"                # "leaf" | "container" | "composite"
    note: str = ""
    subclasses: bool = False          # also match subclasses (off by default: a subclass may override forward)

    @property
    def engine_name(self) -> str:
        e = self.engine
        if e is None:
            return "(custom build)"
        if isinstance(e, str):
            return e.split(":")[-1]
        return e.__name__

    def engine_class(self):
        return resolve(self.engine) if isinstance(self.engine, str) else self.engine

    def describe_transform(self) -> str:
        parts = [_rule_text(r) for r in self.rules]
        if self.transform is not None:
            parts.append(getattr(self.transform, "__doc__", None) or self.transform.__name__)
        return "; ".join(p.strip().splitlines()[0] for p in parts) or "identity"


def _rule_text(r) -> str:
    if isinstance(r, FoldWeightNorm):
        return "fold weight-norm if present"
    return repr(r)


def resolve(path: str):
    """'package.module:Attr' -> the object."""
    mod, _, attr = path.partition(":")
    obj = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


# ---- builders --------------------------------------------------------------------------------------
def _dtype_of(tm, dtype=None):
    """The engine dtype for a torch module: `dtype` if given, else its first floating parameter's."""
    import engine
    if dtype is not None:
        return engine.dtype.get(dtype)
    for p in list(tm.parameters(recurse=False)) + list(tm.buffers(recurse=False)):
        if p.is_floating_point():
            return engine.dtype.get(str(p.dtype).removeprefix("torch."))
    for p in tm.parameters():
        if p.is_floating_point():
            return engine.dtype.get(str(p.dtype).removeprefix("torch."))
    return engine.float32


def _args(*names, **renamed):
    """A builder calling engine_cls(*[tm.<name>], **{k: tm.<attr>}) plus dtype when it takes one."""
    def build(entry, tm, dtype):
        cls = entry.engine_class()
        kw = {k: (a(tm) if callable(a) else getattr(tm, a)) for k, a in renamed.items()}
        return cls(*[getattr(tm, n) for n in names], **kw)
    return build


def _linear(entry, tm, dtype):
    return entry.engine_class()(tm.in_features, tm.out_features, bias=tm.bias is not None, dtype=_dtype_of(tm, dtype))


def _embedding(entry, tm, dtype):
    if tm.max_norm is not None:
        raise NotImplementedError("Embedding(max_norm=...) renormalises rows on lookup; the engine does not")
    return entry.engine_class()(tm.num_embeddings, tm.embedding_dim, dtype=_dtype_of(tm, dtype))


def _layer_norm(entry, tm, dtype):
    if len(tm.normalized_shape) != 1:
        raise NotImplementedError(f"LayerNorm over {tuple(tm.normalized_shape)}: the engine normalises the last dim only")
    return entry.engine_class()(tm.normalized_shape[0], eps=tm.eps, bias=getattr(tm, "bias", None) is not None,
                                affine=tm.elementwise_affine, dtype=_dtype_of(tm, dtype))


def _rms_norm(entry, tm, dtype):
    import torch
    if len(tm.normalized_shape) != 1:
        raise NotImplementedError(f"RMSNorm over {tuple(tm.normalized_shape)}: the engine normalises the last dim only")
    dt = _dtype_of(tm, dtype)
    eps = tm.eps if tm.eps is not None else torch.finfo(getattr(torch, dt.name)).eps  # torch's default
    return entry.engine_class()(tm.normalized_shape[0], eps=eps, dtype=dt)


def _rms_norm_weight(tm, sd):
    """a weight of ones when elementwise_affine=False"""
    if "weight" not in sd:
        import numpy as np
        sd["weight"] = np.ones(tm.normalized_shape, dtype=np.float32)
    return sd


def _conv(entry, tm, dtype):
    cls = entry.engine_class()
    kw = dict(stride=tm.stride, padding=tm.padding, dilation=tm.dilation, groups=tm.groups,
              bias=tm.bias is not None, padding_mode=tm.padding_mode, dtype=_dtype_of(tm, dtype))
    if tm.transposed:
        kw["output_padding"] = tm.output_padding
    return cls(tm.in_channels, tm.out_channels, tm.kernel_size, **kw)


def _batch_norm(entry, tm, dtype):
    return entry.engine_class()(tm.num_features, eps=tm.eps, momentum=tm.momentum, affine=tm.affine,
                                track_running_stats=tm.track_running_stats, dtype=_dtype_of(tm, dtype))


def _group_norm(entry, tm, dtype):
    return entry.engine_class()(tm.num_groups, tm.num_channels, eps=tm.eps, affine=tm.affine,
                                dtype=_dtype_of(tm, dtype))


def _lstm(entry, tm, dtype):
    return entry.engine_class()(tm.input_size, tm.hidden_size, num_layers=tm.num_layers, bias=tm.bias,
                                batch_first=tm.batch_first, dropout=tm.dropout, bidirectional=tm.bidirectional,
                                proj_size=tm.proj_size, dtype=_dtype_of(tm, dtype))


def _mha(entry, tm, dtype):
    return entry.engine_class()(tm.embed_dim, tm.num_heads, dropout=tm.dropout, bias=tm.in_proj_bias is not None,
                                add_bias_kv=tm.bias_k is not None, add_zero_attn=tm.add_zero_attn, kdim=tm.kdim,
                                vdim=tm.vdim, batch_first=tm.batch_first, dtype=_dtype_of(tm, dtype))


def _max_pool(entry, tm, dtype):
    if tm.return_indices:
        raise NotImplementedError("MaxPool2d(return_indices=True) is not supported by the engine")
    return entry.engine_class()(tm.kernel_size, tm.stride, tm.padding, tm.dilation, ceil_mode=tm.ceil_mode)


def _upsample(entry, tm, dtype):
    return entry.engine_class()(size=tm.size, scale_factor=tm.scale_factor, mode=tm.mode,
                                align_corners=tm.align_corners, recompute_scale_factor=tm.recompute_scale_factor)


def _container(entry, tm, dtype):
    return entry.engine_class()()


# ---- the registry -----------------------------------------------------------------------------------
_REGISTRY: dict | None = None
_USER: list = []


def _defaults() -> dict:
    import torch.nn as nn
    wn = (FoldWeightNorm(),)
    rows = [
        Entry(nn.Linear, "engine.nn.linear:Linear", _linear, wn),
        Entry(nn.Embedding, "engine.nn.linear:Embedding", _embedding),
        Entry(nn.LayerNorm, "engine.nn.norm:LayerNorm", _layer_norm),
        Entry(nn.RMSNorm, "engine.nn.norm:RmsNorm", _rms_norm, transform=_rms_norm_weight),
        Entry(nn.GroupNorm, "engine.nn.batchnorm:GroupNorm", _group_norm),
        Entry(nn.BatchNorm1d, "engine.nn.batchnorm:BatchNorm1d", _batch_norm, note="inference: running statistics"),
        Entry(nn.BatchNorm2d, "engine.nn.batchnorm:BatchNorm2d", _batch_norm, note="inference: running statistics"),
        Entry(nn.Conv1d, "engine.nn.conv:Conv1d", _conv, wn),
        Entry(nn.Conv2d, "engine.nn.conv:Conv2d", _conv, wn),
        Entry(nn.ConvTranspose1d, "engine.nn.conv:ConvTranspose1d", _conv, wn),
        Entry(nn.ConvTranspose2d, "engine.nn.conv:ConvTranspose2d", _conv, wn),
        Entry(nn.ReLU, "engine.nn.activation:ReLU", _args()),
        Entry(nn.GELU, "engine.nn.activation:GELU", _args("approximate")),
        Entry(nn.SiLU, "engine.nn.activation:SiLU", _args()),
        Entry(nn.Tanh, "engine.nn.activation:Tanh", _args()),
        Entry(nn.Sigmoid, "engine.nn.activation:Sigmoid", _args()),
        Entry(nn.Softmax, "engine.nn.activation:Softmax", _args("dim")),
        Entry(nn.Identity, "engine.nn.activation:Identity", _args()),
        Entry(nn.Dropout, "engine.nn.activation:Dropout", _args("p"), note="identity at inference"),
        Entry(nn.Flatten, "engine.nn.activation:Flatten", _args("start_dim", "end_dim")),
        Entry(nn.MaxPool2d, "engine.nn.pooling:MaxPool2d", _max_pool),
        Entry(nn.AvgPool2d, "engine.nn.pooling:AvgPool2d",
              _args("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")),
        Entry(nn.AdaptiveAvgPool2d, "engine.nn.pooling:AdaptiveAvgPool2d", _args("output_size")),
        Entry(nn.Upsample, "engine.nn.pooling:Upsample", _upsample),
        Entry(nn.LSTM, "engine.nn.rnn:LSTM", _lstm, note="gate order i, f, g, o as in torch"),
        Entry(nn.MultiheadAttention, "engine.nn.mha:MultiheadAttention", _mha),
        Entry(nn.Sequential, "engine.nn.module:Sequential", _container, kind="container"),
        Entry(nn.ModuleList, "engine.nn.module:ModuleList", _container, kind="container"),
        Entry(nn.ModuleDict, "engine.nn.module:ModuleDict", _container, kind="container"),
    ]
    return {e.torch_cls: e for e in rows}


def registry() -> dict:
    """{torch class: Entry}: the defaults plus everything added with `register`."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _defaults()
        for e in _USER:
            _REGISTRY[e.torch_cls] = e
    return _REGISTRY


def register(torch_cls: type, engine_cls=None, *, build: Callable | None = None, children: bool = False,
             rules: tuple = (), transform: Callable | None = None, note: str = "", subclasses: bool = False) -> Entry:
    """Register a torch class with its engine twin (the user hook for custom modules).

    children=False: a leaf. The twin is built by `build(torch_module, dtype)` (default: engine_cls() with
      no arguments) and takes the torch module's whole local state dict, after `rules`/`transform`.
    children=True: a composite. engine_cls() (or build(...)) is built, then every torch child is ported
      and attached under the same name, and the torch module's own parameters/buffers are copied.
    """
    user_build = build

    def _build(entry, tm, dtype):
        if user_build is not None:
            return user_build(tm, dtype)
        return entry.engine_class()()
    e = Entry(torch_cls, engine_cls, _build, tuple(rules), transform, "composite" if children else "leaf", note,
              subclasses)
    _USER.append(e)
    if _REGISTRY is not None:
        _REGISTRY[torch_cls] = e
    return e


def unregister(torch_cls: type) -> None:
    """Undo `register` (tests use this to keep the registry clean)."""
    global _REGISTRY
    _USER[:] = [e for e in _USER if e.torch_cls is not torch_cls]
    _REGISTRY = None


def lookup(tm) -> Entry | None:
    """The entry for a torch module instance: exact class first (a parametrized module counts as its
    original class), then registered base classes that allow subclasses."""
    reg = registry()
    cls = type(tm)
    if getattr(cls, "__module__", "") == "torch.nn.utils.parametrize" and len(cls.__bases__) == 1:
        cls = cls.__bases__[0]  # ParametrizedConv1d -> Conv1d (weight-norm is folded by the rules)
    if cls in reg:
        return reg[cls]
    for base in cls.__mro__[1:]:
        e = reg.get(base)
        if e is not None and e.subclasses:
            return e
    return None


# ---- Hugging Face models ------------------------------------------------------------------------------
@dataclass
class HFModel:
    """config.json model_type -> the model's state-dict rules (and, optionally, an engine class path
    overriding engine.models.REGISTRY, the engine's own model_type registry)."""
    rules: tuple = ()
    engine: str | None = None         # "engine.models.llama:LlamaForCausalLM"; None: engine.models.REGISTRY
    hf_class: str = "AutoModelForCausalLM"
    notes: str = ""
    skip: tuple = ()                  # verify: globs of layer names not compared (different contracts)
    lm: bool = True                   # verify: a causal LM (teacher-forced logit metrics); False: an encoder
    inputs: str = "ids"               # verify: what the forward takes (migration.verify.INPUTS): token ids,
                                      # "speech" (log-mel features + decoder ids) or "waveform" (audio + bandwidth)

    def engine_path(self, model_type: str) -> str:
        if self.engine:
            return self.engine
        from engine.models import REGISTRY
        return REGISTRY[model_type]


# Rotary inv_freq and the like are non-persistent in current transformers, but older checkpoints
# carry them; the engine recomputes them, so they are dropped wherever they appear. Tied embeddings:
# checkpoints often omit lm_head.weight; the engine's tied head reads the embedding matrix.
_ROTARY = (Drop("*.rotary_emb.inv_freq"), Drop("*.rotary_emb.original_inv_freq"))
_TIED = (Tie("lm_head.weight", "model.embed_tokens.weight"),)

# transformers >= 5 holds Mixtral's experts fused in memory (mlp.experts.gate_up_proj (E, 2I, H) with
# gate rows first, mlp.experts.down_proj (E, H, I), router mlp.gate) but saves the released names
# (block_sparse_moe.experts.N.w1/w3/w2, block_sparse_moe.gate), which the engine uses. These rules turn
# an in-memory state dict into the released names; on a saved checkpoint they match nothing.
_MIXTRAL = (
    Rename(r"^(model\.layers\.\d+)\.mlp(?=\.|$)", r"\1.block_sparse_moe"),
    Unstack("{p}.experts.gate_up_proj", "{p}.experts.{n}.gate_up"),
    Split("{p}.experts.{n}.gate_up", ("{p}.experts.{n}.w1.weight", "{p}.experts.{n}.w3.weight"), dim=0),
    Unstack("{p}.experts.down_proj", "{p}.experts.{n}.w2.weight"),
)

HF_MODELS: dict[str, HFModel] = {
    "llama": HFModel(_ROTARY + _TIED),
    "mistral": HFModel(_ROTARY + _TIED),
    "qwen2": HFModel(_ROTARY + _TIED),
    "gemma": HFModel(_ROTARY + _TIED, notes="RMSNorm scales by (1 + w); embeddings scaled by sqrt(hidden)"),
    "mixtral": HFModel(_ROTARY + _TIED + _MIXTRAL, notes="router softmax in fp32; per-expert SwiGLU w1/w3/w2"),
    "phi3": HFModel(_ROTARY + _TIED, notes="fused qkv_proj and gate_up_proj kept fused (same keys as HF)"),
    # encoders: the position_ids buffer older transformers saved is rebuilt by the engine
    # BertFor* checkpoints (bert-base-uncased) hold the encoder under bert. beside task heads: as BertModel loads them
    "bert": HFModel((Drop("*embeddings.position_ids"), Drop("*embeddings.token_type_ids"), Drop("cls.*"),
                     Drop("classifier.*"), Drop("qa_outputs.*"), Rename(r"^bert\.", "")), hf_class="BertModel",
                    lm=False, notes="post-norm encoder; exact (erf) GELU; pooler tanh(dense([CLS]))"),
    # released CLIP checkpoints (SD's text_encoder, transformers 4 saves) prefix keys with text_model.;
    # transformers 5 drops the prefix on load, as this rule does
    "clip_text_model": HFModel((Rename(r"^text_model\.", ""), Drop("embeddings.position_ids")),
                               hf_class="CLIPTextModel", lm=False,
                               notes="pre-norm causal encoder; quick_gelu; pooled at the end-of-text token"),
    # EnCodec: weight-normalised convs folded to weight; the codebooks' k-means training buffers dropped
    # (declared beside the model, engine.models.encodec.CHECKPOINT_RULES, as from_pretrained applies them too)
    "encodec": HFModel(_ENCODEC_RULES, hf_class="EncodecModel", lm=False, inputs="waveform",
                       notes="SEANet conv/LSTM codec; residual vector quantiser (nearest codeword per stage)"),
    # Whisper: the checkpoint's names are the engine's; proj_out is tied to the token embeddings. Not
    # compared: `model` (the engine's forward calls encoder and decoder itself), the position tables
    # (the encoder's is read as a weight; the decoder's is looked up by (1, L) positions in the engine,
    # by ids and (B, L) positions in transformers: a contract, not a number)
    "whisper": HFModel((Tie("proj_out.weight", "model.decoder.embed_tokens.weight"),),
                       hf_class="WhisperForConditionalGeneration", inputs="speech",
                       skip=("model", "model.encoder.embed_positions", "model.decoder.embed_positions"),
                       notes="conv stem + sinusoidal positions; q scaled before the scores; tied proj_out"),
}


def hf_model(model_type: str) -> HFModel:
    try:
        return HF_MODELS[model_type]
    except KeyError:
        raise KeyError(f"no port rules for model_type {model_type!r}; known: {', '.join(sorted(HF_MODELS))}") from None
