# Two commands from a fresh clone: `make demo` and `make test`. Both create .venv once and reuse it;
# the stamp file is redone only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: install demo test test-fast lint bench clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and alone: the CPU wheel of 2.13.0; any other resolution pulls a CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev]'
	# Three packages install competing OpenCV builds into one cv2/ folder: settle on headless.
	$(PIP) install --force-reinstall --no-deps opencv-python-headless==4.12.0.88
	$(BIN)/python -c "import cv2, torch, dagster, duckdb, mediapipe, dlib; assert torch.__version__.startswith('2.13.0')"
	touch $(STAMP)

demo: install
	$(BIN)/ffe build
	$(BIN)/ffe status

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow"

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python benches/ingest.py

clean-demo:
	rm -rf ffe_data
