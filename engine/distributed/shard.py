"""Tensor-parallel loading: a model of any LLM family built by its own class from a per-rank config,
with each rank's slices of the weights, and an all-reduce after each row-parallel module.

    model = engine.distributed.from_pretrained("Llama-2-70b-hf", comm, dtype=engine.float16)
    model = engine.distributed.from_preset("llama", "llama-2-70b", comm, dtype=engine.float16)

The plan is data (engine/distributed/plan.py). From a checkpoint each rank reads only its slices of
the memory-mapped safetensors (a block of rows is a zero-copy view on the CPU; a block of columns is
one strided copy). Random weights (presets) are drawn at full size per tensor (on the GPU, seeded by
name) and sliced, so a TP=N model holds exactly the TP=1 model's weights, split.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from engine import dtype as D
from engine import ops
from engine.distributed.plan import PARAMS, REDUCE_AT, SHARDED_CONFIG, RankZero, Split
from engine.nn.varbuilder import VarBuilder, _Source, _State
from engine.tensor import Tensor


class TensorParallelError(ValueError):
    """A model or world size tensor parallelism cannot split (the message names the numbers)."""


class RankPlan:
    """One rank's view of the plan: its config, and what it takes from each full tensor."""

    def __init__(self, config, world_size: int, rank: int = 0, model_type: str | None = None):
        if not isinstance(world_size, int) or world_size < 1:
            raise TensorParallelError(f"tensor parallel size must be a positive integer, got {world_size!r}")
        if not 0 <= rank < world_size:
            raise TensorParallelError(f"rank {rank} outside a world of {world_size}")
        name = model_type or getattr(config, "model_type", type(config).__name__)
        missing = [k for k in SHARDED_CONFIG if getattr(config, k, None) is None]
        if missing:
            raise TensorParallelError(f"{name}: no tensor-parallel plan (its config has no {', '.join(missing)}); "
                                      "tensor parallelism covers the decoder LMs (llama, mistral, qwen2, gemma, phi3, mixtral)")
        for k in SHARDED_CONFIG:
            v = getattr(config, k)
            if v % world_size:
                what = {"num_attention_heads": "each rank holds whole attention heads",
                        "num_key_value_heads": "each rank holds whole key/value heads",
                        "intermediate_size": "each rank holds an equal slice of the MLP"}[k]
                raise TensorParallelError(f"tensor parallel size {world_size} does not divide {name}'s {k}={v} "
                                          f"({what}); use a size that divides {v}")
        self.full, self.world, self.rank, self.model_type = config, world_size, rank, name
        self.config = dataclasses.replace(config, **{k: getattr(config, k) // world_size for k in SHARDED_CONFIG})

    # ---- rules ----------------------------------------------------------------------------------------
    @staticmethod
    def rule(name: str):
        """The plan's rule for a parameter (None: replicated)."""
        for pattern, r in PARAMS:
            if re.search(pattern, "." + name):
                return r
        return None

    def _sizes(self, rule: Split, name: str, size: int) -> tuple:
        sizes = tuple(rule.parts(self.full)) if rule.parts is not None else (size,)
        if sum(sizes) != size:
            raise TensorParallelError(f"{name}: dim {rule.dim} has {size} entries, the plan's parts {sizes} sum to {sum(sizes)}")
        bad = [s for s in sizes if s % self.world]
        if bad:
            raise TensorParallelError(f"{name}: {size} entries along dim {rule.dim} (parts {sizes}) do not split "
                                      f"into {self.world} equal blocks")
        return sizes

    def shard_shape(self, name: str, full_shape: tuple) -> tuple:
        r = self.rule(name)
        if not isinstance(r, Split):
            return tuple(full_shape)
        if r.dim >= len(full_shape):
            raise TensorParallelError(f"{name}: the plan splits dim {r.dim} of a tensor of shape {tuple(full_shape)}")
        self._sizes(r, name, full_shape[r.dim])
        return tuple(s // self.world if i == r.dim else s for i, s in enumerate(full_shape))

    def full_shape(self, name: str, shard_shape: tuple) -> tuple:
        r = self.rule(name)
        if not isinstance(r, Split):
            return tuple(shard_shape)
        size = sum(r.parts(self.full)) if r.parts is not None else shard_shape[r.dim] * self.world
        return tuple(size if i == r.dim else s for i, s in enumerate(shard_shape))

    def take(self, name: str, full, copy: bool):
        """This rank's part of `full` (a numpy array or an engine Tensor). copy=False keeps a numpy view
        (over a mapped file: only its pages are read); a Tensor's slice is always copied, so the full
        tensor can go."""
        r = self.rule(name)
        if isinstance(r, RankZero):
            if self.rank == 0:
                return full
            return np.zeros_like(full) if isinstance(full, np.ndarray) else ops.zeros_like(full)
        if r is None:
            return full
        pieces, off = [], 0
        for size in self._sizes(r, name, full.shape[r.dim]):
            block = size // self.world
            lo = off + self.rank * block
            if isinstance(full, Tensor):
                pieces.append(full.narrow(r.dim, lo, block))
            else:
                pieces.append(full[(slice(None),) * r.dim + (slice(lo, lo + block),)])
            off += size
        if isinstance(full, Tensor):
            return pieces[0].clone() if len(pieces) == 1 else ops.cat(pieces, r.dim)
        if len(pieces) == 1:
            return np.array(pieces[0]) if copy else pieces[0]
        return np.concatenate(pieces, r.dim)

    # ---- building -------------------------------------------------------------------------------------
    def builder(self, vb: VarBuilder) -> VarBuilder:
        """A VarBuilder over the same tensors that hands out this rank's slices (key accounting intact)."""
        src, st = vb._s.source, vb._s
        if src.keys is None:  # random weights: draw the full tensor, keep the slice
            def get(key, shape):
                return self.take(key, src.get(key, self.full_shape(key, shape)), copy=True)
            shape_of = None
        else:
            def get(key):
                return self.take(key, src.get(key), copy=False)

            def shape_of(key):
                return self.shard_shape(key, tuple(src.shape_of(key)))
        out = _Source(src.keys, shape_of, get, f"{src.description}, tensor-parallel rank {self.rank} of {self.world}")
        return VarBuilder(_State(out, st.dtype, st.device), vb.prefix)

    def attach(self, model, comm) -> int:
        """An all-reduce after every module of REDUCE_AT (a forward hook); checks that each row-parallel
        parameter lies under one. Returns the number of hooks."""
        reduce_at = [name for name, _ in model.named_modules() if any(re.search(p, "." + name) for p in REDUCE_AT)]
        for pname, _ in model.named_parameters():
            r = self.rule(pname)
            if (isinstance(r, RankZero) or (isinstance(r, Split) and r.dim == 1)) \
                    and not any(pname.startswith(m + ".") for m in reduce_at):
                raise TensorParallelError(f"{pname} is row-parallel but no module of REDUCE_AT contains it "
                                          "(its partial sums would never be added up)")
        if not reduce_at:
            raise TensorParallelError(f"{self.model_type}: no module matches REDUCE_AT {REDUCE_AT}")
        mods = dict(model.named_modules())

        def reduce(module, args, out):
            return comm.all_reduce(out)
        for name in reduce_at:
            mods[name].register_forward_hook(reduce)
        return len(reduce_at)


@dataclasses.dataclass
class TensorParallel:
    """What a tensor-parallel model carries as `model.tensor_parallel`."""
    comm: object
    plan: RankPlan
    hooks: int

    @property
    def full_config(self):
        return self.plan.full


def build(model_cls, config, vb: VarBuilder, comm):
    """model_cls built from this rank's config and slices, with its all-reduce hooks."""
    plan = RankPlan(config, comm.world_size, comm.rank, getattr(config, "model_type", None))
    if comm.world_size == 1:  # the plain model: nothing to slice or reduce
        vb.ignore(*getattr(model_cls, "IGNORED_KEYS", ()))
        with vb.collect():
            model = model_cls(config, vb)
        model.tensor_parallel = TensorParallel(comm, plan, 0)
        return model
    svb = plan.builder(vb)
    svb.ignore(*getattr(model_cls, "IGNORED_KEYS", ()))
    with svb.collect():
        model = model_cls(plan.config, svb)
    model.tensor_parallel = TensorParallel(comm, plan, plan.attach(model, comm))
    return model


def _causal_lm(model_type: str):
    from engine.models import model_class
    from engine.models.base import CausalLM
    cls = model_class(model_type)
    if not issubclass(cls, CausalLM):
        raise TensorParallelError(f"model_type {model_type!r} ({cls.__name__}) is not a decoder LM; tensor "
                                  "parallelism covers llama, mistral, qwen2, gemma, phi3, mixtral")
    return cls


def from_pretrained(path, comm, dtype=None, device=None):
    """This rank's part of a HF model directory (safetensors), on `device` (default: the rank's)."""
    from engine.models import read_config
    if Path(path).suffix == ".gguf":
        raise TensorParallelError(f"{path}: tensor parallelism loads safetensors checkpoints, not GGUF files")
    raw = read_config(path)
    cls = _causal_lm(raw.get("model_type") or "")
    config = cls.Config.from_dict(raw)
    RankPlan(config, comm.world_size, comm.rank, raw.get("model_type"))  # bad sizes fail before any read
    vb = VarBuilder.from_pretrained(path, dtype=dtype, device=device or comm.device)
    return build(cls, config, vb, comm)


def from_preset(model_type: str, preset: str, comm, dtype=None, device=None, seed: int = 0, **overrides):
    """This rank's part of a preset with random weights (N(0, 0.02), drawn at full size and sliced, so
    every world size holds the same model)."""
    config = preset_config(model_type, preset, **overrides)
    cls = _causal_lm(model_type)
    vb = VarBuilder.random(seed, dtype=dtype or D.float32, device=device or comm.device)
    return build(cls, config, vb, comm)


def preset_config(model_type: str, preset: str, **overrides):
    cls = _causal_lm(model_type)
    if preset not in cls.PRESETS:
        raise ValueError(f"unknown preset {preset!r} for {cls.__name__}; known: {', '.join(cls.PRESETS)}")
    return cls.Config.from_dict({**cls.PRESETS[preset], **overrides})
