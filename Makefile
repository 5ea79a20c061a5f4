# The single front door: make install | run | test | lint | bench | clean
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: all install run test test-unit test-chaos lint format bench clean

all: lint test

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

## Embedded PostgreSQL, the provider simulators and the service; prints the URL, token and curls.
run: install
	$(BIN)/python -m service demo

## The whole suite (unit, integration, acceptance) against a real PostgreSQL.
test: install
	$(BIN)/python -m pytest

test-unit: install
	$(BIN)/python -m pytest tests/unit

## Only the chaos suite (real processes, kill -9, PostgreSQL stopped); `make test` includes it.
test-chaos: install
	$(BIN)/python -m pytest -s tests/chaos

## Benchmarks (not tests): every figure beside its baseline; writes bench-results/latest.{json,md}.
bench: install
	$(BIN)/python -m bench

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
