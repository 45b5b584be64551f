# Two commands do all the set-up on a fresh clone (only python3 needed):
#   make demo   create .venv, install lpinit, run `python -m lpinit.optimize` on bundled MNIST
#   make test   create .venv, install lpinit with its test extra, run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-all compare clean

demo: $(VENV)/.installed
	$(PY) -m lpinit.optimize

test: $(VENV)/.installed
	$(PY) -m pytest -q

compare: $(VENV)/.installed
	$(PY) -m experiments.compare --preset quick

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) data/cache .pytest_cache
