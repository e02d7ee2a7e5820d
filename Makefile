# mmdet-ela: `make demo` trains and prunes a small ELA detector on CPU;
# `make test` runs the test suite. Both set up ./.venv first (tools/install.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
export ELA_VENV := $(abspath $(VENV))

.PHONY: install demo test test-fast

install:
	bash tools/install.sh

demo: install
	$(PY) tools/demo.py

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests
