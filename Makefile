# ComfyUI-STEM: `make demo` runs the example workflow headlessly, `make test` runs the whole suite.
# Overrides: COMFYUI_DIR=/path/to/ComfyUI  CHECKPOINT=name.safetensors  VIDEO=clip.mp4  PORT=8199
SHELL := /bin/bash
PY := .venv/bin/python
HOST := $(if $(COMFYUI_DIR),$(COMFYUI_DIR),$(CURDIR)/.host/ComfyUI)
export COMFYUI_DIR := $(HOST)
DEMO_OUT ?= demo_output

.PHONY: setup test test-core demo bench clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q tests

test-core: setup
	$(PY) -m pytest -q tests/core

demo: setup
	$(PY) scripts/demo.py --comfyui "$(HOST)" --out "$(DEMO_OUT)" \
		$(if $(VIDEO),--video "$(VIDEO)") $(if $(CHECKPOINT),--checkpoint "$(CHECKPOINT)") $(if $(PORT),--port $(PORT))

bench: setup
	$(PY) -m bench.run_all

clean:
	rm -rf .host .venv $(DEMO_OUT) .pytest_cache
