"""YOLOv8 inference around the model, as ultralytics' DetectionPredictor does it, on the engine.

    letterbox(image)          uint8 (H, W, 3) RGB -> (1, 3, h, w) float in [0, 1], plus the gain and padding
    non_max_suppression(p)    (B, 4 + nc, A) -> per image (n, 6): x1, y1, x2, y2, score, class
    scale_boxes(...)          boxes of the letterboxed input -> boxes of the original image (clipped)
    detect(model, image)      all three: Detections of one image

NMS is greedy (torchvision's and ultralytics' TorchNMS rule: keep the best box, drop every later box of
IoU > threshold with it) and exact: the IoU test of every ordered pair runs as engine ops in blocks of
rows; only the final scan over those bits is sequential, on the host (as torchvision's CUDA kernel does).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine import dtype as D
from engine import functional as F
from engine import ops

PAD_VALUE = 114  # ultralytics' LetterBox fill
NMS_BLOCK = 1024  # rows of the IoU matrix computed at once (1024 x 30000 fp32 at most)


@dataclass
class Letterbox:
    """What letterbox() did: gain (resized / original, per side) and the left/top padding in pixels."""
    shape: tuple  # (h, w) of the original image
    new_shape: tuple  # (h, w) of the letterboxed image
    gain: tuple  # (gain_h, gain_w)
    pad: tuple  # (left, top)


def letterbox_params(shape, new_shape=640, auto: bool = False, stride: int = 32, scaleup: bool = True):
    """ultralytics LetterBox.get_params (center=True): (resized (w, h), (top, bottom, left, right))."""
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:
        r = min(r, 1.0)
    new_unpad = max(round(shape[1] * r), 1), max(round(shape[0] * r), 1)  # (w, h)
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if auto:  # the smallest rectangle of stride multiples
        dw, dh = dw % stride, dh % stride
    dw, dh = dw / 2, dh / 2
    return new_unpad, (round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1))


def letterbox(image, new_shape=640, auto: bool = False, stride: int = 32, scaleup: bool = True, device=None,
              dtype=D.float32):
    """image: uint8 (H, W, 3) RGB (a numpy array or engine Tensor) -> ((1, 3, h, w) in [0, 1], Letterbox).

    Resize by the smaller side ratio with bilinear interpolation (half-pixel centres, no antialiasing:
    cv2.INTER_LINEAR's rule; the result is rounded to uint8 as cv2 does, so pixels may differ from
    cv2's fixed-point arithmetic by 1), pad to new_shape with 114, scale to [0, 1]."""
    img = image if hasattr(image, "storage") else ops.tensor(np.ascontiguousarray(image), device=device)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype is not D.uint8:
        raise ValueError(f"letterbox expects a uint8 (H, W, 3) RGB image, got {img.dtype.name} {img.shape}")
    h, w = img.shape[:2]
    (nw, nh), (top, bottom, left, right) = letterbox_params((h, w), new_shape, auto, stride, scaleup)
    x = img.permute(2, 0, 1).unsqueeze(0).float()  # (1, 3, H, W) 0..255
    if (nh, nw) != (h, w):
        # no clamp to 0..255: each pixel is a convex combination of two pixels per dim (weights l and 1 - l in
        # [0, 1], their sum at most 1 + 2^-24), at most 255.0001 before rounding
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False).round()
    x = F.pad(x, (left, right, top, bottom), value=float(PAD_VALUE))  # (1, 3, nh + top + bottom, nw + ...)
    return (x / 255.0).to(dtype=dtype), Letterbox((h, w), tuple(x.shape[2:]), (nh / h, nw / w), (left, top))


def box_iou_matrix(a, b):
    """IoU of every box of a (N, 4) with every box of b (M, 4), xyxy -> (N, M)."""
    lt = ops.maximum(a[:, None, :2], b[None, :, :2])
    rb = ops.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms(boxes, scores, iou_threshold: float):
    """Indices (int64, best first) of the boxes greedy NMS keeps: torchvision.ops.nms's contract.
    boxes (N, 4) xyxy, scores (N,)."""
    n = boxes.shape[0]
    if n == 0:
        return ops.zeros(0, dtype=D.int64, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    b = boxes.index_select(0, order)
    over = np.empty((n, n), dtype=bool)  # over[i, j]: sorted box i suppresses sorted box j (j > i)
    for s in range(0, n, NMS_BLOCK):
        rows = b[s:s + NMS_BLOCK]
        over[s:s + rows.shape[0]] = (box_iou_matrix(rows, b) > iou_threshold).numpy()
    over = np.triu(over, 1)
    removed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):  # the one sequential step, over bits on the host
        if not removed[i]:
            keep.append(i)
            removed |= over[i]
    return order.index_select(0, ops.tensor(np.asarray(keep, np.int64), device=boxes.device))


