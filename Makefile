# Developer entry points; CI runs .ci/run, which does the same from a fresh venv.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install lint format test test-unit bench-quick bench ci

install:
	python3 -m venv $(VENV)
	$(BIN)/pip install -e '.[dev,bench]'

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test:
	$(BIN)/pytest

test-unit:
	$(BIN)/pytest tests/unit

bench-quick:
	$(BIN)/python -m bench --quick

bench:
	$(BIN)/python -m bench

ci:
	bash .ci/run
