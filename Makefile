# One command for everything CI checks: `make check`.
VENV ?= .venv
BIN = $(VENV)/bin
# Every package of `.[dev]`, pinned: what CI installs and what was last tested.
LOCK = requirements/dev.lock
# A throwaway venv with the newest releases pyproject.toml allows (make check-latest).
LATEST = .venv-latest
# name==version lines, names normalised (pip freeze writes pydantic_core, uv pydantic-core).
PINS = awk -F'==' '/^[A-Za-z0-9][^ ]*==/ {n=tolower($$1); gsub(/[_.]/,"-",n); sub(/ *;.*/,"",$$2); print n"=="$$2}' | sort

.PHONY: install check lint types test format lock check-latest

install:
	python3 -m venv $(VENV) && $(BIN)/pip install -q -c $(LOCK) -e '.[dev]'

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-logo

types:
	$(BIN)/mypy

test:
	$(BIN)/python -m pytest

check: lint types test

format:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Re-pin the lock to the newest releases pyproject.toml allows (for every platform and Python
# fmbot supports); then `make install check` and commit both files together.
lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
		--upgrade --custom-compile-command "make lock" -o $(LOCK)

# The whole check on the newest releases, ignoring the lock: meets upstream drift on purpose.
check-latest:
	rm -rf $(LATEST)
	python3 -m venv $(LATEST) && $(LATEST)/bin/pip install -q --upgrade -e '.[dev]'
	$(LATEST)/bin/pip freeze --exclude-editable | $(PINS) > $(LATEST)/latest.txt
	cat $(LOCK) | $(PINS) > $(LATEST)/locked.txt
	@echo "check-latest: newer than $(LOCK) (> lines):"
	@diff $(LATEST)/locked.txt $(LATEST)/latest.txt || true
	$(MAKE) check VENV=$(LATEST)
