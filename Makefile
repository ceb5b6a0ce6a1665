# The two commands a new user needs: `make demo` and `make test`. Both build the
# virtualenv themselves; what they need from the system (README: Prerequisites) is checked first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin

# Silent when all is well; otherwise one line per missing thing (the Python, venv/ensurepip, a shared library
# the wheels need) with the install command for this platform, and make stops. It runs with $(PYTHON) before
# the virtualenv exists, and again right after each install, when it reads what the installed wheels link
# against (cached in the virtualenv until site-packages changes; each run still looks the libraries up).
PREFLIGHT := $(PYTHON) scripts/preflight.py --venv $(VENV)

.PHONY: preflight demo test lint typecheck unit bench clean

preflight:
	@$(PREFLIGHT)

# preflight is order-only: it runs first on every make, but never makes the virtualenv out of date.
$(VENV)/.runtime: setup.cfg pyproject.toml | preflight
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@
	@$(PREFLIGHT)

$(VENV)/.test: $(VENV)/.runtime
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@
	@$(PREFLIGHT)

## Run the main job on the embedded defaults (local executor, local store, local scheduler).
demo: preflight $(VENV)/.runtime
	$(PY) -m pipelines.demo

## Lint, type-check and run every test (the servers the tests need are started by the tests).
test: preflight $(VENV)/.test lint typecheck
	$(BIN)/pytest

lint: $(VENV)/.test
	$(BIN)/ruff check src tests jobs pipelines bench scripts

typecheck: $(VENV)/.test
	$(BIN)/mypy src/caravan

unit: $(VENV)/.test
	$(BIN)/pytest tests/unit

bench: $(VENV)/.test
	$(PY) bench/completeness.py

clean:
	rm -rf $(VENV) .caravan .pytest_cache .mypy_cache .ruff_cache
