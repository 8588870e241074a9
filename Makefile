# Parley: set-up, tests, demo and benchmarks. Every target builds or refreshes
# the local virtual environment (.venv) by itself.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv system-deps test lint typecheck unit demo bench bench-core clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Debian packages the suite needs (libfaketime for the chaos test), if missing.
system-deps:
	scripts/install-system-deps

unit: $(STAMP) system-deps
	$(VENV)/bin/pytest

test: lint typecheck unit

demo: $(STAMP)
	$(VENV)/bin/parley demo

bench: $(STAMP)
	$(VENV)/bin/parley bench --json bench.json

bench-core: $(STAMP)
	$(PY) -m benchmarks.core_bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
