# qsearch: `make run` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DATASETS ?= mnist fashion_mnist cifar10
BENCHES ?= train cost export quant search dynamic  # `make bench BENCHES=cost` runs one

.PHONY: install run test test-slow lint format data bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,onnx]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install qsearch (editable) with dev tools

run: install  ## the main job: ReLeQ search + LSQ fine-tune of lenet5 on digits (embedded data)
	$(BIN)/qsearch search agent=releq budget.evaluations=30
	$(BIN)/qsearch finetune policy=latest

test: install  ## the fast test suite (slow tests excluded)
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install  ## only the slow tests
	$(BIN)/pytest -m slow $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

format: install
	$(BIN)/ruff check --fix src tests scripts
	$(BIN)/ruff format src tests scripts

data: install  ## prepare datasets into data/ (QSEARCH_DATA_SOURCE=dir for local copies)
	$(BIN)/python -m qsearch.data.prepare $(DATASETS)

bench: install  ## every benchmark (hours on a CPU); numbers go to benchmarks/*.json and docs/benchmarks.md
	set -e; for name in $(BENCHES); do $(BIN)/python scripts/bench_$$name.py; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
