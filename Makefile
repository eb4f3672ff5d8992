# Kami: `make run` serves the demo shop, `make test` runs every check CI runs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export KAMI_PORT ?= 8000
# The browser tests drive Debian's chromium; Playwright never downloads a browser of its own.
CHROMIUM := /usr/bin/chromium

.PHONY: run test lint types contracts test-sqlite test-postgres install clean browser screenshots

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
	$(BIN)/mypy kami bench

contracts: $(STAMP)
	$(BIN)/lint-imports

browser:
	@if [ ! -x $(CHROMIUM) ]; then \
		apt-get update && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
	fi

test-sqlite: $(STAMP) browser
	KAMI_TEST_DB=sqlite $(BIN)/pytest

test-postgres: $(STAMP) browser
	KAMI_TEST_DB=postgresql $(BIN)/pytest

# Screenshots of the main pages, both languages, into docs/screenshots/: the storefront
# phone-sized, the admin console (console-*.png) desktop-sized.
screenshots: $(STAMP) browser
	@if [ -z "$$(fc-list :lang=zh 2>/dev/null)" ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends fonts-noto-cjk; \
	fi
	KAMI_SCREENSHOTS_DIR=$(CURDIR)/docs/screenshots KAMI_TEST_DB=sqlite \
		$(BIN)/pytest tests/browser/test_buyer.py \
		tests/browser/test_admin.py::test_screenshots_of_the_console

test: lint types contracts test-sqlite test-postgres

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache
