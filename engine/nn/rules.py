"""State-dict rules: every difference between a PyTorch state dict and an engine state dict, as data.

A model's rules are a tuple of rule objects, declared once (migration.module_map.HF_MODELS, or an engine
model's CHECKPOINT_RULES, which HF_MODELS then names, when engine.models' from_pretrained must apply them
too) and applied in order by `apply_rules` to a {key: numpy array} dict. Each rule records what it did,
so the same declaration drives loading, `taper port`'s mapping table and the leftover/missing report.
The rules live in the engine (numpy only) so that loading can apply them; migration.rules re-exports
them beside the key report.

    Drop("*.rotary_emb.inv_freq")                      buffers the engine recomputes (glob)
    Rename(r"^transformer\\.h\\.", "model.layers.")      regex substitution on every key
    Transpose("*.c_attn.weight")                        (in, out) -> (out, in), e.g. GPT-2's Conv1D
    Fuse(("{p}.q_proj.weight", "{p}.k_proj.weight", "{p}.v_proj.weight"), "{p}.qkv_proj.weight", dim=0)
    Split("{p}.qkv_proj.weight", ("{p}.q_proj.weight", "{p}.k_proj.weight", "{p}.v_proj.weight"), dim=0,
          sizes=None)                                   equal chunks unless sizes are given
    Unstack("{p}.experts.down_proj", "{p}.experts.{n}.w2.weight")   (E, ...) -> E keys
    FoldWeightNorm()                                    <p>weight_g + <p>weight_v (old API) or
                                                        <p>parametrizations.weight.original0/1 -> <p>weight
    Tie("lm_head.weight", "model.embed_tokens.weight")  fill a missing key from another (tied weights)

Templates: `{name}` matches any text (dots included); the same name must match the same text in
every source of a Fuse. Globs use fnmatch (`*` crosses dots).

This module imports numpy only: rules run on checkpoints read straight from safetensors, without torch.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

import numpy as np


class RuleError(ValueError):
    """A rule could not be applied (shape mismatch, missing source); the message names rule and keys."""


@dataclass(frozen=True)
class Step:
    """One applied rule: which source keys became which target key, and how."""
    rule: str
    sources: tuple
    target: str | None

    def describe(self) -> str:
        src = ", ".join(self.sources)
        return f"{self.rule}: {src} -> {self.target}" if self.target else f"{self.rule}: {src}"


def _template(t: str) -> re.Pattern:
    out, pos = [], 0
    for m in re.finditer(r"\{(\w+)\}", t):
        out.append(re.escape(t[pos:m.start()]))
        out.append(f"(?P<{m.group(1)}>.+?)")
        pos = m.end()
    out.append(re.escape(t[pos:]))
    return re.compile("".join(out))


def _fill(t: str, groups: dict) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: groups[m.group(1)], t)


@dataclass(frozen=True)
class Drop:
    """Remove keys matching a glob (e.g. rotary inv_freq, causal-mask buffers)."""
    pattern: str

    def apply(self, sd: dict, steps: list):
        for k in [k for k in sd if fnmatch.fnmatchcase(k, self.pattern)]:
            del sd[k]
            steps.append(Step("drop", (k,), None))


@dataclass(frozen=True)
class Rename:
    """re.sub(pattern, repl) on every key that matches."""
    pattern: str
    repl: str

    def apply(self, sd: dict, steps: list):
        rx = re.compile(self.pattern)
        out = {}
        for k, v in sd.items():
            nk = rx.sub(self.repl, k)
            if nk != k:
                if nk in sd and nk not in out:
                    raise RuleError(f"Rename({self.pattern!r}, {self.repl!r}): {k} -> {nk} collides with an existing key")
                steps.append(Step("rename", (k,), nk))
            out[nk] = v
        sd.clear()
        sd.update(out)


@dataclass(frozen=True)
class Transpose:
    """Swap two dims (default the last two) of every key matching a glob."""
    pattern: str
    dims: tuple = (-2, -1)

    def apply(self, sd: dict, steps: list):
        for k in [k for k in sd if fnmatch.fnmatchcase(k, self.pattern)]:
            a = np.asarray(sd[k])
            if a.ndim < 2:
                raise RuleError(f"Transpose({self.pattern!r}): {k} has shape {a.shape}, needs 2+ dims")
            sd[k] = np.ascontiguousarray(np.swapaxes(a, *self.dims))
            steps.append(Step(f"transpose{tuple(self.dims)}", (k,), k))


@dataclass(frozen=True)
class Fuse:
    """Concatenate several keys (templates sharing placeholders) into one along `dim`."""
    sources: tuple
    target: str
    dim: int = 0

    def apply(self, sd: dict, steps: list):
        first = _template(self.sources[0])
        for k in [k for k in sd if first.fullmatch(k)]:
            groups = first.fullmatch(k).groupdict()
            names = [_fill(s, groups) for s in self.sources]
            missing = [n for n in names if n not in sd]
            if missing:
                raise RuleError(f"Fuse into {_fill(self.target, groups)}: missing sources {missing}")
            target = _fill(self.target, groups)
            sd[target] = np.concatenate([np.asarray(sd.pop(n)) for n in names], axis=self.dim)
            steps.append(Step(f"fuse(dim={self.dim})", tuple(names), target))


@dataclass(frozen=True)
class Split:
    """Split one key into several along `dim`: equal chunks, or `sizes` (ints, or names of config
    fields resolved by `apply_rules(..., config=...)`)."""
    source: str
    targets: tuple
    dim: int = 0
    sizes: tuple | None = None

    def apply(self, sd: dict, steps: list, config=None):
        rx = _template(self.source)
        for k in [k for k in sd if rx.fullmatch(k)]:
            groups = rx.fullmatch(k).groupdict()
            a = np.asarray(sd.pop(k))
            if self.sizes is None:
                if a.shape[self.dim] % len(self.targets):
                    raise RuleError(f"Split({k}): dim {self.dim} of {a.shape} does not split into "
                                    f"{len(self.targets)} equal parts")
                parts = np.split(a, len(self.targets), axis=self.dim)
            else:
                sizes = [int(config[s]) if isinstance(s, str) else int(s) for s in self.sizes]
                if sum(sizes) != a.shape[self.dim]:
                    raise RuleError(f"Split({k}): sizes {sizes} do not sum to dim {self.dim} of {a.shape}")
                parts = np.split(a, np.cumsum(sizes)[:-1], axis=self.dim)
            for t, p in zip(self.targets, parts):
                name = _fill(t, groups)
                sd[name] = np.ascontiguousarray(p)
                steps.append(Step(f"split(dim={self.dim})", (k,), name))


@dataclass(frozen=True)
class Unstack:
    """Split one key along `dim` into one key per index, the dim removed; `target` has an `{n}`
    placeholder for the index (fused 3-d expert tensors -> one tensor per expert)."""
    source: str
    target: str
    dim: int = 0

    def apply(self, sd: dict, steps: list):
        rx = _template(self.source)
        for k in [k for k in sd if rx.fullmatch(k)]:
            groups = rx.fullmatch(k).groupdict()
            a = np.asarray(sd.pop(k))
            for n in range(a.shape[self.dim]):
                name = _fill(self.target, {**groups, "n": str(n)})
                sd[name] = np.ascontiguousarray(np.take(a, n, axis=self.dim))
                steps.append(Step(f"unstack(dim={self.dim})[{n}]", (k,), name))


@dataclass(frozen=True)
class FoldWeightNorm:
    """weight = g * v / ||v||, the norm over every dim except `dim` (torch.nn.utils.weight_norm)."""
    dim: int = 0
    # (g, v) key forms; `p` is "" or a prefix ending in "." (so a module's local state dict works too)
    forms: tuple = (("weight_g", "weight_v"),
                    ("parametrizations.weight.original0", "parametrizations.weight.original1"))

    def apply(self, sd: dict, steps: list):
        for g_t, v_t in self.forms:
            rx = re.compile(r"(?P<p>(?:.*\.)?)" + re.escape(g_t))
            for k in [k for k in sd if rx.fullmatch(k)]:
                pre = rx.fullmatch(k).group("p")
                vk = pre + v_t
                if vk not in sd:
                    raise RuleError(f"FoldWeightNorm: {k} has no partner {vk}")
                g, v = np.asarray(sd.pop(k)), np.asarray(sd.pop(vk))
                axes = tuple(i for i in range(v.ndim) if i != self.dim % v.ndim)
                v64 = v.astype(np.float64)
                norm = np.sqrt(np.sum(v64 * v64, axis=axes, keepdims=True))
                target = pre + "weight"
                sd[target] = (g.astype(np.float64) * v64 / norm).astype(v.dtype)
                steps.append(Step(f"fold_weight_norm(dim={self.dim})", (k, vk), target))


@dataclass(frozen=True)
class Tie:
    """If `target` is missing, use `source`'s tensor (tied input/output embeddings)."""
    target: str
    source: str

    def apply(self, sd: dict, steps: list):
        if self.target not in sd and self.source in sd:
            sd[self.target] = sd[self.source]
            steps.append(Step("tie", (self.source,), self.target))


@dataclass
class RuleResult:
    state: dict
    steps: list = field(default_factory=list)

    def transformed(self) -> dict:
        """{target key: description} for every key a rule produced or changed."""
        return {s.target: s.describe() for s in self.steps if s.target}

    def dropped(self) -> list:
        return [s.sources[0] for s in self.steps if s.target is None]


def apply_rules(state: dict, rules, config=None) -> RuleResult:
    """Apply `rules` in order to a copy of `state` ({key: array}); returns the new dict and the steps."""
    sd = dict(state)
    steps: list = []
    for r in rules:
        if isinstance(r, Split):
            r.apply(sd, steps, config)
        else:
            r.apply(sd, steps)
    return RuleResult(sd, steps)


def rename_name(name: str, rules) -> str:
    """Apply the Rename rules to a module's qualified name (so torch hook names meet engine taps)."""
    for r in rules:
        if isinstance(r, Rename):
            name = re.sub(r.pattern, r.repl, name)
    return name