def non_max_suppression(preds, conf_thres: float = 0.25, iou_thres: float = 0.7, max_det: int = 300,
                        agnostic: bool = False, max_nms: int = 30000, max_wh: int = 7680):
    """ultralytics' non_max_suppression for detection (best class per box, no multi-label):
    preds (B, 4 + nc, A) xywh + scores -> list of B tensors (n, 6): x1, y1, x2, y2, score, class."""
    if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
        raise ValueError(f"conf_thres {conf_thres} and iou_thres {iou_thres} must lie in [0, 1]")
    out = []
    for p in preds.unbind(0):
        x = p.transpose(0, 1)  # (A, 4 + nc)
        conf, cls = x[:, 4:].max(1)  # best class per anchor
        keep = (conf > conf_thres).nonzero().reshape(-1)
        if keep.shape[0] > max_nms:  # ultralytics keeps the max_nms most confident
            keep = keep.index_select(0, conf.index_select(0, keep).argsort(descending=True)[:max_nms])
        x, conf, cls = x.index_select(0, keep), conf.index_select(0, keep), cls.index_select(0, keep).to(dtype=x.dtype)
        xy, wh = x[:, :2], x[:, 2:4]
        box = ops.cat([xy - wh / 2, xy + wh / 2], 1)  # xywh -> xyxy
        offset = (cls * (0 if agnostic else max_wh)).unsqueeze(1)  # classes apart, so one NMS does all
        i = nms(box + offset, conf, iou_thres)[:max_det]
        out.append(ops.cat([box, conf.unsqueeze(1), cls.unsqueeze(1)], 1).index_select(0, i))  # (n, 6)
    return out


def scale_boxes(boxes, lb: Letterbox):
    """xyxy boxes of the letterboxed image -> the original image's pixels, clipped to it (ultralytics'
    scale_boxes with the letterbox's own gain and padding)."""
    (gh, gw), (left, top) = lb.gain, lb.pad
    h, w = lb.shape
    x1 = ((boxes[:, 0] - left) / gw).clamp(0, w)
    y1 = ((boxes[:, 1] - top) / gh).clamp(0, h)
    x2 = ((boxes[:, 2] - left) / gw).clamp(0, w)
    y2 = ((boxes[:, 3] - top) / gh).clamp(0, h)
    return ops.stack([x1, y1, x2, y2], 1)


@dataclass
class Detections:
    """Detections of one image in its own pixels: boxes (n, 4) xyxy, scores (n,), classes (n,) int."""
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    names: list

    def __len__(self):
        return len(self.scores)

    def rows(self) -> list[str]:
        return [f"{n:<12} {s:.3f}  [{b[0]:.1f}, {b[1]:.1f}, {b[2]:.1f}, {b[3]:.1f}]"
                for n, s, b in zip(self.names, self.scores, self.boxes)]


def detect(model, image, imgsz: int = 640, conf: float = 0.25, iou: float = 0.7, max_det: int = 300,
           agnostic: bool = False, forward=None) -> Detections:
    """One uint8 (H, W, 3) RGB image through letterbox, the model, NMS and scale_boxes. forward: what runs
    the model on the letterboxed batch (default the model itself; e.g. an engine.capture.CapturedForward
    of it, a CUDA graph per input size: NMS stays outside, its output size depends on the data)."""
    x, lb = letterbox(image, imgsz, device=model.device, dtype=model.dtype)
    det = non_max_suppression((forward or model)(x).float(), conf, iou, max_det, agnostic)[0]
    boxes = scale_boxes(det[:, :4], lb).numpy()
    classes = det[:, 5].numpy().astype(np.int64)
    return Detections(boxes, det[:, 4].numpy(), classes, [model.config.name(int(c)) for c in classes])
