# ensemblekit: two set-up commands, both from a fresh clone.
#   make demo   creates .venv, installs, trains a single model and a 4-member deep ensemble on a CIFAR-10
#               subset and prints their comparison table (about 5 minutes on 2 CPU cores); without a copy of
#               CIFAR-10 it first downloads the official archive (163 MiB) into ./data
#   make test   creates .venv, installs, runs ruff and pytest

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUNS ?= runs/demo

# The demo finds CIFAR-10 through ENSEMBLEKIT_DATA; use the shared copy beside the checkout when it exists.
# Without either, the demo configs (data.download: true) fetch it into ./data on the first run.
ifneq ($(wildcard ../shared/data),)
export ENSEMBLEKIT_DATA ?= $(abspath ../shared/data)
endif

.PHONY: install test lint demo bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
	touch $@

install: $(BIN)/.installed

lint: install
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

demo: install
	$(BIN)/ensemblekit train configs/demo/single.yaml --out $(RUNS)/single --overwrite
	$(BIN)/ensemblekit train configs/demo/deep_ensemble.yaml --out $(RUNS)/deep_ensemble --overwrite
	$(BIN)/ensemblekit compare $(RUNS)/single $(RUNS)/deep_ensemble

bench: install
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
