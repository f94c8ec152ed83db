"""EnCodec (HF model_type "encodec"): a SEANet encoder (conv1d stem, residual blocks with ELU, strided
downsampling convs, a 2-layer LSTM with a skip, a last conv), a residual vector quantiser (per stage the
nearest codeword to what is left; decoding sums the chosen codewords) and the mirrored SEANet decoder
(transposed convs upsample). Attribute paths equal the HF state-dict keys of EncodecModel after the
rules declared once below (CHECKPOINT_RULES, which from_pretrained applies and
migration.module_map.HF_MODELS["encodec"] names): weight-normalised convs folded to `weight`
(g * v / ||v||), codebook training buffers (embed_avg, cluster_size, inited) dropped. The 48 kHz model
normalises every conv output with GroupNorm(1, C) (norm_type "time_group_norm": `norm.weight/bias`,
no weight norm) and codes stereo audio in chunks.

    model = migration.port.port_hf(dir).model            # or EncodecModel.from_preset("encodec_24khz")
    codes, scale = model.encode(audio, bandwidth=6.0)    # (B, C, L) -> (B, n_q, ceil(L / hop)) int64
    audio = model.decode(codes, scale)                   # (B, C, >= L)
    codes, audio = model(audio, bandwidth=6.0)           # transformers' EncodecOutput: codes (chunks, B, n_q, T)

Chunked models (chunk_length_s, overlap: encodec_48khz): transformers' loop. Chunks of chunk_length
samples start every chunk_stride = int((1 - overlap) * chunk_length) samples (the last one shorter);
each is normalised on its own (scale = rms of its channel mean + 1e-8, per row), encoded and
quantised; encode returns the per-chunk lists [codes (B, n_q, T_i)], [scale (B, 1)]. Decoding decodes
each chunk and overlap-adds them with triangular weights (0.5 - |t - 0.5| over the chunk, divided by
their sum at every sample).

Padding quirks kept from transformers: each conv pads (causal: all left; else right gets the smaller
half) by kernel - stride plus the extra right padding that makes the last window whole; reflect padding
on inputs shorter than the pad first appends zeros. Transposed convs trim kernel - stride afterwards
(causal: ceil(total * trim_right_ratio) on the right).
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
from engine.nn.batchnorm import GroupNorm
from engine.nn.conv import Conv1d, ConvTranspose1d
from engine.nn.rules import Drop, FoldWeightNorm


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
        if self.norm_type not in ("weight_norm", "time_group_norm"):
            raise ValueError(f"encodec: norm_type must be 'weight_norm' or 'time_group_norm', got {self.norm_type!r}")
        if self.audio_channels not in (1, 2):
            raise ValueError(f"encodec: audio_channels must be 1 or 2, got {self.audio_channels}")
        if (self.chunk_length_s is None) != (self.overlap is None):
            raise ValueError("encodec: chunk_length_s and overlap go together (both set: a chunked model)")
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
    def chunk_length(self) -> int | None:
        """Samples per chunk (None: the whole input is one chunk)."""
        return None if self.chunk_length_s is None else int(self.chunk_length_s * self.sampling_rate)

    @property
    def chunk_stride(self) -> int | None:
        return None if self.chunk_length is None else max(1, int((1.0 - self.overlap) * self.chunk_length))

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
    # facebook/encodec_48khz: stereo, 1 s chunks with 1% overlap, per-chunk normalisation, non-causal
    # convs with GroupNorm(1, C) instead of weight norm; 150 frames/s -> 2 to 16 codebooks
    "encodec_48khz": dict(sampling_rate=48_000, audio_channels=2, normalize=True, chunk_length_s=1.0, overlap=0.01,
                          target_bandwidths=[3.0, 6.0, 12.0, 24.0], norm_type="time_group_norm",
                          use_causal_conv=False),
}


class ELU(Module):
    def forward(self, x):
        return F.elu(x)


def _conv(cls, cin: int, cout: int, k: int, vb, **kw):
    """An engine conv layer holding the checkpoint's `weight` (folded, when weight-normalised) and `bias`."""
    conv = cls(cin, cout, k, dtype=vb.dtype, device=vb.device, **kw)
    conv.weight = vb.get("weight", tuple(conv.weight.shape))  # conv (out, in, k); transposed (in, out, k)
    conv.bias = vb.get("bias", (cout,))
    return conv


