"""`taper detect --model MODEL IMAGE --out boxes.jpg`: YOLOv8 detection with the engine.

    taper convert best.pt best.safetensors             # an ultralytics checkpoint, read without running code
    taper detect --model best.safetensors bus.jpg --out boxes.jpg --names Normal,Fall
    taper detect --model yolov8:yolov8n bus.jpg        # random weights, for timing

MODEL is a converted .safetensors file (nc and scale read from the shapes), a model directory
(config.json with model_type yolov8 + model.safetensors), or a preset. Prints one line per detection
(class, score, x1 y1 x2 y2 in the image's pixels) and the time taken; --out writes the image with the
boxes and labels drawn (Pillow), atomically. Exit codes: 0 done, 2 a missing or unreadable image or
model, or bad usage.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="an image file Pillow reads (jpg, png, ...)")
    parser.add_argument("--model", required=True,
                        help="a converted .safetensors file, a model directory, or a preset (yolov8:yolov8n)")
    parser.add_argument("--out", help="write the image with boxes and labels drawn here (format from the suffix)")
    parser.add_argument("--imgsz", type=int, default=640, help="letterbox size, a multiple of 32 (default 640)")
    parser.add_argument("--conf", type=float, default=0.25, help="score threshold (default 0.25)")
    parser.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (default 0.7)")
    parser.add_argument("--max-det", type=int, default=300)
    parser.add_argument("--names", help="class names, comma-separated, in class order (default: the config's)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: ENGINE_DEVICE or cpu)")


def _fail(msg: str) -> int:
    print(f"taper detect: {msg}", file=sys.stderr)
    return 2


def read_image(path):
    """uint8 (H, W, 3) RGB array of an image file; FileNotFoundError / ValueError naming the file."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ImportError, SyntaxError) as e:  # a plugin may fail to import (heif)
        raise ValueError(f"{path}: not an image Pillow can read ({e})") from None


def load_model(spec: str, device=None):
    from engine import models
    from engine.models.yolov8 import YOLOv8
    path = Path(spec)
    if path.exists():
        if path.is_dir():
            mt = models.read_config(path).get("model_type")
            if mt != "yolov8":
                raise ValueError(f"{path}: config.json has model_type {mt!r}, not 'yolov8'")
        return YOLOv8.from_pretrained(path, device=device)
    mt, sep, preset = spec.partition(":")
    if sep and mt == "yolov8":
        return YOLOv8.from_preset(preset, device=device)
    raise FileNotFoundError(f"model not found: {spec} (a .safetensors file, a model directory or yolov8:PRESET)")


def draw(image, det, out) -> None:
    """The image with one box and label per detection, written atomically to `out`."""
    import io

    from PIL import Image, ImageDraw, ImageFont

    from engine.io.atomic import atomic_write_bytes
    im = Image.fromarray(image)
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default()
    palette = [(255, 56, 56), (44, 153, 168), (255, 157, 151), (72, 249, 10), (146, 204, 23), (61, 219, 134)]
    lw = max(round(sum(im.size) / 2 * 0.003), 2)
    for box, score, cls, name in zip(det.boxes, det.scores, det.classes, det.names):
        color = palette[int(cls) % len(palette)]
        (x1, x2), (y1, y2) = sorted(map(float, box[0::2])), sorted(map(float, box[1::2]))  # random weights: any order
        d.rectangle([x1, y1, x2, y2], outline=color, width=lw)
        label = f"{name} {score:.2f}"
        l, t, r, b = d.textbbox((0, 0), label, font=font)
        ty = y1 - (b - t) - 4 if y1 - (b - t) - 4 >= 0 else y1
        d.rectangle([x1, ty, x1 + (r - l) + 4, ty + (b - t) + 4], fill=color)
        d.text((x1 + 2, ty + 2 - t), label, fill=(255, 255, 255), font=font)
    fmt = Image.registered_extensions().get(Path(out).suffix.lower())
    if fmt is None:
        raise ValueError(f"{out}: unknown image format {Path(out).suffix!r} (use .jpg, .png, ...)")
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    atomic_write_bytes(out, buf.getvalue())


def run(args) -> int:
    from engine.io.safetensors import SafetensorsError
    from engine.models.yolov8.detect import detect
    from engine.nn.module import StateDictError
    if args.imgsz <= 0 or args.imgsz % 32:
        return _fail(f"--imgsz must be a positive multiple of 32, got {args.imgsz}")
    try:
        image = read_image(args.image)
        model = load_model(args.model, args.device)
    except (FileNotFoundError, ValueError, SafetensorsError, StateDictError) as e:
        if getattr(args, "debug", False):
            raise
        return _fail(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))
    if args.names:
        model.config.names = [n.strip() for n in args.names.split(",")]
        if len(model.config.names) != model.config.nc:
            return _fail(f"--names gives {len(model.config.names)} names for a model of {model.config.nc} classes")
    t = time.perf_counter()
    det = detect(model, image, args.imgsz, args.conf, args.iou, args.max_det)
    ms = (time.perf_counter() - t) * 1e3
    h, w = image.shape[:2]
    print(f"{args.image}: {w}x{h}, {len(det)} detection{'s' if len(det) != 1 else ''} in {ms:.0f} ms "
          f"(letterbox {args.imgsz}, model, NMS, on {model.device})")
    for row in det.rows():
        print(f"  {row}")
    if args.out:
        draw(image, det, args.out)
        print(f"wrote {args.out}")
    return 0
