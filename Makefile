# One command for everything CI checks: `make check`.
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: install check lint types test format

install:
	python3 -m venv $(VENV) && $(BIN)/pip install -q -e '.[dev]'

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types:
	$(BIN)/mypy

test:
	$(BIN)/python -m pytest

check: lint types test

format:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
