"""`taper codec --model DIR in.wav --bandwidth 6 --out out.wav`: EnCodec round trip on the engine.

    taper codec --model ./encodec_24khz speech.wav --bandwidth 6 --out speech.6k.wav
    taper codec --model encodec:encodec_24khz speech.wav --out out.wav --codes codes.npy   # random weights

The WAV (PCM, any rate: resampled to the model's rate; channels averaged for a mono model, a mono file
duplicated for a stereo one) is encoded to codes at the bandwidth (kbps, one of the model's
target_bandwidths; default: the smallest), decoded back and trimmed to the input length. Prints the
codes' shape, the codebooks used and the bitrate; writes the reconstructed WAV (16-bit PCM at the
model's rate) and, with --codes, the codes (B, n_q, frames) as .npy, both atomically. A HF directory is
loaded through migration.port.port_hf, whose declared rules fold the weight-normalised convs.
Exit codes: 0 done, 2 bad usage (missing or unreadable audio, a model that is not EnCodec, a bandwidth
the model does not have).
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", help="a PCM WAV file (any sample rate)")
    parser.add_argument("--model", required=True,
                        help="an EnCodec HF directory (config.json + safetensors) or a preset encodec:NAME "
                             "with random weights")
    parser.add_argument("--bandwidth", type=float, default=None,
                        help="target bandwidth in kbps (24 kHz model: 1.5, 3, 6, 12, 24; default: the smallest)")
    parser.add_argument("--out", required=True, help="the reconstructed WAV to write")
    parser.add_argument("--codes", default=None, help="also write the codes (B, n_q, frames) int64 as .npy")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: ENGINE_DEVICE or cpu)")


def load(model_arg: str, device=None):
    from engine import models
    from impls import sources
    source = sources.parse_of_type(model_arg, "encodec", "codec", "an EnCodec model")
    if source.kind == "preset":
        return models.from_preset("encodec", source.preset, device=device)
    return models.from_pretrained(source.path, device=device)  # weight norm folded at load (CHECKPOINT_RULES)


def run(args) -> int:
    import numpy as np

    from engine import audio
    from engine.io.atomic import atomic_write_bytes

    if not Path(args.audio).is_file():
        raise FileNotFoundError(f"audio file not found: {args.audio}")
    x, sr = audio.read_wav(args.audio, mono=False)  # AudioError (a ValueError) names a file that is not a PCM WAV
    x = x[:, None] if x.ndim == 1 else x  # (n, channels)
    if len(x) == 0:
        raise ValueError(f"{args.audio}: the WAV has no samples")
    model = load(args.model, args.device)
    cfg = model.config
    if args.bandwidth is not None:
        cfg.quantizers_for(args.bandwidth)  # a clear error before any work
    ch = cfg.audio_channels
    x = x.mean(axis=1, keepdims=True) if ch == 1 else (np.repeat(x, ch, axis=1) if x.shape[1] == 1 else x)
    if x.shape[1] != ch:
        raise ValueError(f"{args.audio}: {x.shape[1]} channels; the model takes {ch}")
    if sr != cfg.sampling_rate:
        x = np.stack([audio.resample(x[:, c], sr, cfg.sampling_rate) for c in range(ch)], axis=1)
    batch = np.ascontiguousarray(x.T[None], dtype=np.float32)  # (1, C, L)
    t0 = time.perf_counter()
    codes, scale = model.encode(batch, args.bandwidth)
    t1 = time.perf_counter()
    out = model.decode(codes, scale)[..., :batch.shape[-1]].numpy()[0]  # (C, L)
    t2 = time.perf_counter()
    chunks = codes if isinstance(codes, list) else [codes]  # chunked models (48 kHz): one entry per chunk
    n_q, frames = chunks[0].shape[1], sum(c.shape[2] for c in chunks)
    kbps = n_q * cfg.codebook_nbits * cfg.frame_rate / 1000
    audio.write_wav(args.out, out.T, cfg.sampling_rate)  # (L, C); PCM clipped to 16 bits there
    if args.codes:  # (B, n_q, frames); chunked: the chunks' frames one after another
        buf = io.BytesIO()
        np.save(buf, np.concatenate([c.numpy() for c in chunks], axis=-1))
        atomic_write_bytes(args.codes, buf.getvalue())
    seconds = batch.shape[-1] / cfg.sampling_rate
    per = f" in {len(chunks)} chunks" if isinstance(codes, list) else ""
    print(f"codes (1, {n_q}, {frames}) int64{per}: {n_q} codebooks x {frames} frames at {cfg.frame_rate} Hz, "
          f"{cfg.codebook_nbits} bits each -> {kbps:g} kbps")
    print(f"wrote {args.out} ({seconds:.2f} s at {cfg.sampling_rate} Hz, {ch} channel(s))")
    print(f"encode {1e3 * (t1 - t0):.0f} ms, decode {1e3 * (t2 - t1):.0f} ms "
          f"(real-time factor {(t2 - t0) / seconds:.3f})", file=sys.stderr)
    return 0
