"""Module: the base of every engine layer and model.

Parameters and buffers are plain Tensor attributes registered by name; child modules are Module
attributes. `state_dict()` keys are attribute paths joined by dots, so a model whose attributes follow
the Hugging Face names has the Hugging Face state-dict keys.
"""
from __future__ import annotations

from collections import OrderedDict

from engine.quant import QuantWeight
from engine.tensor import Tensor


class StateDictError(KeyError):
    """Missing, unexpected or mis-shaped keys while loading a state dict; lists them all, sorted."""

    def __str__(self):
        return self.args[0] if self.args else ""


class Module:
    def __init__(self):
        object.__setattr__(self, "_params", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_taps", None)
        object.__setattr__(self, "_hooks", None)

    # ---- registration ---------------------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_params" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() before setting {name!r}")
        for d in (self._params, self._buffers, self._modules):
            d.pop(name, None)
        if isinstance(value, Module):
            self._modules[name] = value
        elif isinstance(value, (Tensor, QuantWeight)):  # a quantized weight is a parameter too
            self._params[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value: Tensor | None, persistent: bool = True):
        """A tensor that is state but not a weight (e.g. BatchNorm running stats, rotary tables).
        Non-persistent buffers stay out of state_dict()."""
        self.__setattr__(name, value)
        self._params.pop(name, None)
        if value is not None:
            self._buffers[name] = (value, persistent)

    def __getattr__(self, name):
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")

    # ---- traversal ---------------------------------------------------------------------------------
    def named_modules(self, prefix: str = ""):
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_children(self):
        return iter(self._modules.items())

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self, prefix: str = ""):
        for mod_name, m in self.named_modules(prefix):
            for name in m._params:
                yield (f"{mod_name}.{name}" if mod_name else name), getattr(m, name)

    def parameters(self):
        return (p for _, p in self.named_parameters())

    def named_buffers(self, prefix: str = "", persistent_only: bool = False):
        for mod_name, m in self.named_modules(prefix):
            for name, (_, persistent) in m._buffers.items():
                if persistent or not persistent_only:
                    yield (f"{mod_name}.{name}" if mod_name else name), getattr(m, name)

    def state_dict(self) -> "OrderedDict[str, Tensor]":
        out = OrderedDict(self.named_parameters())
        out.update(self.named_buffers(persistent_only=True))
        return out

    def num_parameters(self) -> int:
        seen, n = set(), 0
        for p in self.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        return n

    def load_state_dict(self, state: dict, strict: bool = True):
        """Copy tensors in by key. Strict: every key must match in name and shape; all problems are
        reported in one error, sorted, with shapes."""
        own = self.state_dict()
        missing = sorted(k for k in own if k not in state)
        unexpected = sorted(k for k in state if k not in own)
        mism = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
        if mism or (strict and (missing or unexpected)):
            lines = [f"error loading state dict into {type(self).__name__}:"]
            lines += [f"  missing    {k} {tuple(own[k].shape)}" for k in missing]
            lines += [f"  unexpected {k} {tuple(state[k].shape)}" for k in unexpected]
            lines += [f"  shape      {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in mism]
            raise StateDictError("\n".join(lines))
        for key, value in state.items():
            if key in own:
                self._set_by_path(key, value)
        return missing, unexpected

    def _set_by_path(self, key: str, value: Tensor):
        *path, name = key.split(".")
        m = self
        for p in path:
            m = m._modules[p]
        old = getattr(m, name)
        if not isinstance(value, Tensor):
            from engine.ops import tensor
            value = tensor(value)
        value = value.to(device=old.device, dtype=old.dtype)
        if name in m._buffers:
            m.register_buffer(name, value, m._buffers[name][1])
        else:
            setattr(m, name, value)

    def to(self, device=None, dtype=None) -> "Module":
        """Move every parameter and buffer (floating ones get `dtype`)."""
        for mod_name, m in self.named_modules():
            for name in list(m._params):
                t = getattr(m, name)
                setattr(m, name, t.to(device=device, dtype=dtype if dtype and t.is_floating_point() else None))
            for name, (t, persistent) in list(m._buffers.items()):
                m.register_buffer(name, t.to(device=device, dtype=dtype if dtype and t.is_floating_point() else None),
                                  persistent)
        return self

    # ---- calling and taps ----------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        out = self.forward(*args, **kwargs)
        if self._hooks:
            for hook in self._hooks:
                r = hook(self, args, out)
                out = out if r is None else r
        taps = self._taps
        if taps is not None:
            taps[0](taps[1], out)
        return out

    def register_forward_hook(self, hook) -> "HookHandle":
        """hook(module, args, output) runs after forward; a value it returns replaces the output (torch's
        forward hooks). Tensor parallelism adds its all-reduce after row-parallel layers this way."""
        hooks = list(self._hooks or ()) + [hook]
        object.__setattr__(self, "_hooks", hooks)
        return HookHandle(self, hook)

    def set_taps(self, callback, names=None):
        """Call callback(qualified_name, output) after each named module runs (None to clear). This is
        how migration.verify captures per-layer outputs under the same names as torch hooks."""
        wanted = None if names is None else set(names)
        for name, m in self.named_modules():
            tap = None if callback is None or (wanted is not None and name not in wanted) else (callback, name)
            object.__setattr__(m, "_taps", tap)

    def eval(self):
        return self

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + ("\n)" if len(lines) > 1 else ")")


class HookHandle:
    """What register_forward_hook returns: remove() takes the hook off again."""

    def __init__(self, module: Module, hook):
        self.module, self.hook = module, hook

    def remove(self) -> None:
        hooks = [h for h in (self.module._hooks or ()) if h is not self.hook]
        object.__setattr__(self.module, "_hooks", hooks or None)


class ModuleList(Module):
    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, m: Module):
        setattr(self, str(len(self._modules)), m)
        return self

    def __getitem__(self, i):
        if isinstance(i, slice):
            return list(self._modules.values())[i]
        return self._modules[str(i % len(self._modules) if i < 0 else i)]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class Sequential(ModuleList):
    def forward(self, x):
        for m in self:
            x = m(x)
        return x


class ModuleDict(Module):
    def __init__(self, modules=None):
        super().__init__()
        for k, m in (modules or {}).items():
            setattr(self, k, m)

    def __getitem__(self, k):
        return self._modules[k]

    def __contains__(self, k):
        return k in self._modules

    def items(self):
        return self._modules.items()

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()
