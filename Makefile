# `make watch` and `make test` do all set-up on a fresh clone: the first run creates a
# project-local virtualenv (.venv), installs torch, then streamvlm with its dev and
# server extras. A stamp file marks the install done; it is redone when pyproject.toml
# changes. Only Python 3.10+ (and make) need to be on the machine.

PYTHON ?= python3
VENV ?= .venv
# torch is installed first and on its own, so you choose the build: a bare `torch` on
# Linux pulls a multi-GB CUDA build. For a CPU wheel from PyTorch's index use e.g.
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS ?= dev,server,demo,cluster

# What `make watch` runs: the bundled trained model on a video of the world it was
# trained on (assets/shapes.json lists its events and more questions with answers).
VIDEO ?= assets/shapes.mp4
MODEL ?= streamvlm-tiny-synth
FPS ?= 1
QUESTION ?= What digit did the diamond show?
# assets/shapes.mp4 is `streamvlm synth make` with these.
SHAPES_SECONDS ?= 20
SHAPES_SEED ?= 24
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.streamvlm-installed
PIP := $(BIN)/python -m pip

.PHONY: help watch test lint format sample shapes venv clean-venv
.DEFAULT_GOAL := help

help:
	@echo "make watch   stream $(VIDEO) into $(MODEL) and answer: $(QUESTION)"
	@echo "make test    run the test suite"
	@echo "make lint    ruff check"
	@echo "make format  ruff format"
	@echo "make sample  regenerate assets/sample.mp4"
	@echo "make shapes  regenerate assets/shapes.mp4 and assets/shapes.json"
	@echo "Each sets up $(VENV) on first use (TORCH_SPEC=$(TORCH_SPEC), TORCH_INDEX=$(TORCH_INDEX))."

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "streamvlm needs Python 3.10+, found " + sys.version.split()[0] + "; run make with PYTHON=python3.X")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PIP) install -e ".[$(EXTRAS)]"
	touch $@

watch: $(STAMP) $(VIDEO)
	$(BIN)/streamvlm watch "$(VIDEO)" --model "$(MODEL)" --fps $(FPS) --ask "$(QUESTION)"

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .

# The sample is committed; this rule only runs when it is missing. `make sample` rewrites it.
assets/sample.mp4: | $(STAMP)
	$(BIN)/python -m streamvlm.samples $@

sample: $(STAMP)
	$(BIN)/python -m streamvlm.samples assets/sample.mp4

assets/shapes.mp4: | $(STAMP)
	$(BIN)/streamvlm synth make --seconds $(SHAPES_SECONDS) --seed $(SHAPES_SEED) --out $@

shapes: $(STAMP)
	$(BIN)/streamvlm synth make --seconds $(SHAPES_SECONDS) --seed $(SHAPES_SEED) --out assets/shapes.mp4

clean-venv:
	rm -rf $(VENV)
