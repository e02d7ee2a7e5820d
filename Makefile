# mmdet-ela: `make demo` trains and prunes a small ELA detector on CPU;
# `make test` lints and runs the test suite. Both set up ./.venv first
# (tools/install.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
export ELA_VENV := $(abspath $(VENV))
LINT_PATHS := mmdet_ela tools tests configs setup.py

.PHONY: install demo lint format test test-fast

install:
	bash tools/install.sh

demo: install
	$(PY) tools/demo.py

lint: install
	$(PY) -m flake8 $(LINT_PATHS)
	$(PY) -m isort --check-only --diff $(LINT_PATHS)
	$(PY) -m yapf --diff --recursive $(LINT_PATHS)

format: install
	$(PY) -m isort $(LINT_PATHS)
	$(PY) -m yapf --in-place --recursive $(LINT_PATHS)

test: lint
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests
