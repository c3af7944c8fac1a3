# Every target creates .venv from requirements.lock when it is missing, so a fresh clone needs nothing else.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
DATA_ROOT ?= data/sample
PIPELINE_ROOT ?= outputs
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# python3.10 on PATH, else a pyenv-installed 3.10 (pyenv shims refuse versions that are not selected).
PYTHON310 := $(shell if python3.10 -c '' >/dev/null 2>&1; then echo python3.10; \
	else ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.10*/bin/python3.10 2>/dev/null | tail -n 1; fi)

.PHONY: venv browser run test test-fast bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock setup.py
	@test -n "$(PYTHON310)" || { echo "error: Python 3.10 not found (TFX 1.16 installs on 3.10 only)"; exit 1; }
	$(PYTHON310) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
# Bytecode now: with PYTHONDONTWRITEBYTECODE set nothing is cached at import, and every command compiled TF and TFX
# again (`from tfx import v1` 34 s uncompiled, 12 s compiled).
	$(VENV)/bin/uv pip install --python $(PY) --no-deps --compile-bytecode -r requirements.lock
	$(VENV)/bin/uv pip install --python $(PY) --no-deps --no-build-isolation -e .
	touch $@

run: venv
	$(VENV)/bin/terrafuse run --data-root $(DATA_ROOT) --pipeline-root $(PIPELINE_ROOT) --generate-sample-if-missing

# The report's browser test (tests/test_report.py) opens pages in headless Chromium: Debian's package, installed
# when missing (pip's browser installers download builds from outside the package registries).
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }

test: venv browser
	$(VENV)/bin/python -m pytest tests

test-fast: venv
	$(VENV)/bin/python -m pytest tests -m "not slow"

bench: venv
	$(VENV)/bin/python -m bench.run

clean:
	rm -rf $(PIPELINE_ROOT) data .pytest_cache
