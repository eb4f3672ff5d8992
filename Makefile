# Kami: `make run` serves the demo shop, `make test` runs every check CI runs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export KAMI_PORT ?= 8000

.PHONY: run test lint types contracts test-sqlite test-postgres install clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/kami db upgrade
	@case "$${KAMI_DATABASE_URL:-sqlite}" in sqlite*) KAMI_SANDBOX_ENABLED=$${KAMI_SANDBOX_ENABLED:-true} $(BIN)/kami demo --if-empty;; esac
	KAMI_SANDBOX_ENABLED=$${KAMI_SANDBOX_ENABLED:-true} $(BIN)/kami serve

lint: $(STAMP)
	$(BIN)/ruff check kami tests bench

types: $(STAMP)
	$(BIN)/mypy kami

contracts: $(STAMP)
	$(BIN)/lint-imports

test-sqlite: $(STAMP)
	KAMI_TEST_DB=sqlite $(BIN)/pytest

test-postgres: $(STAMP)
	KAMI_TEST_DB=postgresql $(BIN)/pytest

test: lint types contracts test-sqlite test-postgres

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache
