# Parley: set-up, tests, demo and benchmarks. Every target builds or refreshes
# the local virtual environment (.venv) by itself.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv system-deps check fast test lint typecheck unit demo bench bench-core bench-idle clean

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

# Both cores: pytest-xdist workers, each test file on one worker (a file's
# shared terminals start once). Ports and PostgreSQL databases are per worker.
XDIST := -n 2 --dist loadfile

# The fast tests: neither slow, nor starting processes, nor on PostgreSQL, nor
# in the browser (markers in pyproject.toml), with a fifth of the generated examples.
FAST := not (slow or subprocess or postgres or browser)

unit: $(STAMP) system-deps
	$(VENV)/bin/pytest $(XDIST)

fast: $(STAMP)
	PARLEY_FUZZ_SCALE=0.2 $(VENV)/bin/pytest $(XDIST) -q -m "$(FAST)"

# The inner loop (about 2 minutes): lint, types and the fast tests, side by side.
check: $(STAMP)
	$(MAKE) --no-print-directory -j3 lint typecheck fast

test: lint typecheck unit

demo: $(STAMP)
	$(VENV)/bin/parley demo

bench: $(STAMP)
	$(VENV)/bin/parley bench --json bench.json

bench-core: $(STAMP)
	$(PY) -m benchmarks.core_bench

# Idle CPU per terminal in a full mesh of 4 and of 16 terminals (about 6 minutes).
bench-idle: $(STAMP)
	$(PY) -m benchmarks.idle_cpu --terminals 4 16 --settle 130 --json bench-idle.json

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
