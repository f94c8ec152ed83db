"""The PyTorch reference of engine.models.yolov8: ultralytics' DetectionModel built offline from its
yolov8{scale}.yaml, and its own inference path (LetterBox, non_max_suppression, scale_boxes) as its
DetectionPredictor runs it. ultralytics is AGPL and optional (the yolo-test extra, in a venv of its
own: see pyproject.toml): Unavailable without it.

ultralytics writes a settings file at import and checks whether it is online: YOLO_CONFIG_DIR (a
temp dir unless set) and YOLO_OFFLINE=1 are set before the first import. torchvision is never
imported here (ultralytics then uses its own NMS)."""
from __future__ import annotations

import os
import tempfile

import numpy as np

from impls.base import Unavailable


def _ultralytics():
    os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "taper-ultralytics"))
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_VERBOSE", "False")
    try:
        import ultralytics
    except ImportError:
        raise Unavailable("torch: the YOLOv8 reference needs ultralytics, in a venv of its own "
                          "(pip install -e '.[yolo-test]'; see the Makefile's test-yolo)") from None
    return ultralytics


def asset(name: str) -> str:
    """The path of an image ultralytics ships (ultralytics/assets: bus.jpg, zidane.jpg)."""
    return os.path.join(os.path.dirname(_ultralytics().__file__), "assets", name)


def build(config: dict):
    """ultralytics' DetectionModel for an engine yolov8 config (nc, scale), random weights, eval mode."""
    _ultralytics()
    from ultralytics.nn.tasks import DetectionModel
    return DetectionModel(f"yolov8{config.get('scale', 'n')}.yaml", nc=int(config.get("nc", 80)), verbose=False).eval()


def detect(module, image, imgsz: int = 640, conf: float = 0.25, iou: float = 0.7, max_det: int = 300):
    """uint8 (H, W, 3) RGB -> (n, 6) x1 y1 x2 y2 score class in the image's pixels, as ultralytics predicts
    (LetterBox to imgsz x imgsz, /255, forward, non_max_suppression, scale_boxes)."""
    import torch
    _ultralytics()
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils.nms import non_max_suppression
    from ultralytics.utils.ops import scale_boxes
    p = next(module.parameters())
    img = LetterBox(imgsz, auto=False)(image=np.asarray(image))
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None].to(p.device).to(p.dtype) / 255
    with torch.inference_mode():
        preds = module(x)
        preds = preds[0] if isinstance(preds, (tuple, list)) else preds
        det = non_max_suppression(preds.float(), conf, iou, max_det=max_det)[0]
        det[:, :4] = scale_boxes(x.shape[2:], det[:, :4], image.shape)
    return det.cpu().numpy()
