# One command each: `make test`, `make data`, `make serve`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 3000

.PHONY: test data lint serve clean

# The stamp files record which dependency groups the venv holds; they are redone when pyproject.toml changes.
$(VENV)/.runtime: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[runtime]"
	touch $@

$(VENV)/.dev: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[training,dev]"
	touch $@ $(VENV)/.runtime

test: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

data: $(VENV)/.dev
	$(PY) -m training.data build --out data/

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
