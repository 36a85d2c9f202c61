# Two entry points (see README): `make demo` and `make test`. Both build .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# the pins of pyproject.toml, installed first; torch/torchvision pinned together:
# torch 2.13's torchvision fails to import, which breaks nnU-Net's trainer lookup
TORCH := torch==2.14.1 torchvision==0.29.1
DEMO_DIR ?= demo_output

.PHONY: venv demo test test-fast
venv: $(BIN)/nnunet_oar

$(BIN)/nnunet_oar: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH) nnunetv2==2.8.1 pytest
	$(BIN)/pip install -q -e ".[workflow]"
	touch $@

demo: venv
	$(BIN)/nnunet_oar demo -o $(DEMO_DIR)

test: venv
	$(BIN)/python -m pytest -q --durations=20 tests

# day-to-day: everything but the trainings that need minutes (marked slow)
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow" tests
