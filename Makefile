# kvs-edge: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test demo venv bench clean

venv: $(STAMP)

# (Re)install whenever the project's metadata changes; the venv is created when missing.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/kvs-edge demo

bench: $(STAMP)
	$(PY) bench/mux.py

clean:
	rm -rf $(VENV) build dist *.egg-info
