# Two entry points a new user needs; both create the virtual environment themselves.
#   make run   - set up and run the daemon on the embedded defaults (./data/...)
#   make test  - set up and run the test suite
#   make lint  - ruff (style, bugs, complexity) and mypy (types) over the code
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint once bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/ccdwatch watch

test: $(VENV)/.installed
	$(BIN)/python -m pytest -n 2 -q

lint: $(VENV)/.installed
	$(BIN)/ruff check ccdwatch tests benchmarks migrations
	$(BIN)/mypy

bench: $(VENV)/.installed
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist .pytest_cache
