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
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,onnx,bench]'
	set -e; for name in $(BENCHES); do $(BIN)/python scripts/bench_$$name.py; done

clean:
	rm -rf $(VENV) .venv-ray .pytest_cache .ruff_cache

# Sweeps (docs/sweeps.md): Hydra multiruns of `qsearch search` through hydra-joblib-launcher,
# each followed by `qsearch report` of its folder. A run dir is named by its overrides and
# seed, so running a target again (after a kill, or with more AGENTS/SEEDS) skips the runs
# that finished. The lenet5/mnist ones need `make data DATASETS=mnist`.
SWEEP_ROOT ?= outputs/sweeps
# runs at the same time; each uses runtime.threads CPU threads
JOBS ?= 2
AGENTS ?= releq,haq,random,bayes,hawq,uniform
SEEDS ?= 0,1,2
BUDGET_AGENTS ?= haq,hawq,random
BUDGETS ?= 0.5,0.6,0.7,0.8
MANY_SEEDS ?= range(10)
# more overrides for every run, e.g. SWEEP_ARGS='budget.evaluations=20 runtime.threads=2'
SWEEP_ARGS ?=
SWEEP = $(BIN)/qsearch search -m hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) \
	'hydra.sweep.subdir=$${hydra.job.override_dirname}/seed_$${seed}' $(SWEEP_ARGS)

.PHONY: sweep-smoke sweep-agents sweep-budgets sweep-seeds test-ray

sweep-smoke: install  ## random vs uniform x 2 seeds on digits (a minute), then the report
	$(SWEEP) experiment=smoke_digits agent=random,uniform seed=0,1 hydra.sweep.dir=$(SWEEP_ROOT)/smoke
	$(BIN)/qsearch report $(SWEEP_ROOT)/smoke

sweep-agents: install  ## AGENTS x SEEDS at equal budget on lenet5/mnist (compare_lenet_mnist)
	$(SWEEP) experiment=compare_lenet_mnist agent=$(AGENTS) seed=$(SEEDS) \
		hydra.sweep.dir=$(SWEEP_ROOT)/agents
	$(BIN)/qsearch report $(SWEEP_ROOT)/agents

sweep-budgets: install  ## BUDGET_AGENTS x BUDGETS (cost fraction of 8-bit) x SEEDS on lenet5/mnist
	$(SWEEP) experiment=compare_lenet_mnist agent=$(BUDGET_AGENTS) \
		budget.cost_fraction=$(BUDGETS) seed=$(SEEDS) hydra.sweep.dir=$(SWEEP_ROOT)/budgets
	$(BIN)/qsearch report $(SWEEP_ROOT)/budgets

sweep-seeds: install  ## ReLeQ on lenet5/mnist (releq_lenet_mnist) over MANY_SEEDS: its spread
	$(SWEEP) experiment=releq_lenet_mnist 'seed=$(MANY_SEEDS)' hydra.sweep.dir=$(SWEEP_ROOT)/seeds
	$(BIN)/qsearch report $(SWEEP_ROOT)/seeds

# Ray cannot share .venv (hydra-ray-launcher needs cloudpickle<3): its own venv, pinned by
# constraints.txt where constraints-ray.txt does not pin the package otherwise.
VENV_RAY ?= .venv-ray
$(VENV_RAY)/.installed: pyproject.toml constraints.txt constraints-ray.txt
	test -x $(VENV_RAY)/bin/python || $(PYTHON) -m venv $(VENV_RAY)
	awk -F'==' 'NR == FNR { if (/==/) ray[$$1]; next } !($$1 in ray)' \
		constraints-ray.txt constraints.txt | cat - constraints-ray.txt > $(VENV_RAY)/constraints.txt
	$(VENV_RAY)/bin/python -m pip install --quiet --disable-pip-version-check \
		-c $(VENV_RAY)/constraints.txt -e '.[dev,ray]'
	touch $@

test-ray: $(VENV_RAY)/.installed  ## the Ray launcher test (slow) against a local Ray head
	$(VENV_RAY)/bin/pytest -m slow tests/test_sweeps.py -k ray $(PYTEST_ARGS)
