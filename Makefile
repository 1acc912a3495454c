# One command each: `make demo` (set up + run the demo), `make test` (set up, lint, run every test).
# While working: `make quick` (lint and the tests that train nothing and start no server; under a minute).
# The virtual environment lives outside the checkout so that CI and fresh clones reuse it (torch is large).
VENV ?= $(HOME)/.cache/inspection-venv
PY := $(VENV)/bin/python

SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: setup broker browser postgres genicam demo test quick lint bench
setup:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[train,line,openvino,export,review,postgres,plc,test]'

demo: setup
	$(VENV)/bin/inspection demo

# The MQTT tests start a real broker: Debian's mosquitto.
broker:
	command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || \
	  $(SUDO) apt-get install -y -q mosquitto >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q mosquitto >/dev/null; }

# The review-station browser tests drive Debian's chromium with Playwright (no browser download).
browser:
	command -v chromium >/dev/null || \
	  $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null; }

# The store tests run on SQLite and on a real PostgreSQL server (Debian's postgresql; each test run starts its own).
postgres:
	test -n "$$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null)" || \
	  $(SUDO) apt-get install -y -q postgresql >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q postgresql >/dev/null; }

# GenICam cameras: Debian's Aravis (its typelib, and arv-fake-gv-camera-0.8, a GigE Vision camera emulator the
# tests run against), the headers PyGObject builds with, then the genicam extra.
genicam: setup
	{ test -x /usr/bin/arv-fake-gv-camera-0.8 && ls /usr/lib/*/girepository-1.0/Aravis-0.8.typelib >/dev/null 2>&1 && \
	  pkg-config --exists gobject-introspection-1.0 cairo; } || \
	  $(SUDO) apt-get install -y -q $(GENICAM_DEBS) >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q $(GENICAM_DEBS) >/dev/null; }
	$(PY) -m pip install -q -e '.[genicam]'

GENICAM_DEBS := aravis-tools aravis-tools-cli gir1.2-aravis-0.8 libgirepository1.0-dev libcairo2-dev pkg-config

lint: setup
	$(VENV)/bin/ruff check .

test: lint broker browser postgres genicam
	$(PY) -m pytest tests

quick: lint
	$(PY) -m pytest -m "not slow" tests

bench: setup
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/inference.py
	$(PY) benchmarks/line_throughput.py
	$(PY) benchmarks/plc_latency.py
	$(PY) benchmarks/product_switch.py
	$(PY) benchmarks/review_queue.py
