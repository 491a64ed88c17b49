# ComfyUI-STEM: `make demo` runs an example workflow headlessly, `make test` runs the whole suite.
# Overrides: COMFYUI_DIR=/path/to/ComfyUI  PYTHON=its/python  CHECKPOINT=name.safetensors  VIDEO=clip.mp4
#            EDITED_FRAME=first_frame.png (Videoshop)  WORKFLOW=tokenflow_stem  FRAMES=16  SIZE=512x512  STEPS=50  SOURCE_PROMPT=..  TARGET_PROMPT=..  PORT=8199
SHELL := /bin/bash
PY := .venv/bin/python
HOST := $(if $(COMFYUI_DIR),$(COMFYUI_DIR),$(CURDIR)/.host/ComfyUI)
export COMFYUI_DIR := $(HOST)
DEMO_OUT ?= demo_output
WORKFLOW ?= stem_reconstruction

.PHONY: setup test test-core lint check-workflows demo bench browser-deps workflows clean

setup:
	@bash scripts/setup.sh

test: setup lint check-workflows
	$(PY) -m pytest -q tests

# ruff (pinned in requirements-dev.txt; settings in pyproject.toml [tool.ruff])
lint: setup
	$(PY) -m ruff check .

# example_workflows/, workflows/ui/ and workflows/api/ are what scripts/build_workflows.py writes (and laid out)
check-workflows: setup
	$(PY) -m pytest -q tests/host/test_example_workflows.py

test-core: setup
	$(PY) -m pytest -q tests/core

demo: setup
	$(PY) scripts/demo.py --comfyui "$(HOST)" --out "$(DEMO_OUT)" --workflow "$(WORKFLOW)" \
		$(if $(VIDEO),--video "$(VIDEO)") $(if $(CHECKPOINT),--checkpoint "$(CHECKPOINT)") \
		$(if $(FRAMES),--frames $(FRAMES)) $(if $(SIZE),--size $(SIZE)) $(if $(STEPS),--steps $(STEPS)) \
		$(if $(SOURCE_PROMPT),--source-prompt "$(SOURCE_PROMPT)") $(if $(TARGET_PROMPT),--target-prompt "$(TARGET_PROMPT)") \
		$(if $(EDITED_FRAME),--edited-frame "$(EDITED_FRAME)") $(if $(PORT),--port $(PORT))

bench: setup
	$(PY) -m bench.run_all

# Debian's chromium for the browser test (apt-get as root); without it that test is skipped.
browser-deps:
	@bash scripts/setup_browser.sh

# Regenerate example_workflows/ (+ thumbnails), workflows/ui/ and workflows/api/ from scripts/build_workflows.py.
workflows: setup
	$(PY) scripts/build_workflows.py

clean:
	rm -rf .host .venv $(DEMO_OUT) .pytest_cache