def _norm(cfg: Config, cout: int, vb):
    """GroupNorm(1, cout) after the conv for time_group_norm (the 48 kHz model), else None."""
    if cfg.norm_type != "time_group_norm":
        return None
    norm = GroupNorm(1, cout, dtype=vb.dtype, device=vb.device)
    norm.weight, norm.bias = vb.get("weight", (cout,)), vb.get("bias", (cout,))
    return norm


class EncodecConv1d(Module):
    """conv1d with transformers' padding (see the module docstring), then the time group norm if any."""

    def __init__(self, cfg: Config, cin: int, cout: int, k: int, vb, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.causal, self.pad_mode = cfg.use_causal_conv, cfg.pad_mode
        self.stride, self.dilation = stride, dilation
        self.k_eff = (k - 1) * dilation + 1
        self.pad_total = self.k_eff - stride
        self.conv = _conv(Conv1d, cin, cout, k, vb.pp("conv"), stride=stride, dilation=dilation)
        self.norm = _norm(cfg, cout, vb.pp("norm"))

    def forward(self, x):  # (B, cin, L) -> (B, cout, ceil(L / stride))
        length = x.shape[-1]
        n_frames = -(-(length - self.k_eff + self.pad_total) // self.stride)  # ceil
        extra = n_frames * self.stride + self.k_eff - self.pad_total - length
        if self.causal:
            left, right = self.pad_total, extra
        else:
            right = self.pad_total // 2
            left, right = self.pad_total - right, right + extra
        x = self.conv(_pad1d(x, left, right, self.pad_mode))
        return self.norm(x) if self.norm is not None else x


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
        self.conv = _conv(ConvTranspose1d, cin, cout, k, vb.pp("conv"), stride=stride)
        self.norm = _norm(cfg, cout, vb.pp("norm"))

    def forward(self, x):  # (B, cin, L) -> (B, cout, L * stride)
        y = self.conv(x)
        if self.norm is not None:
            y = self.norm(y)
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
        # transformers' -((|x|^2 - 2 x.e) + |e|^2) as (2 x.e - |x|^2) - |e|^2: the same bits (negating is exact
        # and rounding to nearest is symmetric), one pass over the (N, K) distances fewer
        dist = 2 * (x @ e) - (x * x).sum(1, keepdim=True) - (e * e).sum(0, keepdim=True)
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


# transformers saves weight-normalised convs (weight_g/weight_v, or parametrizations.weight.original0/1)
# and the codebooks' k-means training buffers; from_pretrained and port_hf (HF_MODELS["encodec"]) both
# apply these rules: fold weight = g * v / ||v||, drop embed_avg, cluster_size and inited
CHECKPOINT_RULES = (FoldWeightNorm(), Drop("*.codebook.embed_avg"), Drop("*.codebook.cluster_size"),
                    Drop("*.codebook.inited"))


class EncodecModel(Pretrained):
    Config, PRESETS, CHECKPOINT_RULES = Config, PRESETS, CHECKPOINT_RULES

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

    def _frame(self, x):
        """One chunk (B, C, l) -> (encoder output (B, hidden, T), scale (B, 1) or None)."""
        scale = None
        if self.config.normalize:
            mono = x.sum(1, keepdim=True) / x.shape[1]
            scale = (mono * mono).mean(-1, keepdim=True).sqrt() + 1e-8  # (B, 1, 1)
            x = x / scale
            scale = scale.reshape(-1, 1)
        return self.encoder(x), scale

    def _chunks(self, length: int) -> list:
        """(offset, end) of every chunk of an input of `length` samples (one for unchunked models)."""
        cl, stride = self.config.chunk_length, self.config.chunk_stride
        if cl is None:
            return [(0, length)]
        return [(o, min(o + cl, length)) for o in range(0, length, stride)]

    def embed(self, audio):
        """(B, C, L) -> (encoder output (B, hidden, T), scale (B, 1) or None when not normalising);
        for chunked models, lists of both, one entry per chunk."""
        x = self._audio(audio)
        out = [self._frame(x[..., a:b]) for a, b in self._chunks(x.shape[-1])]
        if self.config.chunk_length is None:
            return out[0]
        return [e for e, _ in out], [s for _, s in out]

    def encode(self, audio, bandwidth: float | None = None):
        """(B, C, L) -> (codes (B, n_q, ceil(L / hop)) int64, scale (B, 1) or None); n_q from the
        bandwidth. Chunked models: ([codes (B, n_q, T_i)], [scale (B, 1)]), one entry per chunk."""
        n_q = self.config.quantizers_for(bandwidth)
        x = self._audio(audio)
        out = []
        for a, b in self._chunks(x.shape[-1]):
            emb, scale = self._frame(x[..., a:b])
            out.append((self.quantizer.encode(emb, n_q), scale))
        if self.config.chunk_length is None:
            return out[0]
        return [c for c, _ in out], [s for _, s in out]

    def _decode_frame(self, codes, scale):
        c = codes if hasattr(codes, "storage") else ops.tensor(np.asarray(codes), dtype=D.int64, device=self.device)
        if c.ndim != 3:
            raise ShapeError(f"encodec: codes must be (B, n_q, T), got {tuple(c.shape)}")
        out = self.decoder(self.quantizer.decode(c))
        if scale is None:
            return out
        s = scale if hasattr(scale, "storage") else ops.tensor(np.asarray(scale, np.float32), device=self.device)
        return out * s.to(out.dtype).reshape(-1, 1, 1)

    def decode(self, codes, scale=None):
        """codes (B, n_q, T) -> audio (B, C, T * hop). Chunked models: the per-chunk lists of encode
        (or codes (chunks, B, n_q, T) and scales (chunks, B, 1)), overlap-added."""
        if self.config.chunk_length is None:
            return self._decode_frame(codes, scale)
        scales = [None] * len(codes) if scale is None else list(scale)
        if len(scales) != len(codes):
            raise ShapeError(f"encodec: {len(codes)} chunks of codes but {len(scales)} scales")
        return self._overlap_add([self._decode_frame(c, s) for c, s in zip(codes, scales)])

    def _overlap_weights(self, lengths: tuple, dtype, device):
        """The triangle weights of each frame and their sum over the output, on the device: uploaded at
        the first call of these frame lengths and kept (a captured forward then uploads nothing)."""
        cache = self.__dict__.setdefault("_ola", {})  # not state: rebuilt from the config
        key = (lengths, dtype, device)
        if key not in cache:
            stride, n = self.config.chunk_stride, lengths[0]
            total = stride * (len(lengths) - 1) + lengths[-1]
            t = np.linspace(0, 1, n + 2, dtype=np.float32)[1:-1]
            w = (0.5 - np.abs(t - 0.5)).astype(np.float32)  # (n,)
            wsum = np.zeros(total, np.float32)
            for i, ln in enumerate(lengths):
                wsum[i * stride:i * stride + ln] += w[:ln]
            if wsum.min() == 0:
                raise ShapeError(f"encodec: chunk stride {stride} leaves samples no chunk covers")
            cache[key] = ([ops.tensor(w[:ln], dtype=dtype, device=device) for ln in lengths],
                          ops.tensor(wsum, dtype=dtype, device=device))
        return cache[key]

    def _overlap_add(self, frames):
        """transformers' _linear_overlap_add: frames (B, C, l_i) starting every chunk_stride samples,
        weighted by a triangle over the first frame's length, divided by the summed weights."""
        stride = self.config.chunk_stride
        total = stride * (len(frames) - 1) + frames[-1].shape[-1]
        ws, wsum = self._overlap_weights(tuple(f.shape[-1] for f in frames), frames[0].dtype, frames[0].device)
        out = None
        for i, (f, w) in enumerate(zip(frames, ws)):
            off, ln = i * stride, f.shape[-1]
            part = F.pad(f * w, (off, total - off - ln))
            out = part if out is None else out + part
        return out / wsum

    def forward(self, audio, bandwidth: float | None = None):
        """Encode then decode, as transformers' EncodecModel.forward: (B, C, L) -> (codes (chunks, B,
        n_q, T) int64, the last chunk's codes zero-padded to T; audio (B, C, L))."""
        x = self._audio(audio)
        codes, scale = self.encode(x, bandwidth)
        if self.config.chunk_length is None:
            return codes.unsqueeze(0), self.decode(codes, scale)[..., :x.shape[-1]]
        t = codes[0].shape[-1]
        padded = [c if c.shape[-1] == t else F.pad(c, (0, t - c.shape[-1])) for c in codes]
        return ops.stack(padded, dim=0), self.decode(codes, scale)[..., :x.shape[-1]]
