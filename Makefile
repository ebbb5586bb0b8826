# kvs-edge: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Debian tools some tests use (unit checks, shell lint); installed with apt when missing
# (CI runs as root).
APT_TOOLS := shellcheck:shellcheck systemd-analyze:systemd
# The real browser of the console tests (make interop-test).
BROWSER_APT_TOOLS := chromium:chromium chromedriver:chromium-driver
# What building the official KVS C producer SDK needs (tools/kvs-sdk/build.sh, for tests/test_sdk_interop.py):
# commands, then pkg-config modules, each with the Debian package that provides it.
SDK_APT_TOOLS := cmake:cmake cc:build-essential make:build-essential pkg-config:pkg-config
SDK_APT_PKGCONFIG := libcurl:libcurl4-openssl-dev openssl:libssl-dev

# The VM test bed's host tools (make vm-test).
VM_APT_TOOLS := qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils socat:socat mkfs.vfat:dosfstools \
	mcopy:mtools debootstrap:debootstrap

.PHONY: test interop-test demo venv tools sdk-tools sdk bench image-test picamera-test vm-test clean docs dist

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

# Installed with apt when missing and root; otherwise a notice, and the SDK interop test skips saying the same.
sdk-tools:
	@missing=""; \
	for pair in $(SDK_APT_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; \
	done; \
	for pair in $(SDK_APT_PKGCONFIG); do \
	  pkg-config --exists $${pair%%:*} 2>/dev/null || missing="$$missing $${pair##*:}"; \
	done; \
	[ -z "$$missing" ] && exit 0; \
	missing=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "make: the KVS SDK interop test will skip: run 'sudo apt-get install $$missing'" >&2; exit 0; fi; \
	echo "installing $$missing(to build the KVS SDK) with apt"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null

# The official KVS C producer SDK from ../shared/third-party (or $$KVS_SDK_ARCHIVES), cached under
# /var/cache/kvs-edge-kvs-sdk-<sha256 of the archives and the script>. The interop test builds it too.
sdk: sdk-tools
	bash tools/kvs-sdk/build.sh

test: $(STAMP) tools
	$(PY) -m pytest -q -m "not interop" --durations=15

# The parts written by others that judge the emulator: the official KVS C producer SDK (built from its source archives,
# cached; skips with a reason when they are absent) and headless Chromium playing HLS (hls.js) and DASH (dash.js).
interop-test: $(STAMP) tools sdk-tools
	@$(MAKE) --no-print-directory tools APT_TOOLS="$(BROWSER_APT_TOOLS)"
	$(PY) -m pytest -q -m interop --durations=15

# In a terminal it ends with the emulator's web console URL and streams live until Ctrl-C (--watch); elsewhere it exits.
demo: $(STAMP)
	$(VENV)/bin/kvs-edge demo --watch

# Benchmarks print tables with a reference measured in the same run; they are not part of `make test`.
bench: $(STAMP)
	$(PY) bench/mux.py
	$(PY) bench/emulator.py
	$(PY) bench/upload.py
	$(PY) bench/log.py
	$(PY) bench/drain.py
	$(PY) bench/pipeline.py
	$(PY) bench/events.py
	$(PY) bench/motion.py
	$(PY) bench/read_side.py
	$(PY) bench/hls.py
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

# kvs-edge in a QEMU machine (TCG): systemd as PID 1, v4l2loopback/vivid, link loss, power cuts (docs/vm-test.md).
# Needs root; the disk is cached in /var/cache/kvs-edge-vm-{base,disk}-KEY, keyed by its inputs.
vm-test: $(STAMP)
	@$(MAKE) --no-print-directory tools APT_TOOLS="$(VM_APT_TOOLS)"
	@start=$$(date +%s); image=$$(bash image-build/vm/build-image.sh) && \
	  $(PY) tests/vm/run.py "$$image"; rc=$$?; \
	  echo "vm-test: make vm-test took $$(( $$(date +%s) - start )) s"; exit $$rc

# The real Picamera2 (PyPI) on a real libcamera (Debian sid's source, virtual camera, our patch): built by
# tools/real-picamera/build.sh into /var/cache/kvs-edge-picamera-<key> (about ten minutes the first time, needs root
# for apt), then tests/test_real_picamera2.py, which skips in plain `make test` when that build is absent.
picamera-test: $(STAMP)
	bash tools/real-picamera/build.sh
	KVS_EDGE_REQUIRE_REAL_PICAMERA=1 $(PY) -m pytest -q -s tests/test_real_picamera2.py tests/test_real_picamera2_kvsoutput.py

clean:
	rm -rf $(VENV) build dist *.egg-info docs/api
