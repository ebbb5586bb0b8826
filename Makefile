# kvs-edge: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Debian tools some tests use (unit checks, shell lint); installed with apt when missing (CI runs as root).
APT_TOOLS := shellcheck:shellcheck systemd-analyze:systemd

.PHONY: test demo venv tools bench image-test clean docs dist

venv: $(STAMP)

# (Re)install whenever the project's metadata changes; the venv is created when missing.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

tools:
	@for pair in $(APT_TOOLS); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 && continue; \
	  if [ "$$(id -u)" != 0 ]; then echo "make: $$cmd is missing: run 'sudo apt-get install $$pkg'" >&2; exit 1; fi; \
	  echo "installing $$pkg (for $$cmd) with apt"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkg >/dev/null) || exit 1; \
	done

test: $(STAMP) tools
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/kvs-edge demo

# Benchmarks print tables with a reference measured in the same run; they are not part of `make test`.
bench: $(STAMP)
	$(PY) bench/mux.py
	$(PY) bench/emulator.py
	$(PY) bench/upload.py
	$(PY) bench/log.py
	$(PY) bench/drain.py
	$(PY) bench/pipeline.py
	$(PY) bench/producer.py

# API reference of the library (kvs_edge.Producer, kvs_edge.picamera2) from the docstrings, in docs/api/.
# Without Picamera2 installed, kvs_edge.picamera2 is documented against the test fake's Output (same signatures).
docs: $(STAMP)
	PYTHONPATH=tests/fakes $(PY) -m pdoc --output-directory docs/api kvs_edge kvs_edge.producer kvs_edge.picamera2 kvs_edge.media.fragment_tags kvs_edge.media.access_unit

# sdist and wheel in dist/, checked as PyPI would
dist: $(STAMP)
	rm -rf dist build
	$(PY) -m build --no-isolation --outdir dist .
	$(PY) -m twine check --strict dist/*

# Debian arm64 root file system under qemu-user-static, kvs-edge installed by the pi-gen stage's install path,
# then checked inside it (see docs/image.md). Needs root; installs debootstrap/qemu-user-static/binfmt-support.
image-test: $(STAMP)
	bash image-build/image-test.sh

clean:
	rm -rf $(VENV) build dist *.egg-info docs/api
