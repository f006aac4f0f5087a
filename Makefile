# cnnlab: `make train` and `make test` set up .venv themselves (idempotent), then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_ROOT ?= $(abspath ../shared/datasets)

.PHONY: install train test test-all lint bench clean

install: $(STAMP)

# Re-install only when the project's metadata changes; `pip install -e` picks up code changes by itself.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/cnnlab train

# Two workers, one file each at a time (module fixtures stay shared), one thread per process: most tests
# start a `cnnlab` subprocess, and two busy processes with two threads each thrash two cores.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow and not gpu"

# Everything, slow tests included (gpu tests skip themselves without a CUDA device).
test-all: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check cnnlab scripts tests
	$(BIN)/ruff format --check cnnlab scripts tests

bench: $(STAMP)
	CNNLAB_DATA_ROOT=$${CNNLAB_DATA_ROOT:-$(DATA_ROOT)} $(BIN)/python scripts/bench.py overhead data gpu

clean:
	rm -rf $(VENV) build *.egg-info
