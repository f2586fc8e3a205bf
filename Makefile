# fanflow developer commands. CI (.ci/run) calls these same targets.
#   make install   create .venv (with $(PYTHON)) and install fanflow editable with dev tools
#   make test      run the test suite (installs first when .venv is missing or stale)
#   make faults    the fault matrix (tests/faults: private RabbitMQ and PostgreSQL, killed and restarted; ~6 min)
#   make lint      ruff check + ruff format --check; mypy --strict on the library and services
#   make format    ruff format + ruff check --fix
#   make oracle    build the venv of Dify's engine for the differential tests
#   make bench     run the benchmarks of issue 8 (BENCH_ARGS=--quick: a smoke run, < 2 min per probe)
#   make services-check   are PostgreSQL, RabbitMQ and Redis reachable? how to start them

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the steering kit (Dify oracle and fixtures) beside the checkout, not the library in shared/
KIT ?= $(abspath ../shared)
ORACLE_VENV ?= $(CURDIR)/.cache/graphon-venv
# pytest-xdist workers: one per CPU, at most 4; TEST_JOBS=0 runs in one process
TEST_JOBS ?= auto
PYTEST_ARGS ?=
LINT_PATHS := $(wildcard shared services tests)

.PHONY: help install test faults lint format oracle services-check bench
BENCH_ARGS ?=

help:
	@sed -n 's/^#   //p' Makefile

define install_venv
@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	|| { echo "error: fanflow needs Python >= 3.11; $(PYTHON) is $$($(PYTHON) --version 2>&1). Use: make install PYTHON=python3.11" >&2; exit 1; }
@test -x $(BIN)/python || { echo "creating $(VENV) with $$($(PYTHON) --version)"; $(PYTHON) -m venv $(VENV); }
$(BIN)/python -m pip install --disable-pip-version-check --quiet -e '.[dev]'
@touch $(STAMP)
endef

install:
	$(install_venv)

$(STAMP): pyproject.toml
	$(install_venv)

test: $(STAMP)
	@rc=0; $(BIN)/pytest -n $(TEST_JOBS) --maxprocesses=4 --durations=10 $(PYTEST_ARGS) --ignore=tests/faults tests || rc=$$?; \
	case $$rc in \
	  0) echo "make test: PASSED" ;; \
	  5) echo "make test: FAILED: pytest collected no tests (exit 5)" ;; \
	  *) echo "make test: FAILED: pytest exit $$rc (1 = tests failed, 2 = interrupted, 3 = internal error, 4 = usage error)" ;; \
	esac; \
	exit $$(( rc == 0 ? 0 : 1 ))

# one process: the tests kill and restart the private broker and database they share
faults: $(STAMP)
	@rc=0; $(BIN)/pytest -n 0 -p no:cacheprovider --durations=20 $(PYTEST_ARGS) tests/faults || rc=$$?; \
	if [ $$rc -eq 0 ]; then echo "make faults: PASSED"; else echo "make faults: FAILED: pytest exit $$rc"; fi; \
	exit $$(( rc == 0 ? 0 : 1 ))

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy shared/fanflow services

format: $(STAMP)
	$(BIN)/ruff format $(LINT_PATHS)
	$(BIN)/ruff check --fix $(LINT_PATHS)

oracle:
	FANFLOW_KIT=$(KIT) bash .ci/oracle-venv $(ORACLE_VENV)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all $(BENCH_ARGS)

services-check:
	@bash .ci/services check
