"""YOLOv8 detection (ultralytics' DetectionModel built from yolov8{n,s,m,l,x}.yaml), model_type "yolov8".

Backbone (Conv-BN-SiLU, C2f, SPPF), neck (nearest 2x upsample + concat) and the decoupled Detect head
with DFL box regression, decoded as ultralytics decodes it: (B, 4 + nc, anchors) of xywh boxes in
input pixels and per-class sigmoid scores. Letterbox, NMS and box scaling live in detect.py.

Module paths equal ultralytics' state-dict keys (model.0.conv.weight, model.22.cv2.0.0.conv.weight,
model.22.dfl.conv.weight, ...), so a converted checkpoint loads without renames. BatchNorm is folded
into its convolution on the first forward (and again if a weight is replaced); the unfolded tensors
stay the module's state. `num_batches_tracked` is saved by torch but never read: IGNORED_KEYS.

    model = engine.models.from_pretrained("best.safetensors")        # nc and scale read from the shapes
    preds = model(images)                                             # (B, 3, H, W) in [0, 1] -> (B, 4+nc, A)
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from engine import dtype as D
from engine import functional as F
from engine import ops
from engine.models import config_from_dict, load_preset, read_config
from engine.nn import Module, ModuleList, Sequential
from engine.nn.module import StateDictError

# yolov8.yaml's scales: depth multiple, width multiple, max channels
SCALES = {"n": (0.33, 0.25, 1024), "s": (0.33, 0.50, 1024), "m": (0.67, 0.75, 768), "l": (1.00, 1.00, 512),
          "x": (1.00, 1.25, 512)}


@dataclass
class Config:
    """The keys of ultralytics' model yaml (nc, scale, reg_max) plus what its code fixes (BN eps 1e-3)."""
    nc: int = 80
    scale: str = "n"
    reg_max: int = 16
    bn_eps: float = 1e-3  # ultralytics' initialize_weights sets every BatchNorm2d to eps=1e-3
    names: dict | list | None = None  # class names (index -> name); None: "class i"
    model_type: str = "yolov8"

    def __post_init__(self):
        if self.scale not in SCALES:
            raise ValueError(f"yolov8: unknown scale {self.scale!r}; known: {', '.join(SCALES)}")
        if isinstance(self.names, dict):
            self.names = {int(k): v for k, v in self.names.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return config_from_dict(cls, d)

    def channels(self, c: int) -> int:
        """ultralytics' make_divisible(min(c, max_channels) * width, 8)."""
        _, w, mc = SCALES[self.scale]
        return int(math.ceil(min(c, mc) * w / 8) * 8)

    def depth(self, n: int) -> int:
        return max(round(n * SCALES[self.scale][0]), 1) if n > 1 else n

    def name(self, i: int) -> str:
        """The name of class i ("class i" when the config has none for it)."""
        names = dict(enumerate(self.names)) if isinstance(self.names, list) else self.names or {}
        return str(names.get(i, f"class {i}"))


PRESETS = {
    "yolov8n": dict(nc=80, scale="n"),
    "yolov8s": dict(nc=80, scale="s"),
    "yolov8m": dict(nc=80, scale="m"),
}


# ---- layers ---------------------------------------------------------------------------------------------
class _Tensors(Module):
    """A leaf holding named tensors from the VarBuilder (torch's Conv2d / BatchNorm2d parameter names)."""

    def __init__(self, vb, **shapes):
        super().__init__()
        for name, shape in shapes.items():
            setattr(self, name, vb.get(name, shape))


class Conv(Module):
    """ultralytics Conv: Conv2d(bias=False, padding k//2) -> BatchNorm2d -> SiLU (or no activation)."""

    def __init__(self, cfg: Config, c1: int, c2: int, k: int = 1, s: int = 1, act: bool = True, vb=None):
        super().__init__()
        self.k, self.s, self.act, self.eps = k, s, act, cfg.bn_eps
        self.conv = _Tensors(vb.pp("conv"), weight=(c2, c1, k, k))
        self.bn = _Tensors(vb.pp("bn"), weight=(c2,), bias=(c2,), running_mean=(c2,), running_var=(c2,))
        object.__setattr__(self, "_folded", None)  # (key, weight, bias): not state, rebuilt when a tensor changes

    def folded(self):
        """BatchNorm folded into the conv: w * g/sqrt(v+eps), b - m * g/sqrt(v+eps) (computed in fp32)."""
        c, bn = self.conv, self.bn
        key = tuple(id(t) for t in (c.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var))
        if self._folded is None or self._folded[0] != key:
            dt = c.weight.dtype
            scale = bn.weight.float() / (bn.running_var.float() + self.eps).sqrt()  # (c2,)
            w = (c.weight.float() * scale.reshape(-1, 1, 1, 1)).to(dtype=dt)
            b = (bn.bias.float() - bn.running_mean.float() * scale).to(dtype=dt)
            object.__setattr__(self, "_folded", (key, w, b))
        return self._folded[1], self._folded[2]

    def forward(self, x):
        w, b = self.folded()
        return F.conv2d(x, w, b, self.s, self.k // 2, act="silu" if self.act else None)  # one fused op


class Bottleneck(Module):
    def __init__(self, cfg, c: int, shortcut: bool, vb):
        super().__init__()
        self.cv1 = Conv(cfg, c, c, 3, vb=vb.pp("cv1"))
        self.cv2 = Conv(cfg, c, c, 3, vb=vb.pp("cv2"))
        self.add = shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(Module):
    """cv1 to 2c channels, split in two halves; each bottleneck extends the list; cv2 over all (2+n)c."""

    def __init__(self, cfg, c1: int, c2: int, n: int, shortcut: bool, vb):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(cfg, c1, 2 * self.c, vb=vb.pp("cv1"))
        self.cv2 = Conv(cfg, (2 + n) * self.c, c2, vb=vb.pp("cv2"))
        self.m = ModuleList(Bottleneck(cfg, self.c, shortcut, vb.pp(f"m.{i}")) for i in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))  # 2 x (B, c, H, W)
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(ops.cat(y, 1))  # (B, (2+n)c, H, W) -> (B, c2, H, W)


class SPPF(Module):
    """cv1 (SiLU, as yolov8's yaml rows have it), three chained 5x5 stride-1 max pools, cv2 over the four."""

    def __init__(self, cfg, c1: int, c2: int, vb, k: int = 5):
        super().__init__()
        c = c1 // 2
        self.k = k
        self.cv1 = Conv(cfg, c1, c, vb=vb.pp("cv1"))
        self.cv2 = Conv(cfg, 4 * c, c2, vb=vb.pp("cv2"))

    def forward(self, x):
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(F.max_pool2d(y[-1], self.k, 1, self.k // 2))
        return self.cv2(ops.cat(y, 1))


class Conv2d(Module):
    """A plain Conv2d with bias (the last 1x1 of each Detect branch)."""

    def __init__(self, c1: int, c2: int, vb):
        super().__init__()
        self.weight = vb.get("weight", (c2, c1, 1, 1))
        self.bias = vb.get("bias", (c2,))

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias)


class DFL(Module):
    """Distribution focal loss integral: softmax over reg_max bins, then the expectation, as a 1x1 conv
    whose (frozen, saved) weight is arange(reg_max)."""

    def __init__(self, reg_max: int, vb):
        super().__init__()
        self.reg_max = reg_max
        self.conv = _Tensors(vb.pp("conv"), weight=(1, reg_max, 1, 1))

    def forward(self, x):
        b, _, a = x.shape  # (B, 4*reg_max, A)
        p = x.view(b, 4, self.reg_max, a).transpose(2, 1).softmax(1)  # (B, reg_max, 4, A)
        return F.conv2d(p, self.conv.weight).view(b, 4, a)  # expected distance per side


class Detect(Module):
    stride = (8, 16, 32)

    def __init__(self, cfg: Config, ch: tuple, vb):
        super().__init__()
        self.nc, self.reg_max = cfg.nc, cfg.reg_max
        c2, c3 = max(16, ch[0] // 4, 4 * cfg.reg_max), max(ch[0], min(cfg.nc, 100))
        self.cv2 = ModuleList(Sequential([Conv(cfg, c, c2, 3, vb=vb.pp(f"cv2.{i}.0")),
                                          Conv(cfg, c2, c2, 3, vb=vb.pp(f"cv2.{i}.1")),
                                          Conv2d(c2, 4 * cfg.reg_max, vb.pp(f"cv2.{i}.2"))]) for i, c in enumerate(ch))
        self.cv3 = ModuleList(Sequential([Conv(cfg, c, c3, 3, vb=vb.pp(f"cv3.{i}.0")),
                                          Conv(cfg, c3, c3, 3, vb=vb.pp(f"cv3.{i}.1")),
                                          Conv2d(c3, cfg.nc, vb.pp(f"cv3.{i}.2"))]) for i, c in enumerate(ch))
        self.dfl = DFL(cfg.reg_max, vb.pp("dfl"))
        object.__setattr__(self, "_anchors", {})  # feature shapes -> (anchor points (2, A), strides (1, A))

    def anchors(self, feats):
        """ultralytics' make_anchors: cell centres (x + 0.5, y + 0.5) per level, row-major, and each level's stride."""
        key = tuple(f.shape[2:] for f in feats) + (feats[0].device, feats[0].dtype)
        if key not in self._anchors:
            pts, strides = [], []
            for f, s in zip(feats, self.stride):
                h, w = f.shape[2:]
                sx = ops.arange(w, device=f.device, dtype=f.dtype) + 0.5
                sy = ops.arange(h, device=f.device, dtype=f.dtype) + 0.5
                yy, xx = ops.meshgrid(sy, sx, indexing="ij")  # (h, w) each
                pts.append(ops.stack([xx.reshape(-1), yy.reshape(-1)], 0))  # (2, h*w)
                strides.append(ops.full((1, h * w), float(s), dtype=f.dtype, device=f.device))
            self._anchors[key] = (ops.cat(pts, 1), ops.cat(strides, 1))  # (2, A), (1, A)
        return self._anchors[key]

    def forward(self, feats):
        b = feats[0].shape[0]
        box = ops.cat([m(f).view(b, 4 * self.reg_max, -1) for m, f in zip(self.cv2, feats)], 2)  # (B, 64, A)
        cls = ops.cat([m(f).view(b, self.nc, -1) for m, f in zip(self.cv3, feats)], 2)  # (B, nc, A)
        anchors, strides = self.anchors(feats)
        lt, rb = self.dfl(box).chunk(2, 1)  # (B, 2, A) each: distances left-top, right-bottom (in cells)
        x1y1, x2y2 = anchors.unsqueeze(0) - lt, anchors.unsqueeze(0) + rb
        xywh = ops.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1], 1) * strides  # (B, 4, A) in input pixels
        return ops.cat([xywh, cls.sigmoid()], 1)  # (B, 4 + nc, A)


class Upsample(Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="nearest")


class Concat(Module):
    def forward(self, xs):
        return ops.cat(xs, 1)


# layers of yolov8.yaml: (index, inputs, kind, args); inputs -1 is the previous layer
LAYERS = [
    (-1, "Conv", (64, 3, 2)), (-1, "Conv", (128, 3, 2)), (-1, "C2f", (128, 3, True)),
    (-1, "Conv", (256, 3, 2)), (-1, "C2f", (256, 6, True)), (-1, "Conv", (512, 3, 2)), (-1, "C2f", (512, 6, True)),
    (-1, "Conv", (1024, 3, 2)), (-1, "C2f", (1024, 3, True)), (-1, "SPPF", (1024,)),
    (-1, "Upsample", ()), ((-1, 6), "Concat", ()), (-1, "C2f", (512, 3, False)),
    (-1, "Upsample", ()), ((-1, 4), "Concat", ()), (-1, "C2f", (256, 3, False)),
    (-1, "Conv", (256, 3, 2)), ((-1, 12), "Concat", ()), (-1, "C2f", (512, 3, False)),
    (-1, "Conv", (512, 3, 2)), ((-1, 9), "Concat", ()), (-1, "C2f", (1024, 3, False)),
    ((15, 18, 21), "Detect", ()),
]


class YOLOv8(Module):
    Config = Config
    PRESETS = PRESETS
    IGNORED_KEYS = (r"\.num_batches_tracked$",)  # torch's BatchNorm counter; inference never reads it

    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.config = cfg
        layers, ch = [], []
        for i, (src, kind, args) in enumerate(LAYERS):
            v = vb.pp(f"model.{i}")
            c1 = ch[-1] if i else 3
            if kind == "Conv":
                c2 = cfg.channels(args[0])
                m = Conv(cfg, c1, c2, args[1], args[2], vb=v)
            elif kind == "C2f":
                c2 = cfg.channels(args[0])
                m = C2f(cfg, c1, c2, cfg.depth(args[1]), args[2], v)
            elif kind == "SPPF":
                c2 = cfg.channels(args[0])
                m = SPPF(cfg, c1, c2, v)
            elif kind == "Upsample":
                c2, m = c1, Upsample()
            elif kind == "Concat":
                c2, m = sum(ch[j] for j in src), Concat()
            else:
                c2, m = None, Detect(cfg, tuple(ch[j] for j in src), v)
            layers.append(m)
            ch.append(c2)
        self.model = ModuleList(layers)

    @classmethod
    def from_pretrained(cls, path, dtype=None, device=None):
        """A model directory (config.json + model.safetensors) or a .safetensors file (e.g. the output of
        `taper convert best.pt best.safetensors`): without a config.json, nc and the scale are read
        from the tensor shapes."""
        from engine.nn.varbuilder import VarBuilder
        path = Path(path)
        vb = VarBuilder.from_pretrained(path, dtype=dtype or D.float32, device=device)
        cfg_file = (path if path.is_dir() else path.parent) / "config.json"
        cfg = Config.from_dict(read_config(cfg_file)) if path.is_dir() and cfg_file.is_file() else infer_config(vb)
        vb.ignore(*cls.IGNORED_KEYS)
        with vb.collect():
            return cls(cfg, vb)

    @classmethod
    def from_preset(cls, preset: str, dtype=None, device=None, seed: int = 0, **overrides):
        return load_preset(cls, preset, dtype, device, seed, **overrides)

    @property
    def dtype(self):
        return self.model[0].conv.weight.dtype

    @property
    def device(self):
        return self.model[0].conv.weight.device

    @property
    def stride(self) -> int:
        return max(Detect.stride)

    def forward(self, images):
        """images (B, 3, H, W), RGB in [0, 1], H and W multiples of 32 -> (B, 4 + nc, A): xywh boxes in
        input pixels, then per-class scores; A = sum over strides 8, 16, 32 of (H/s)(W/s)."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] % 32 or images.shape[3] % 32:
            raise ValueError(f"yolov8 expects images (B, 3, H, W) with H and W multiples of 32, got {images.shape}")
        outs = []
        x = images
        for (src, kind, _), m in zip(LAYERS, self.model):
            if kind == "Concat":
                x = m([x] + [outs[j] for j in src[1:]])
            elif kind == "Detect":
                x = m([outs[j] for j in src])
            else:
                x = m(x)
            outs.append(x)
        return x


def infer_config(vb) -> Config:
    """nc, reg_max and the scale of an ultralytics YOLOv8 state dict from its shapes (no config.json)."""
    keys = set(vb.keys())
    need = ("model.0.conv.weight", "model.22.cv3.0.2.weight", "model.22.dfl.conv.weight")
    missing = [k for k in need if k not in keys]
    if missing:
        raise StateDictError(f"{vb.description}: not a YOLOv8 detection checkpoint (no {', '.join(missing)}; "
                             f"it has {len(keys)} tensors, e.g. {', '.join(sorted(keys)[:3])})")
    shape = vb.shape_of
    width = shape("model.0.conv.weight")[0] / 64  # the first Conv has 64 * width channels
    depth = len({m[1] for k in keys if (m := re.match(r"model\.4\.m\.(\d+)\.", k))})  # C2f of 6 bottlenecks
    scale = next((s for s, (d, w, _) in SCALES.items() if math.isclose(w, width) and max(round(6 * d), 1) == depth),
                 None)
    if scale is None:
        raise StateDictError(f"{vb.description}: YOLOv8 shapes of width {width:g} and depth {depth} match "
                             f"no scale of {', '.join(SCALES)}")
    return Config(nc=shape("model.22.cv3.0.2.weight")[0], scale=scale, reg_max=shape("model.22.dfl.conv.weight")[1])
