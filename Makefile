# nerve-bench: every target that runs code depends on `install`, so on a fresh
# clone `make test` / `make benchmark` do the whole set-up themselves.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
CONFIG ?= benchmark/configs/default.yaml
# The README's data path. `run` falls back to the embedded synthetic benchmark only when this default
# is absent; any other DATA must hold train/ (a typo is an error, never a synthetic leaderboard).
DATA   ?= data/ultrasound-nerve-segmentation
RESULTS ?= results
ARGS   ?=
# Offline-safe defaults: no PyPI check from albumentations, no hub retries, no W&B upload without a key.
export NO_ALBUMENTATIONS_UPDATE = 1
export HF_HUB_OFFLINE ?= 1
export PYTHONHASHSEED = 0

.DEFAULT_GOAL := help
.PHONY: help install test lint format benchmark report doctor wheelhouse lock clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv with the pinned known-good set (idempotent)

$(STAMP): pyproject.toml requirements/constraints.txt tools/install.sh tools/tv_shim.py
	PYTHON=$(PYTHON) VENV=$(VENV) bash tools/install.sh
	@touch $(STAMP)

# The suite runs on every core (pytest-xdist; tests/conftest.py splits torch's threads between the
# workers): 346 s instead of 543 s on the 2-core CI box. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= auto
test: install ## run the test suite (what CI runs; TEST_WORKERS=0 for one process)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --maxprocesses 8 --dist worksteal $(ARGS)

lint: install ## ruff check + format check + mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

benchmark: install ## run the benchmark grid and write results/leaderboard.* (DATA=path CONFIG=file)
	$(PY) -m benchmark run --config "$(CONFIG)" --data-dir "$(DATA)" --results-dir "$(RESULTS)" $(ARGS)

report: install ## rebuild results/leaderboard.* and plots from results/runs/*/summary.json
	$(PY) -m benchmark report --results "$(RESULTS)"

doctor: install ## prove this box runs the benchmark: device, every model, DDP, Ray, time estimate (ARGS=--json f)
	$(PY) -m benchmark doctor $(ARGS)

# Offline installs (air-gapped clusters): wheels of every pinned dependency for another Python and
# platform. Plain $(PYTHON), no `install`: pip download needs no virtualenv of this machine.
PYTHON_VERSION ?= 3.12
PLATFORM ?= manylinux_2_28_x86_64
TORCH ?= cuda
WHEELHOUSE ?= wheelhouse
wheelhouse: ## download all pinned wheels (PYTHON_VERSION=3.12 PLATFORM=... TORCH=cuda|cpu) into wheelhouse/
	$(PYTHON) tools/wheelhouse.py --python-version $(PYTHON_VERSION) --platform $(PLATFORM) --torch $(TORCH) --out $(WHEELHOUSE) $(ARGS)

lock: install ## rewrite requirements/constraints.txt from the current .venv
	bash tools/lock.sh

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
