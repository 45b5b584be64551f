# Two commands do all the set-up on a fresh clone (only python3 needed):
#   make demo   create .venv, install lpinit, run `python -m lpinit.optimize` on bundled MNIST
#   make test   create .venv, install lpinit with its test and cluster extras, run the whole test suite
#   make test-fast   the same without the tests marked slow
#   make lint   ruff (lint and format check), mypy, and the doctests of lpinit
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast lint compare clean

demo: $(VENV)/.installed
	$(PY) -m lpinit.optimize

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m pytest -q --doctest-modules lpinit -p no:cacheprovider

compare: $(VENV)/.installed
	$(PY) -m experiments.compare --preset quick

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test,cluster,lint]'
	touch $@

clean:
	rm -rf $(VENV) data/cache .pytest_cache
