# The two commands a new user needs: `make demo` and `make test`. Both build the
# virtualenv themselves; nothing else has to be installed by hand.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck unit bench clean

$(VENV)/.runtime: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

## Run the main job on the embedded defaults (local executor, local store, local scheduler).
demo: $(VENV)/.runtime
	$(PY) -m pipelines.demo

## Lint, type-check and run every test (the servers the tests need are started by the tests).
test: $(VENV)/.test lint typecheck
	$(BIN)/pytest

lint: $(VENV)/.test
	$(BIN)/ruff check src tests jobs pipelines bench

typecheck: $(VENV)/.test
	$(BIN)/mypy src/caravan

unit: $(VENV)/.test
	$(BIN)/pytest tests/unit

bench: $(VENV)/.test
	$(PY) bench/completeness.py

clean:
	rm -rf $(VENV) .caravan .pytest_cache .mypy_cache .ruff_cache
