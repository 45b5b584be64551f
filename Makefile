# Two commands do all the set-up on a fresh clone (only python3 needed):
#   make demo   create .venv, install lpinit, run `python -m lpinit.optimize` on bundled MNIST
#   make test   create .venv, install lpinit with its test and cluster extras, run the whole test suite
#   make test-fast   the same without the tests marked slow
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast compare clean

demo: $(VENV)/.installed
	$(PY) -m lpinit.optimize

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

compare: $(VENV)/.installed
	$(PY) -m experiments.compare --preset quick

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test,cluster]'
	touch $@

clean:
	rm -rf $(VENV) data/cache .pytest_cache
