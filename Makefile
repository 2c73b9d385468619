# The two README commands: `make repro` (set up, then run the whole pipeline) and `make test`.
# Everything installs into .venv from the pinned requirements.lock, so a fresh clone needs only a Python 3.11
# or newer: a new .venv is made with PYTHON if given, else with the first of PYTHONS that is one.
PYTHONS := python3.11 python3.12 python3.13 python3
PYTHON ?=
py311 = $(shell $(1) -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && echo $(1))
NEW_VENV_PYTHON = $(or $(firstword $(foreach py,$(or $(PYTHON),$(PYTHONS)),$(call py311,$(py)))),$(error \
  make setup needs Python 3.11 or newer (tried $(or $(PYTHON),$(PYTHONS))): install one, or pass PYTHON=/path/to/python))
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup repro test test-fast clean-venv

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
ifeq ($(wildcard $(BIN)/python),)
	@py=$(NEW_VENV_PYTHON); echo "setup: creating $(VENV) with $$py ($$($$py -c 'import platform, sys; print(sys.executable, platform.python_version())'))"; \
	  $$py -m venv $(VENV)
else
	@echo "setup: $(VENV) has Python $$($(BIN)/python -c 'import platform; print(platform.python_version())')"
endif
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

test-fast: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m "not integration and not docker"

clean-venv:
	rm -rf $(VENV)
