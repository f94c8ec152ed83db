"""EnCodec (HF model_type "encodec"): a SEANet encoder (conv1d stem, residual blocks with ELU, strided
downsampling convs, a 2-layer LSTM with a skip, a last conv), a residual vector quantiser (per stage the
nearest codeword to what is left; decoding sums the chosen codewords) and the mirrored SEANet decoder
(transposed convs upsample). Attribute paths equal the HF state-dict keys of EncodecModel after the
rules declared in migration.module_map.HF_MODELS["encodec"]: weight-normalised convs folded to `weight`
(g * v / ||v||), codebook training buffers (embed_avg, cluster_size, inited) dropped.

    model = migration.port.port_hf(dir).model            # or EncodecModel.from_preset("encodec_24khz")
    codes, scale = model.encode(audio, bandwidth=6.0)    # (B, C, L) -> (B, n_q, ceil(L / hop)) int64
    audio = model.decode(codes, scale)                   # (B, C, >= L)

Padding quirks kept from transformers: each conv pads (causal: all left; else right gets the smaller
half) by kernel - stride plus the extra right padding that makes the last window whole; reflect padding
on inputs shorter than the pad first appends zeros. Transposed convs trim kernel - stride afterwards
(causal: ceil(total * trim_right_ratio) on the right). Only the unchunked (24 kHz) layout is built.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine import dtype as D
from engine import functional as F
from engine import ops
from engine.layout import ShapeError
from engine.models import config_from_dict
from engine.models.base import Pretrained
from engine.nn import LSTM, Module, ModuleList


@dataclass
class Config:
    target_bandwidths: list | tuple = (1.5, 3.0, 6.0, 12.0, 24.0)
    sampling_rate: int = 24_000
    audio_channels: int = 1
    normalize: bool = False
    chunk_length_s: float | None = None
    overlap: float | None = None
    hidden_size: int = 128
    num_filters: int = 32
    num_residual_layers: int = 1
    upsampling_ratios: list | tuple = (8, 5, 4, 2)
    norm_type: str = "weight_norm"
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    use_causal_conv: bool = True
    pad_mode: str = "reflect"
    compress: int = 2
    num_lstm_layers: int = 2
    trim_right_ratio: float = 1.0
    codebook_size: int = 1024
    codebook_dim: int | None = None
    use_conv_shortcut: bool = True
    model_type: str = "encodec"

    def __post_init__(self):
        if self.codebook_dim is None:
            self.codebook_dim = self.hidden_size
        if self.norm_type != "weight_norm":
            raise NotImplementedError(f"encodec with norm_type={self.norm_type!r} (weight_norm only: the 24 kHz model)")
        if self.chunk_length_s is not None:
            raise NotImplementedError("encodec with chunk_length_s (chunked overlap-add, the 48 kHz model) is not built")
        if self.pad_mode not in ("reflect", "constant"):
            raise ValueError(f"encodec: pad_mode must be 'reflect' or 'constant', got {self.pad_mode!r}")
        if 2 ** int(math.log2(self.codebook_size)) != self.codebook_size:
            raise ValueError(f"encodec: codebook_size must be a power of 2, got {self.codebook_size}")
        if not self.use_causal_conv and self.trim_right_ratio != 1.0:
            raise ValueError("encodec: trim_right_ratio != 1.0 only makes sense for causal convolutions")

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return config_from_dict(cls, d)

    @property
    def hop_length(self) -> int:
        return int(np.prod(self.upsampling_ratios))

    @property
    def frame_rate(self) -> int:
        return math.ceil(self.sampling_rate / self.hop_length)

    @property
    def codebook_nbits(self) -> int:
        return math.ceil(math.log2(self.codebook_size))

    @property
    def num_quantizers(self) -> int:
        return int(1000 * self.target_bandwidths[-1] // (self.frame_rate * self.codebook_nbits))

    def quantizers_for(self, bandwidth: float | None) -> int:
        """Codebooks used at `bandwidth` kbps (one of target_bandwidths; None: the smallest)."""
        if bandwidth is None:
            bandwidth = self.target_bandwidths[0]
        if float(bandwidth) not in [float(b) for b in self.target_bandwidths]:
            raise ValueError(f"encodec: bandwidth {bandwidth} kbps is not one of {list(self.target_bandwidths)}")
        return int(max(1, math.floor(bandwidth * 1000 / (self.codebook_nbits * self.frame_rate))))


PRESETS = {
    # tiny: hop 4 (frame rate 6000 Hz, 5 bits per code) -> bandwidths 30/60/120 kbps = 1/2/4 codebooks
    "tiny": dict(hidden_size=16, num_filters=4, upsampling_ratios=[2, 2], codebook_size=32,
                 target_bandwidths=[30.0, 60.0, 120.0], num_lstm_layers=2),
    "encodec_24khz": dict(),  # facebook/encodec_24khz: transformers' defaults
}


class ELU(Module):
    def forward(self, x):
        return F.elu(x)


class EncodecConv1d(Module):
    """conv1d with transformers' padding (see the module docstring); `conv.weight` (out, in, k) is folded."""

    def __init__(self, cfg: Config, cin: int, cout: int, k: int, vb, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.causal, self.pad_mode = cfg.use_causal_conv, cfg.pad_mode
        self.stride, self.dilation = stride, dilation
        self.k_eff = (k - 1) * dilation + 1
        self.pad_total = self.k_eff - stride
        self.conv = Module()
        self.conv.weight = vb.pp("conv").get("weight", (cout, cin, k))
        self.conv.bias = vb.pp("conv").get("bias", (cout,))

    def forward(self, x):  # (B, cin, L) -> (B, cout, ceil(L / stride))
        length = x.shape[-1]
        n_frames = -(-(length - self.k_eff + self.pad_total) // self.stride)  # ceil
        extra = n_frames * self.stride + self.k_eff - self.pad_total - length
        if self.causal:
            left, right = self.pad_total, extra
        else:
            right = self.pad_total // 2
            left, right = self.pad_total - right, right + extra
        x = _pad1d(x, left, right, self.pad_mode)
        return F.conv1d(x, self.conv.weight, self.conv.bias, stride=self.stride, dilation=self.dilation)


def _pad1d(x, left: int, right: int, mode: str):
    if mode != "reflect":
        return F.pad(x, (left, right))
    length, extra = x.shape[-1], 0
    if length <= max(left, right):  # reflect needs more samples than the pad: zeros first, cut after
        extra = max(left, right) - length + 1
        x = F.pad(x, (0, extra))
    x = F.pad(x, (left, right), mode="reflect")
    return x[..., :x.shape[-1] - extra] if extra else x


class EncodecConvTranspose1d(Module):
    def __init__(self, cfg: Config, cin: int, cout: int, k: int, stride: int, vb):
        super().__init__()
        self.stride = stride
        total = k - stride
        right = math.ceil(total * cfg.trim_right_ratio) if cfg.use_causal_conv else total // 2
        self.trim = (total - right, right)
        self.conv = Module()
        self.conv.weight = vb.pp("conv").get("weight", (cin, cout, k))  # torch's transposed layout (in, out, k)
        self.conv.bias = vb.pp("conv").get("bias", (cout,))

    def forward(self, x):  # (B, cin, L) -> (B, cout, L * stride)
        y = F.conv_transpose1d(x, self.conv.weight, self.conv.bias, stride=self.stride)
        left, right = self.trim
        return y[..., left:y.shape[-1] - right]


class EncodecLSTM(Module):
    """LSTM over time with a skip: x (B, C, T) -> lstm(x)[0] + x, in conv layout."""

    def __init__(self, cfg: Config, dim: int, vb):
        super().__init__()
        self.lstm = LSTM(dim, dim, cfg.num_lstm_layers)
        v = vb.pp("lstm")
        for k in range(cfg.num_lstm_layers):  # torch's names and shapes; both biases kept (the LSTM sums them)
            for n, shape in (("weight_ih", (4 * dim, dim)), ("weight_hh", (4 * dim, dim)),
                             ("bias_ih", (4 * dim,)), ("bias_hh", (4 * dim,))):
                setattr(self.lstm, f"{n}_l{k}", v.get(f"{n}_l{k}", shape))

    def forward(self, x):
        t = x.permute(2, 0, 1)  # (T, B, C)
        return (self.lstm(t)[0] + t).permute(1, 2, 0)


class EncodecResnetBlock(Module):
    def __init__(self, cfg: Config, dim: int, dilations, vb):
        super().__init__()
        hidden = dim // cfg.compress
        ks = (cfg.residual_kernel_size, 1)
        block = []
        for i, (k, d) in enumerate(zip(ks, dilations)):
            cin = dim if i == 0 else hidden
            cout = dim if i == len(ks) - 1 else hidden
            block += [ELU(), EncodecConv1d(cfg, cin, cout, k, vb.pp(f"block.{2 * i + 1}"), dilation=d)]
        self.block = ModuleList(block)
        self.shortcut = EncodecConv1d(cfg, dim, dim, 1, vb.pp("shortcut")) if cfg.use_conv_shortcut else None

    def forward(self, x):
        h = x
        for layer in self.block:
            h = layer(h)
        return (self.shortcut(x) if self.shortcut is not None else x) + h


class EncodecEncoder(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        nf, L = cfg.num_filters, []
        add = lambda make: L.append(make(vb.pp(f"layers.{len(L)}")))  # noqa: E731
        add(lambda v: EncodecConv1d(cfg, cfg.audio_channels, nf, cfg.kernel_size, v))
        scale = 1
        for ratio in reversed(cfg.upsampling_ratios):
            dim = scale * nf
            for j in range(cfg.num_residual_layers):
                add(lambda v: EncodecResnetBlock(cfg, dim, (cfg.dilation_growth_rate ** j, 1), v))
            L.append(ELU())
            add(lambda v: EncodecConv1d(cfg, dim, dim * 2, ratio * 2, v, stride=ratio))
            scale *= 2
        add(lambda v: EncodecLSTM(cfg, scale * nf, v))
        L.append(ELU())
        add(lambda v: EncodecConv1d(cfg, scale * nf, cfg.hidden_size, cfg.last_kernel_size, v))
        self.layers = ModuleList(L)

    def forward(self, x):  # (B, C, L) -> (B, hidden, ceil(L / hop))
        for layer in self.layers:
            x = layer(x)
        return x


class EncodecDecoder(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        nf, L = cfg.num_filters, []
        add = lambda make: L.append(make(vb.pp(f"layers.{len(L)}")))  # noqa: E731
        scale = 2 ** len(cfg.upsampling_ratios)
        add(lambda v: EncodecConv1d(cfg, cfg.hidden_size, scale * nf, cfg.kernel_size, v))
        add(lambda v: EncodecLSTM(cfg, scale * nf, v))
        for ratio in cfg.upsampling_ratios:
            dim = scale * nf
            L.append(ELU())
            add(lambda v: EncodecConvTranspose1d(cfg, dim, dim // 2, ratio * 2, ratio, v))
            for j in range(cfg.num_residual_layers):
                add(lambda v: EncodecResnetBlock(cfg, dim // 2, (cfg.dilation_growth_rate ** j, 1), v))
            scale //= 2
        L.append(ELU())
        add(lambda v: EncodecConv1d(cfg, nf, cfg.audio_channels, cfg.last_kernel_size, v))
        self.layers = ModuleList(L)

    def forward(self, x):  # (B, hidden, T) -> (B, C, T * hop)
        for layer in self.layers:
            x = layer(x)
        return x


class Codebook(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.embed = vb.get("embed", (cfg.codebook_size, cfg.codebook_dim))  # (K, D)

    def encode(self, x):  # (N, D) -> (N,) nearest codeword, transformers' distance formula in order
        e = self.embed.transpose(0, 1)  # (D, K)
        dist = -((x * x).sum(1, keepdim=True) - 2 * (x @ e) + (e * e).sum(0, keepdim=True))
        return dist.argmax(-1)

    def decode(self, ids):  # (...,) -> (..., D)
        return F.embedding(ids, self.embed)


class VectorQuantization(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.codebook = Codebook(cfg, vb.pp("codebook"))


class ResidualVectorQuantizer(Module):
    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.layers = ModuleList([VectorQuantization(cfg, vb.pp(f"layers.{i}")) for i in range(cfg.num_quantizers)])

    def encode(self, emb, n_q: int):  # (B, D, T) -> codes (B, n_q, T)
        b, d, t = emb.shape
        residual = emb.permute(0, 2, 1).reshape(b * t, d)
        codes = []
        for layer in self.layers[:n_q]:
            ids = layer.codebook.encode(residual)  # (B*T,)
            residual = residual - layer.codebook.decode(ids)
            codes.append(ids.reshape(b, t))
        return ops.stack(codes, dim=1)

    def decode(self, codes):  # (B, n_q, T) -> (B, D, T)
        if codes.shape[1] > len(self.layers):
            raise ShapeError(f"encodec: codes have {codes.shape[1]} codebooks, the model has {len(self.layers)}")
        out = None
        for i in range(codes.shape[1]):
            q = self.layers[i].codebook.decode(codes[:, i])  # (B, T, D)
            out = q if out is None else out + q
        return out.permute(0, 2, 1)


class EncodecModel(Pretrained):
    Config, PRESETS = Config, PRESETS

    def __init__(self, cfg: Config, vb):
        super().__init__()
        self.config = cfg
        self.encoder = EncodecEncoder(cfg, vb.pp("encoder"))
        self.decoder = EncodecDecoder(cfg, vb.pp("decoder"))
        self.quantizer = ResidualVectorQuantizer(cfg, vb.pp("quantizer"))

    def _audio(self, audio):
        x = audio if hasattr(audio, "storage") else ops.tensor(np.asarray(audio, np.float32), device=self.device)
        if x.ndim == 1:
            x = x.reshape(1, 1, x.shape[0])
        if x.ndim != 3 or x.shape[1] != self.config.audio_channels:
            raise ShapeError(f"encodec: audio must be (B, {self.config.audio_channels}, L) "
                             f"(or (L,) for mono), got {tuple(x.shape)}")
        if x.shape[-1] == 0:
            raise ShapeError("encodec: audio is empty (0 samples)")
        return x.to(self.dtype)

    def embed(self, audio):
        """(B, C, L) -> (encoder output (B, hidden, T), scale (B, 1) or None when not normalising)."""
        x = self._audio(audio)
        scale = None
        if self.config.normalize:
            mono = x.sum(1, keepdim=True) / x.shape[1]
            scale = (mono * mono).mean(-1, keepdim=True).sqrt() + 1e-8  # (B, 1, 1)
            x = x / scale
            scale = scale.reshape(-1, 1)
        return self.encoder(x), scale

    def encode(self, audio, bandwidth: float | None = None):
        """(B, C, L) -> (codes (B, n_q, ceil(L / hop)) int64, scale or None); n_q from the bandwidth."""
        n_q = self.config.quantizers_for(bandwidth)
        emb, scale = self.embed(audio)
        return self.quantizer.encode(emb, n_q), scale

    def decode(self, codes, scale=None):
        """codes (B, n_q, T) -> audio (B, C, T * hop)."""
        c = codes if hasattr(codes, "storage") else ops.tensor(np.asarray(codes), dtype=D.int64, device=self.device)
        if c.ndim != 3:
            raise ShapeError(f"encodec: codes must be (B, n_q, T), got {tuple(c.shape)}")
        out = self.decoder(self.quantizer.decode(c))
        return out * scale.reshape(-1, 1, 1) if scale is not None else out

    def forward(self, audio, bandwidth: float | None = None):
        """Encode then decode, trimmed to the input length: (B, C, L) -> (B, C, L)."""
        x = self._audio(audio)
        codes, scale = self.encode(x, bandwidth)
        return self.decode(codes, scale)[..., :x.shape[-1]]
